# SPDX-License-Identifier: Apache-2.0
"""Board profiles (TOML data files), installed as the data package ``kep_hw.boards`` and read by
:mod:`kep_hw.board.profiles`. There is no top-level ``boards`` package."""
