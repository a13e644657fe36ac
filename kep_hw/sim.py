# SPDX-License-Identifier: Apache-2.0
"""``python -m kep_hw.sim``: the same as ``python -m kep_hw sim`` (:mod:`kep_hw.bench.sim`)."""

import sys

from kep_hw.bench.sim import main

if __name__ == "__main__":
    sys.exit(main())
