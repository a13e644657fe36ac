# SPDX-License-Identifier: Apache-2.0
"""Errors that the command-line tools report as one line with exit code 2."""

from __future__ import annotations

import functools
import signal
import sys
import threading

__all__ = ["KepError", "cli_errors"]


class KepError(Exception):
    """A user-facing error: bad input, missing data, corrupt file. Printed as one line."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that its ``finally`` blocks run."""


def _on_sigterm(signum, frame):
    raise _Terminated


def cli_errors(main):
    """Decorate a CLI ``main``: a :class:`KepError` (or ``KeyboardInterrupt``) becomes one line
    on stderr and exit code 2 (130 for an interrupt) instead of a traceback. A SIGTERM (``kill``,
    a job's time limit) is handled as an interrupt, exit code 143: the ``finally`` blocks still
    stop the tools a command runs (nextpnr, a simulator) and drop half-written files."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        installed = threading.current_thread() is threading.main_thread()
        if installed:
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return main(*args, **kwargs)
        except KepError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except _Terminated:
            print("terminated", file=sys.stderr)
            raise SystemExit(143) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        finally:
            if installed:
                signal.signal(signal.SIGTERM, previous)
    return wrapper
