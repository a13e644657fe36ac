# SPDX-License-Identifier: Apache-2.0
"""The host runtime against a misbehaving board: a scripted peer
(:class:`kep_hw.testing.ScriptedBoard`) on a pseudo-terminal (or a socket) that hangs up,
stays silent, drips frames, loops on ``NEED``, sends garbage or a wrong ``INFO``. Driven through
:class:`kep_hw.host.link.BoardLink` and through ``python -m kep_hw.run`` in-process: every case
must end within a few seconds with one clear error (exit code 2 on the command line)."""

from __future__ import annotations

import errno
import json
import math
import os
import time

import pytest
import torch

from kep_common.errors import KepError
from kep_train.export.kepfile import save_kep

from kep_hw.host import link as link_mod
from kep_hw.host.link import BoardLink, LinkError, open_port
from kep_hw.host.run import main as run_main
from kep_hw.system.plan import plan_network
from kep_hw.system.protocol import BoardTimeout, FrameType, ProtocolError
from kep_hw.testing import (ScriptedBoard, random_network, reference_activations,
                             reference_logits)

pytestmark = pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")

KEP = random_network(0)
PLAN = plan_network(KEP, po=8, lanes=4)
LAYERS = len(PLAN.layers)
LAST = KEP.conv_layers[-1].name


def _image(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, tuple(PLAN.in_shape), generator=g).to(torch.int8)


def _link(board, **kw):
    port = open_port(board.port, baud=115200, timeout=1.0)
    kw = {"timeout": 0.5, "byte_timeout": 0.5, "image_timeout": 2.0} | kw
    return port, BoardLink(port, PLAN, **kw)


# a board that behaves: the scripted peer and the link agree bit for bit (so the
# misbehaviour cases below fail for the reason they name, not for a broken harness)

@pytest.mark.parametrize("transport", ["pty", "socket"])
@pytest.mark.parametrize("streamed", [False, True])
def test_good_board_bit_exact(streamed, transport):
    with ScriptedBoard(PLAN, streamed=streamed, kep=KEP, transport=transport) as board:
        port, link = _link(board)
        with port:
            info = link.connect()
            assert info["streamed"] == streamed and info["clk_khz"] == 50_000
            for seed in range(2):
                x = _image(seed)
                logits, out, cycles = link.infer(x, fmap=seed == 1)
                assert torch.equal(logits, reference_logits(KEP, x))
                if seed == 1:
                    assert torch.equal(out, reference_activations(KEP, x)[LAST])
                else:
                    assert out is None
                assert cycles == 1234
    gos = board.received.count(FrameType.GO)
    assert gos == (2 * LAYERS if streamed else 0)
    assert board.received[:2] == [FrameType.PING, FrameType.IMAGE]
    assert FrameType.IMAGE_FMAP in board.received


# misbehaviours through BoardLink: (behaviour, at, streamed, exception, message)
CASES = [
    ("silent", "PING", False, BoardTimeout, r"no answer from the board within 0\.5 s"),
    ("silent", "IMAGE", False, BoardTimeout, "no answer"),
    ("hangup", "PING", False, LinkError, "lost the board while reading"),
    ("hangup", "IMAGE", True, LinkError, "lost the board"),
    ("garbage", "PING", False, ProtocolError, "corrupted frame"),
    ("garbage", "IMAGE", True, ProtocolError, "corrupted frame"),
    ("drip", "PING", False, BoardTimeout, "answer to PING took longer than .* still arriving"),
    ("drip", "IMAGE", False, BoardTimeout, r"image took longer than 2 s .*still arriving"),
    ("drip", "IMAGE", True, BoardTimeout, "image took longer than 2 s"),
    ("need-loop", "PING", True, ProtocolError,
     f"asked for layer 0, expected the RESULT after all {LAYERS} layers"),
    ("need-loop", "PING", False, ProtocolError, "NEED frame from a board that reported "
     "embedded"),
    ("wrong-info", "PING", False, KepError, "built for another model"),
    ("short-info", "PING", False, ProtocolError, "INFO frame of 19 bytes, expected 20"),
    ("error", "PING", False, ProtocolError, r"rejected the PING frame: not allowed now"),
    ("error", "IMAGE", True, ProtocolError, r"rejected the IMAGE frame"),
    ("bad-crc", "PING", False, ProtocolError, "CRC mismatch"),
    ("bad-crc", "IMAGE", True, ProtocolError, "CRC mismatch"),
    ("unexpected", "PING", False, ProtocolError, "unexpected RESULT frame .* waiting for INFO"),
    ("unexpected", "IMAGE", False, ProtocolError, "unexpected INFO frame"),
    ("bad-result", "PING", False, ProtocolError, "RESULT of 43 bytes, expected 44"),
]


@pytest.mark.parametrize("behaviour, at, streamed, exc, match", CASES,
                         ids=[f"{c[0]}-{c[1]}-{'streamed' if c[2] else 'embedded'}"
                              for c in CASES])
def test_misbehaving_board_is_one_error(behaviour, at, streamed, exc, match):
    with ScriptedBoard(PLAN, behaviour, at=at, streamed=streamed, kep=KEP, drip=0.3) as board:
        port, link = _link(board)
        t = time.monotonic()
        with port, pytest.raises(exc, match=match):
            link.connect()
            link.infer(_image())
        assert time.monotonic() - t < 3.5


def test_need_loop_is_bounded_by_the_layers():
    """A board that answers every GO with another NEED: the host sends each layer once."""
    with ScriptedBoard(PLAN, "need-loop", streamed=True) as board:
        port, link = _link(board, image_timeout=60.0)
        t = time.monotonic()
        with port, pytest.raises(ProtocolError, match="each layer's weights once"):
            link.infer(_image())
        assert time.monotonic() - t < 3
    assert board.received.count(FrameType.GO) == LAYERS


def test_drip_is_cut_by_the_image_deadline():
    """A RESULT dripped one byte per 0.1 s (inside the 0.5 s inter-byte timeout) would take
    about 27 s; the image deadline ends it after 1.5 s."""
    with ScriptedBoard(PLAN, "drip", at="IMAGE", drip=0.1) as board:
        port, link = _link(board, image_timeout=1.5)
        with port:
            link.connect()
            t = time.monotonic()
            with pytest.raises(BoardTimeout, match="took longer than 1.5 s"):
                link.infer(_image())
            assert 1.4 < time.monotonic() - t < 2.5


def test_zero_clock_is_reported_not_divided():
    with ScriptedBoard(PLAN, "zero-clock") as board:
        port, link = _link(board)
        with port:
            assert link.connect()["clk_khz"] == 0      # the run command refuses it


class _Unplugged:
    """A transport whose adapter disappears: reads or writes raise ``OSError``."""

    def __init__(self, on):
        self.on = on

    def write(self, data):
        if self.on == "write":
            raise OSError(errno.ENXIO, "No such device or address")

    def read(self, n):
        raise OSError(errno.EIO, "Input/output error")


@pytest.mark.parametrize("on, doing", [("read", "reading"), ("write", "writing")])
def test_transport_oserror_is_link_error(on, doing):
    link = BoardLink(_Unplugged(on), PLAN, timeout=0.5)
    with pytest.raises(LinkError, match=f"lost the board while {doing}"):
        link.connect()


@pytest.mark.parametrize("kw", [{"timeout": math.nan}, {"timeout": math.inf}, {"timeout": 0},
                                {"timeout": -1}, {"byte_timeout": math.nan},
                                {"image_timeout": math.nan}, {"image_timeout": 0},
                                {"baud": -1}, {"baud": 0}])
def test_link_parameters_checked(kw):
    with pytest.raises(ValueError):
        BoardLink(_Unplugged("read"), PLAN, **kw)


def test_default_image_timeout_follows_traffic_and_baud():
    link = BoardLink(_Unplugged("read"), PLAN, timeout=10.0, baud=115200)
    frames, nbytes = link.image_traffic(False)
    assert frames == 2
    # the longer RESULT (with the last conv output) bounds the deadline
    assert nbytes == (12 + PLAN.image_bytes + 4 + 4 * PLAN.classes
                      + PLAN.out_words * PLAN.lanes)
    assert link.image_timeout(False) == pytest.approx(10 + 2 * nbytes * 10 / 115200 + 0.1 + 1)
    sframes, sbytes = link.image_traffic(True)
    assert sframes >= 2 + 4 * LAYERS and sbytes > nbytes
    assert link.image_timeout(True) > link.image_timeout(False)
    slow = BoardLink(_Unplugged("read"), PLAN, timeout=10.0, baud=9600)
    assert slow.image_timeout(True) > link.image_timeout(True)
    fixed = BoardLink(_Unplugged("read"), PLAN, image_timeout=3.0)
    assert fixed.image_timeout(True) == 3.0


# opening the port as pyserial users expect

class _FakeSerial:
    def __init__(self):
        self.reset = 0

    def reset_input_buffer(self):
        self.reset += 1


@pytest.mark.parametrize("url, exclusive", [("/dev/ttyUSB0", True), ("COM3", True),
                                            ("socket://localhost:7777", False),
                                            ("rfc2217://localhost:7777", False)])
def test_open_port_arguments(monkeypatch, url, exclusive):
    import serial
    calls = []
    fake = _FakeSerial()

    def serial_for_url(u, **kw):
        calls.append((u, kw))
        return fake

    monkeypatch.setattr(serial, "serial_for_url", serial_for_url)
    assert open_port(url, baud=115200, timeout=2.0) is fake
    (u, kw), = calls
    assert u == url and kw["baudrate"] == 115200 and kw["timeout"] == link_mod.READ_POLL
    assert kw["write_timeout"] > 2.0
    assert kw.get("exclusive") is (True if exclusive else None)
    assert fake.reset == 1


def test_open_port_failure_is_kep_error(tmp_path):
    with pytest.raises(KepError, match="cannot open"):
        open_port(str(tmp_path / "ttyNONE"), baud=115200)
    with pytest.raises(KepError, match="cannot open"):
        open_port("socket://127.0.0.1:1", baud=115200)


def test_port_is_exclusive():
    with ScriptedBoard(PLAN) as board:
        with open_port(board.port, baud=115200):
            with pytest.raises(KepError, match="cannot open"):
                open_port(board.port, baud=115200)


# the run command, in-process

@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    kep = random_network(0, size=32)              # CIFAR-10-sized input
    path = tmp_path_factory.mktemp("kep") / "tiny.kep"
    save_kep(path, kep)
    return kep, plan_network(kep, po=8, lanes=4), str(path)


def _run(board, cli_model, data, *extra):
    try:
        return run_main(["--port", board.port, "--model", cli_model[2], "--data-dir",
                         str(data), "--n", "2", "--pes", "8", "--timeout", "0.5", *extra])
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("transport", ["pty", "socket"])
def test_run_cli_good_board(cli_model, tiny_cifar, tmp_path, capsys, transport):
    kep, plan, _ = cli_model
    with ScriptedBoard(plan, kep=kep, transport=transport) as board:
        rc = _run(board, cli_model, tiny_cifar, "--out", str(tmp_path / "r.json"))
    out = capsys.readouterr().out
    assert rc == 0, out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["bit_exact"] and rep["cycles"] == [1234, 1234] and rep["fmax_mhz"] == 50.0
    assert "logits equal to the golden model's on 2 of 2 images" in out
    assert rep["logits_equal"] == 2 and rep["head"] == "board"
    assert [r["logits"] == r["golden_logits"] for r in rep["images"]] == [True, True]
    assert all(len(r["logits"]) == 10 and r["logits_equal"] for r in rep["images"])


def test_run_cli_fmap_and_wrong_logits(cli_model, tiny_cifar, tmp_path, capsys):
    """--fmap also compares the last conv output; a board whose logits differ from the
    golden model's fails the run (exit 1) and is named in the report."""
    kep, plan, _ = cli_model
    with ScriptedBoard(plan, kep=kep) as board:
        rc = _run(board, cli_model, tiny_cifar, "--fmap", "--out", str(tmp_path / "r.json"))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "last conv output bit-exact on 2 of 2 images" in out
    assert [r["mismatched"] for r in json.loads((tmp_path / "r.json").read_text())["images"]] \
        == [0, 0]
    with ScriptedBoard(plan, kep=kep, cycles=7) as board:
        board._result_hook = lambda p: p[:4] + bytes([p[4] ^ 1]) + p[5:]
        rc = _run(board, cli_model, tiny_cifar, "--out", str(tmp_path / "bad.json"))
    rep = json.loads((tmp_path / "bad.json").read_text())
    assert rc == 1 and rep["logits_equal"] == 0 and not rep["bit_exact"]
    assert rep["logits_differ"] == ["image 0", "image 1"]


# (behaviour, ScriptedBoard options, extra run options, error line)
CLI_CASES = [
    ("hangup", {}, [], "lost the board while reading"),
    ("zero-clock", {}, [], "clock of 0 kHz"),
    ("need-loop", {"streamed": True}, ["--image-timeout", "30"], "each layer's weights once"),
    ("drip", {"at": "IMAGE", "drip": 0.05}, ["--image-timeout", "1.5"],
     "image took longer than 1.5 s .*--image-timeout 1.5 s"),
    ("silent", {}, [], r"no answer from the board within 0\.5 s; --timeout 0.5 s"),
    ("garbage", {}, [], "corrupted frame"),
    ("wrong-info", {}, [], "built for another model"),
    ("short-info", {}, [], "INFO frame of 19 bytes, expected 20"),
    ("error", {"at": "IMAGE"}, [], "rejected the IMAGE frame"),
    ("good", {"px": 2}, [], "PX=2"),
]


@pytest.mark.parametrize("behaviour, opts, extra, match", CLI_CASES,
                         ids=[f"{c[0]}-{n}" for n, c in enumerate(CLI_CASES)])
def test_run_cli_misbehaving_board(cli_model, tiny_cifar, one_line_error, behaviour, opts,
                                   extra, match):
    import re
    kep, plan, _ = cli_model
    with ScriptedBoard(plan, behaviour, kep=kep, **opts) as board:
        t = time.monotonic()
        rc = _run(board, cli_model, tiny_cifar, *extra)
        assert time.monotonic() - t < 5
    line = one_line_error(rc)
    assert re.search(match, line), line


def test_run_cli_zero_cycles_reported(cli_model, tiny_cifar, capsys):
    kep, plan, _ = cli_model
    with ScriptedBoard(plan, kep=kep, cycles=0) as board:
        rc = _run(board, cli_model, tiny_cifar)
    assert rc == 0 and "the board counted 0 cycles" in capsys.readouterr().out


def test_run_cli_zero_clock_with_fmax_runs(cli_model, tiny_cifar, capsys):
    kep, plan, _ = cli_model
    with ScriptedBoard(plan, "zero-clock", kep=kep) as board:
        rc = _run(board, cli_model, tiny_cifar, "--fmax", "25")
    assert rc == 0 and "at 25 MHz" in capsys.readouterr().out


@pytest.mark.parametrize("args, option", [
    (["--timeout", "nan"], "--timeout"), (["--timeout", "inf"], "--timeout"),
    (["--timeout", "0"], "--timeout"), (["--timeout", "-1"], "--timeout"),
    (["--image-timeout", "nan"], "--image-timeout"), (["--image-timeout", "-3"],
                                                      "--image-timeout"),
    (["--baud", "-1"], "--baud"), (["--baud", "0"], "--baud"),
    (["--pes", "1000000000"], "--pes"), (["--pes", "0"], "--pes"), (["--pes", "8x3"], "--pes"),
    (["--pes", "256"], "--pes"), (["--pes", "64x32"], "--pes"), (["--pes", "8", "--lanes", "16"],
                                                                "--pes"),
    (["--fmax", "-5"], "--fmax"), (["--fmax", "nan"], "--fmax"), (["--fmax", "0"], "--fmax"),
    (["--n", "-1"], "--n"), (["--n", "0"], "--n"), (["--offset", "-1"], "--offset"),
    (["--lanes", "3"], "--lanes"), (["--lanes", "0"], "--lanes"), (["--lanes", "-4"], "--lanes"),
    (["--n", "abc"], "--n"), (["--baud", "1.5"], "--baud"),
])
def test_run_cli_numeric_options_checked_first(tmp_path, one_line_error, args, option):
    """Checked before the model, the data or the port are touched (all missing here)."""
    try:
        rc = run_main(["--port", str(tmp_path / "ttyNONE"), "--model",
                       str(tmp_path / "missing.kep"), "--data-dir", str(tmp_path), *args])
    except SystemExit as e:
        rc = e.code
    assert option in one_line_error(rc)
