# SPDX-License-Identifier: Apache-2.0
"""``python -m kep_train COMMAND ...`` (or ``kep-train COMMAND``): the training side's entry point.

Each command lives in its own module exposing ``main(argv) -> int``; it is imported only when
used, so ``--help`` stays fast.
"""

from __future__ import annotations

import sys

from kep_common.cli import dispatch

COMMANDS = {
    "cifar": ("kep_train.train.cifar", "main",
              "train, prune (KEP), fine-tune and export a CIFAR-10 model"),
    "imagenet": ("kep_train.train.imagenet", "main",
                 "the same pipeline on ImageNet-layout data with torchvision models"),
    "export": ("kep_train.export.cli", "main",
               "write a compressed int8 .kep model from a checkpoint"),
    "inspect": ("kep_train.export.cli", "inspect_main",
                "print the per-layer table of a .kep model"),
    "golden": ("kep_train.golden.evaluate", "main",
               "top-1 of the bit-exact int8 golden model on CIFAR-10"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("kep-train", "python -m kep_train", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
