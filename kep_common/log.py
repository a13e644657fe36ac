# SPDX-License-Identifier: Apache-2.0
"""Logging of the command-line tools: ``--quiet`` / ``--verbose`` and one stderr handler.

Library modules log through ``logging.getLogger(__name__)`` and never configure logging; a
command's ``main`` calls :func:`setup_logging` once. Results the user asked for (tables, final
top-1 lines) are printed on stdout and are not log messages; progress, notes and warnings are, and
go to stderr:

* default: INFO and above of the toolkit's packages (progress, notes), warnings of everything;
* ``--quiet``: warnings and errors only;
* ``--verbose``: also DEBUG of the toolkit's packages (cache hits, file names, timings).

Warnings print as ``warning: message``, other levels as the bare message (with ``--verbose``, as
``LEVEL logger: message``).
"""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["PACKAGES", "add_logging_args", "setup_logging", "verbosity"]

#: the toolkit's package loggers, whose INFO/DEBUG messages :func:`setup_logging` lets through
PACKAGES = ("kep_common", "kep_train", "kep_hw")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the message (pytest swaps it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property wins
        pass


class _Formatter(logging.Formatter):
    """``warning: msg`` / ``error: msg`` for WARNING and above, the bare message below."""

    def __init__(self, detailed: bool):
        super().__init__()
        self.detailed = detailed

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info and self.detailed:
            msg += "\n" + self.formatException(record.exc_info)
        if self.detailed:
            return f"{record.levelname} {record.name}: {msg}"
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {msg}"
        return msg


def add_logging_args(parser: argparse.ArgumentParser) -> None:
    """Add ``-q/--quiet`` and ``-v/--verbose`` (mutually exclusive) to ``parser``."""
    g = parser.add_argument_group("messages")
    x = g.add_mutually_exclusive_group()
    x.add_argument("-q", "--quiet", action="store_true",
                   help="only warnings and errors on stderr (no progress)")
    x.add_argument("-v", "--verbose", action="store_true",
                   help="also debug messages on stderr (cache, files, timings)")


def verbosity(args: argparse.Namespace) -> int:
    """-1 for ``--quiet``, 1 for ``--verbose``, else 0 (namespaces without them: 0)."""
    return int(bool(getattr(args, "verbose", False))) - int(bool(getattr(args, "quiet", False)))


def setup_logging(verbosity: int = 0) -> None:
    """Send log messages to stderr; call once in a command's ``main``.

    Calling it again (several commands in one process, tests) replaces the handler it installed
    before instead of adding a second one.

    Parameters
    ----------
    verbosity : int
        ``< 0``: warnings and errors only; ``0``: also INFO of :data:`PACKAGES`; ``> 0``: also
        DEBUG of :data:`PACKAGES`. Other libraries' loggers show warnings and errors only.
    """
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _StderrHandler):
            root.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(_Formatter(detailed=verbosity > 0))
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    for name in PACKAGES:
        logging.getLogger(name).setLevel(level)
