# SPDX-License-Identifier: Apache-2.0
"""The host runtime asks the board: P, Px and G come from its ``INFO`` frame (``--pes`` and
``--lanes`` given must agree), ``--image`` classifies the user's own files, ``--port auto``
finds the board's adapter, and the Python API (:mod:`kep_hw.host.api`) does the same. All
against :class:`kep_hw.testing.ScriptedBoard` on a pseudo-terminal: fast, no Verilator."""

from __future__ import annotations

import json
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from kep_common.errors import KepError
from kep_train.data.cifar import CIFAR10_CLASSES
from kep_train.export.kepfile import save_kep
from kep_train.golden.evaluate import quantize_input, run_network

from kep_hw.host.api import fit_image, load_images, open_board
from kep_hw.host.link import find_port
from kep_hw.host.run import main as run_main
from kep_hw.system.plan import plan_network
from kep_hw.testing import ScriptedBoard, random_network, reference_logits

pytestmark = pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    kep = random_network(0, size=32)              # CIFAR-10-sized input, 10 classes
    path = tmp_path_factory.mktemp("kep") / "tiny.kep"
    save_kep(path, kep)
    return kep, str(path)


def _run(*args):
    try:
        return run_main([str(a) for a in args])
    except SystemExit as e:
        return e.code


def _png(path, w, h, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


# configuration from INFO

def test_run_takes_p_and_g_from_info(model, tiny_cifar, tmp_path, capsys):
    kep, path = model
    plan = plan_network(kep, po=8, lanes=4)       # not the ulx3s profile's 64x4 / G=8
    with ScriptedBoard(plan, kep=kep) as board:
        rc = _run("--port", board.port, "--model", path, "--data-dir", tiny_cifar, "--n", 2,
                  "--timeout", 0.5, "--out", tmp_path / "r.json")
    out = capsys.readouterr().out
    assert rc == 0, out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert (rep["pes"], rep["po"], rep["px"], rep["lanes"]) == (8, 8, 1, 4)
    assert rep["bit_exact"] and rep["cycles"] == [1234, 1234] and rep["disagreements"] == []
    assert "P=8 (8 channels x 1 pixels), G=4" in out


def test_run_takes_px_from_info(model, tiny_cifar, tmp_path):
    kep, path = model
    with ScriptedBoard(plan_network(kep, po=8, lanes=8), kep=kep, px=2) as board:
        rc = _run("--port", board.port, "--model", path, "--data-dir", tiny_cifar, "--n", 1,
                  "--timeout", 0.5, "--out", tmp_path / "r.json")
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rc == 0 and (rep["pes"], rep["px"], rep["lanes"]) == (16, 2, 8)


@pytest.mark.parametrize("extra, match", [
    (["--pes", "16"], r"has P=8 \(Po=8 x PX=1\), G=4, not --pes 16x1"),
    (["--pes", "8x2"], "not --pes 8x2"),
    (["--lanes", "8"], "G=4, not --lanes 8"),
    (["--pes", "8", "--lanes", "8"], "not --pes 8x1, --lanes 8"),
])
def test_explicit_pes_disagreeing_with_info_is_one_error(model, tiny_cifar, one_line_error,
                                                         extra, match):
    kep, path = model
    with ScriptedBoard(plan_network(kep, po=8, lanes=4), kep=kep) as board:
        rc = _run("--port", board.port, "--model", path, "--data-dir", tiny_cifar, "--n", 1,
                  "--timeout", 0.5, *extra)
    assert re.search(match, one_line_error(rc))


def test_explicit_pes_agreeing_with_info_runs(model, tiny_cifar):
    kep, path = model
    with ScriptedBoard(plan_network(kep, po=8, lanes=4), kep=kep) as board:
        assert _run("--port", board.port, "--model", path, "--data-dir", tiny_cifar, "--n", 1,
                    "--timeout", 0.5, "--pes", "8", "--lanes", "4") == 0


def test_board_of_another_model_is_one_error(model, tiny_cifar, one_line_error):
    kep, path = model
    other = random_network(1, size=32)
    with ScriptedBoard(plan_network(other, po=8, lanes=4), kep=other) as board:
        rc = _run("--port", board.port, "--model", path, "--data-dir", tiny_cifar, "--n", 1,
                  "--timeout", 0.5)
    assert "built for another model" in one_line_error(rc)


def test_nonsense_po_in_info_is_one_error(model, tiny_cifar, one_line_error, monkeypatch):
    """An INFO whose Po is not a multiple of G: refused before any plan is made."""
    kep, path = model
    from kep_hw import testing
    real = testing.info_payload

    def bad(plan, **kw):
        b = bytearray(real(plan, **kw))
        b[1] = 6                                  # Po 6 with G 4
        return bytes(b)

    monkeypatch.setattr(testing, "info_payload", bad)
    with ScriptedBoard(plan_network(kep, po=8, lanes=4), kep=kep) as board:
        rc = _run("--port", board.port, "--model", path, "--data-dir", tiny_cifar, "--n", 1,
                  "--timeout", 0.5)
    assert "bad INFO from the board: Po=6" in one_line_error(rc)


def test_unknown_board_is_one_error(model, tiny_cifar, one_line_error):
    rc = _run("--port", "/dev/null", "--board", "nosuch", "--model", model[1], "--data-dir",
              tiny_cifar)
    assert "unknown board 'nosuch'" in one_line_error(rc)


def test_sim_pes_incompatible_with_lanes_is_one_error(model, tiny_cifar, one_line_error):
    """--sim has no board to ask: G = 8 with --pes 8x2 (Po 4) cannot work (without --lanes the
    profile's G is halved until Po is a multiple of it)."""
    rc = _run("--sim", "--model", model[1], "--data-dir", tiny_cifar, "--pes", "8x2",
              "--lanes", "8")
    assert "must be a multiple of --lanes 8" in one_line_error(rc)


# --image

def test_image_of_another_size(model, tmp_path, capsys):
    kep, path = model
    files = [_png(tmp_path / "wide.png", 75, 41, seed=1), _png(tmp_path / "small.png", 9, 13,
                                                                seed=2)]
    with ScriptedBoard(plan_network(kep, po=8, lanes=4), kep=kep) as board:
        rc = _run("--port", board.port, "--model", path, "--image", *files, "--timeout", 0.5,
                  "--out", tmp_path / "r.json")
    out = capsys.readouterr().out
    assert rc == 0, out
    rep = json.loads((tmp_path / "r.json").read_text())
    for f, row in zip(files, rep["images"]):
        from kep_train.data.folders import read_rgb
        x = quantize_input(kep, fit_image(read_rgb(f), (3, 32, 32)).unsqueeze(0))
        want = reference_logits(kep, x[0])        # what the scripted board's output gives
        golden = run_network(kep, x)[0]
        assert row["logits"] == want.tolist() == golden.tolist()
        cls = int(torch.argmax(want))
        assert row["class"] == row["golden"] == cls
        assert row["class_name"] == CIFAR10_CLASSES[cls]
        assert f"{f}: class {cls} ({CIFAR10_CLASSES[cls]}) logits {want.tolist()}" in out


def test_fit_image_crop_and_stretch():
    img = Image.new("RGB", (100, 50), (10, 20, 30))
    img.paste((200, 0, 0), (0, 0, 25, 50))        # a red quarter on the left
    crop = fit_image(img, (3, 8, 8))
    stretch = fit_image(img, (3, 8, 8), resize="stretch")
    assert crop.shape == stretch.shape == (3, 8, 8) and crop.dtype == torch.uint8
    assert int(crop[0, :, 0].max()) < 100          # the centre crop loses the red edge
    assert int(stretch[0, :, 0].min()) > 150       # stretching keeps it
    assert fit_image(Image.new("L", (3, 5), 7), (3, 4, 4)).eq(7).all()


@pytest.mark.parametrize("content, match", [
    (b"not an image at all", "cannot read image"),
    (None, "cannot read image"),
])
def test_unreadable_image_is_one_error(model, tmp_path, one_line_error, content, match):
    bad = tmp_path / "bad.png"
    if content is not None:
        bad.write_bytes(content)
    rc = _run("--port", tmp_path / "ttyNONE", "--model", model[1], "--image", bad)
    assert match in one_line_error(rc)


def test_bomb_image_is_one_error(model, tmp_path, one_line_error, monkeypatch):
    from kep_train.data import folders
    monkeypatch.setattr(folders, "MAX_IMAGE_PIXELS", 100)
    rc = _run("--port", tmp_path / "ttyNONE", "--model", model[1], "--image",
              _png(tmp_path / "big.png", 20, 20))
    assert "decompression bomb" in one_line_error(rc)


def test_data_dir_and_image_are_exclusive(model, tmp_path, one_line_error):
    rc = _run("--port", "auto", "--model", model[1], "--data-dir", tmp_path, "--image", "x.png")
    assert "not allowed with" in one_line_error(rc)


# the API

def test_api_open_board_classify(model, tmp_path):
    kep, path = model
    f = _png(tmp_path / "a.png", 40, 30, seed=3)
    arr = np.random.default_rng(4).integers(0, 256, (50, 50, 3), dtype=np.uint8)
    u8 = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with ScriptedBoard(plan_network(kep, po=8, lanes=4), kep=kep, cycles=500,
                       clk_khz=25_000) as sb:
        with open_board(sb.port, model=path, timeout=0.5) as board:
            assert (board.info["po"], board.info["lanes"], board.pes) == (8, 4, 8)
            results = board.classify([str(f), Image.open(f), arr])
            results += board.classify(u8)
            assert board.timing.cycles == [500] * 5
            assert board.timing.clock_mhz == 25.0
            assert board.timing.latency_ms == pytest.approx(500 / 25 / 1e3)
    x = load_images([str(f), Image.open(f), arr], kep)
    x = torch.cat([x, quantize_input(kep, u8)])
    for n, r in enumerate(results):
        want = reference_logits(kep, x[n])
        assert torch.equal(r.logits, want) and r.prediction == int(torch.argmax(want))
        assert r.golden == r.prediction and r.logits_equal and r.cycles == 500
        assert r.mismatched is None and r.output is None      # no IMAGE_FMAP asked for
    assert torch.equal(results[0].logits, results[1].logits)    # path and PIL image agree


def test_api_checks_config_and_closes(model):
    kep, path = model
    with ScriptedBoard(plan_network(kep, po=8, lanes=4), kep=kep) as sb:
        with pytest.raises(KepError, match="not --lanes 8"):
            open_board(sb.port, model=kep, lanes=8, timeout=0.5)
        # the failed open closed the port: it can be opened again (exclusive access)
        with open_board(sb.port, model=kep, pes=8, lanes=4, timeout=0.5) as board:
            with pytest.raises(KepError, match="a tensor must be uint8 or int8"):
                board.classify(torch.zeros(3, 16, 16, dtype=torch.uint8))
        assert not board.link.t.is_open              # the context manager closed the port


# --port auto

def _ports(*specs):
    return [SimpleNamespace(device=d, description=desc, product=prod, vid=vid, pid=pid)
            for d, desc, prod, vid, pid in specs]


def test_port_auto_without_ports_is_one_error(model, tiny_cifar, one_line_error, monkeypatch):
    from serial.tools import list_ports
    monkeypatch.setattr(list_ports, "comports", lambda: [])
    rc = _run("--port", "auto", "--model", model[1], "--data-dir", tiny_cifar)
    line = one_line_error(rc)
    assert "--port auto: no serial port with the ulx3s-85f board's adapter (FT231X)" in line
    assert "ports found: none" in line


def test_find_port(monkeypatch):
    from serial.tools import list_ports
    ftdi = ("/dev/ttyUSB1", "ULX3S FPGA 85K v3.0.8", "ULX3S FPGA 85K v3.0.8", 0x0403, 0x6015)
    other = ("/dev/ttyACM0", "Arduino Uno", "Uno", 0x2341, 0x0043)
    legacy = ("/dev/ttyS0", "n/a", None, None, None)
    monkeypatch.setattr(list_ports, "comports", lambda: _ports(legacy, other, ftdi))
    assert find_port("ulx3s") == "/dev/ttyUSB1"
    with pytest.raises(KepError, match="2 ports with the colorlight-5a75b board's adapter"):
        find_port("colorlight")                    # external adapter: any USB serial port
    monkeypatch.setattr(list_ports, "comports", lambda: _ports(legacy, other))
    with pytest.raises(KepError, match=r"ports found: /dev/ttyACM0 \(Arduino Uno 2341:0043\), "
                                       r"/dev/ttyS0 \(n/a\)"):
        find_port("ulx3s-12f")
    monkeypatch.setattr(list_ports, "comports", lambda: _ports(legacy, other, ftdi, (
        "/dev/ttyUSB2", "FT231X USB UART", "FT231X USB UART", 0x0403, 0x6015)))
    with pytest.raises(KepError, match="2 ports with the ulx3s-85f"):
        find_port("ulx3s")


def test_port_auto_finds_the_board(model, tiny_cifar, monkeypatch, tmp_path):
    """--port auto opens the one FT231X port, at the profile's baud."""
    kep, path = model
    from serial.tools import list_ports
    from kep_hw.host import api
    opened = []
    real_open = api.open_port

    def spy(url, **kw):
        opened.append((url, kw["baud"]))
        return real_open(url, **kw)

    monkeypatch.setattr(api, "open_port", spy)
    with ScriptedBoard(plan_network(kep, po=8, lanes=4), kep=kep) as board:
        monkeypatch.setattr(list_ports, "comports", lambda: _ports(
            (board.port, "FT231X USB UART", "FT231X USB UART", 0x0403, 0x6015)))
        rc = _run("--port", "auto", "--model", path, "--data-dir", tiny_cifar, "--n", 1,
                  "--timeout", 0.5)
    # (the ULX3S profile's FT231X rate: 3 Mbaud)
    assert rc == 0 and opened == [(board.port, 3_000_000)]
