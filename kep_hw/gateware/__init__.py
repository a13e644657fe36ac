# SPDX-License-Identifier: Apache-2.0
"""kep_hw.gateware."""
