# SPDX-License-Identifier: Apache-2.0
"""kep_hw: the KEP sparse-convolution accelerator (Amaranth HDL), its simulation and builds."""
