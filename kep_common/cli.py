# SPDX-License-Identifier: Apache-2.0
"""Command dispatch shared by ``python -m kep_train`` and ``python -m kep_hw``."""

from __future__ import annotations

import importlib
import sys

from kep_common import __version__


def dispatch(name: str, prog: str, commands: dict[str, tuple[str, str, str]],
             argv: list[str] | None = None) -> int:
    """Run ``commands[argv[0]]`` (``module, function, help``) with the remaining arguments.

    ``--help`` lists the commands, ``--version`` prints the installed package version; an unknown
    command is one error line and exit code 2.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        lines = [f"usage: {prog} COMMAND [options]   (COMMAND --help for its options)",
                 f"       {name} COMMAND [options]", "", "commands:"]
        lines += [f"  {cmd:<9} {text}" for cmd, (_, _, text) in commands.items()]
        lines += ["", "options:", "  -h, --help  show this list", "  --version   print the version"]
        print("\n".join(lines))
        return 0
    if argv[0] == "--version":
        print(f"{name} {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in commands:
        print(f"error: unknown command {cmd!r}; choose one of {', '.join(commands)}",
              file=sys.stderr)
        return 2
    module, func, _ = commands[cmd]
    return int(getattr(importlib.import_module(module), func)(rest) or 0)
