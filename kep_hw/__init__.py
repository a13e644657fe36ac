# SPDX-License-Identifier: Apache-2.0
"""kep_hw: the KEP sparse-convolution accelerator (Amaranth HDL), its simulation and builds.

Stages, one subpackage each: :mod:`kep_hw.gateware` (the engine and its blocks, cycle model),
:mod:`kep_hw.system` (the network plan, the frame protocol and the system around the engine),
:mod:`kep_hw.board` (board profiles, PLL, board top, toolchain, bitstream builds),
:mod:`kep_hw.host` (the host runtime that talks to a board), :mod:`kep_hw.bench` (simulation
benches: amaranth.sim, cocotb on Verilator and Icarus). Test networks: :mod:`kep_hw.testing`.
"""

from kep_common import __version__

__all__ = ["__version__"]
