# SPDX-License-Identifier: Apache-2.0
"""``python -m kep_hw.run``: the same as ``python -m kep_hw run`` (:mod:`kep_hw.host.run`)."""

import sys

from kep_hw.host.run import main

if __name__ == "__main__":
    sys.exit(main())
