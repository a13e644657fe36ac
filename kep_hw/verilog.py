# SPDX-License-Identifier: Apache-2.0
"""``python -m kep_hw.verilog``: the same as ``python -m kep_hw verilog`` (:mod:`kep_hw.gateware.verilog`)."""

import sys

from kep_hw.gateware.verilog import main

if __name__ == "__main__":
    sys.exit(main())
