# SPDX-License-Identifier: Apache-2.0
"""``python -m kep_hw.build``: the same as ``python -m kep_hw build`` (:mod:`kep_hw.board.build`)."""

import sys

from kep_hw.board.build import main

if __name__ == "__main__":
    sys.exit(main())
