# SPDX-License-Identifier: Apache-2.0
"""``python -m kep_train COMMAND ...``: the command-line entry point.

Each command lives in its own module exposing ``main(argv) -> int``; it is imported only when
used, so ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "cifar": ("kep_train.train", "main_cifar", "train, prune (KEP), fine-tune and export a CIFAR-10 model"),
    "imagenet": ("kep_train.train", "main_imagenet", "the same pipeline on ImageNet-layout data with torchvision models"),
    "export": ("kep_train.export", "main", "write a compressed int8 .kep model from a checkpoint"),
    "inspect": ("kep_train.export", "inspect_main", "print the per-layer table of a .kep model"),
    "golden": ("kep_train.golden", "main", "top-1 of the bit-exact int8 golden model on CIFAR-10"),
}


def _usage() -> str:
    lines = ["usage: python -m kep_train COMMAND [options]   (COMMAND --help for its options)", "",
             "commands:"]
    lines += [f"  {name:<9} {text}" for name, (_, _, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"error: unknown command {cmd!r}; choose one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[cmd]
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
