# SPDX-License-Identifier: Apache-2.0
"""Errors that the command-line tools report as one line with exit code 2."""

from __future__ import annotations

import functools
import sys

__all__ = ["KepError", "cli_errors"]


class KepError(Exception):
    """A user-facing error: bad input, missing data, corrupt file. Printed as one line."""


def cli_errors(main):
    """Decorate a CLI ``main``: a :class:`KepError` (or ``KeyboardInterrupt``) becomes one line
    on stderr and exit code 2 (130 for an interrupt) instead of a traceback."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except KepError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None
    return wrapper
