# SPDX-License-Identifier: Apache-2.0
"""``python -m kep_hw COMMAND ...`` (or ``kep-hw COMMAND``): the hardware side's entry point.

Each command lives in its own module exposing ``main(argv) -> int``; it is imported only when
used, so ``--help`` stays fast. ``python -m kep_hw.build`` (and ``.sim``, ``.run``, ``.verilog``)
run the same commands directly.
"""

from __future__ import annotations

import sys

from kep_common.cli import dispatch

COMMANDS = {
    "sim": ("kep_hw.bench.sim", "main", "run conv layers of a .kep model on the RTL (cocotb)"),
    "build": ("kep_hw.board.build", "main", "build a bitstream of the system for a board"),
    "run": ("kep_hw.host.run", "main", "classify images on a board (or its RTL simulation)"),
    "verilog": ("kep_hw.gateware.verilog", "main", "write the Verilog of the engine"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("kep-hw", "python -m kep_hw", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
