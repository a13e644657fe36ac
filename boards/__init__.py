# SPDX-License-Identifier: Apache-2.0
"""Board profiles (TOML data files) read by :mod:`kep_hw.boards`; this file makes them a package."""
