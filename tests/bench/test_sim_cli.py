# SPDX-License-Identifier: Apache-2.0
"""Command-line and input checking of kep_hw: one-line errors, exit code 2; the progress lines
of ``python -m kep_hw.sim`` (one short Verilator run)."""

from __future__ import annotations

import dataclasses

import json
import re
import threading
import time

import pytest

from kep_hw.bench import cosim, sim
from kep_hw.gateware import verilog
from kep_hw.gateware.params import EngineParams, parse_pes
from kep_hw.gateware.perf import LayerShape, block_cycles, ideal_cycles, layer_cycles, useful_macs
from kep_hw.gateware.verilog import generate
from kep_hw.testing import random_network
from kep_common.errors import KepError


MAINS = {"kep_hw.bench.sim": sim.main, "kep_hw.gateware.verilog": verilog.main}


@pytest.mark.parametrize("args,msg", [
    (("kep_hw.bench.sim", "--random", "0"), "--random must be >= 1"),
    (("kep_hw.bench.sim", "--model", "/nonexistent/model.kep"), "error:"),
    (("kep_hw.bench.sim", "--resnet20", "--pes", "6"), "multiple of lanes"),
    (("kep_hw.bench.sim", "--resnet20", "--stall", "1.5"), "--stall"),
    (("kep_hw.bench.sim", "--resnet20", "--layer", "conv1"), "need --model"),
    (("kep_hw.gateware.verilog", "--lanes", "0"), "lanes"),
    (("kep_hw.bench.sim", "--resnet20", "--pes", "64x"), "--pes must be P or PxPX"),
    (("kep_hw.bench.sim", "--resnet20", "--pes", "64x4", "--px", "2"), "disagree"),
    (("kep_hw.bench.sim", "--resnet20", "--pes", "64x3"), "multiple of px"),
    (("kep_hw.bench.sim", "--resnet20", "--pes", "64x8", "--lanes", "16"), "multiple of lanes"),
    (("kep_hw.bench.sim", "--resnet20", "--kept", "-1"), "--kept must lie in [1, 9]"),
    (("kep_hw.bench.sim", "--resnet20", "--kept", "10"), "--kept must lie in [1, 9]"),
    (("kep_hw.bench.sim", "--resnet20", "--stall", "nan"), "--stall"),
    (("kep_hw.bench.sim", "--resnet20", "--stall", "-0.1"), "--stall"),
    (("kep_hw.bench.sim", "--resnet20", "--image", "-1"), "--image"),
    (("kep_hw.bench.sim", "--resnet20", "--seed", "-1"), "--seed"),
    (("kep_hw.bench.sim", "--resnet20", "--max-hw", "0"), "max_hw"),
    (("kep_hw.bench.sim", "--resnet20", "--kept", "four"), "invalid int value"),
    (("kep_hw.bench.sim", "--resnet20", "--quiet", "--verbose"), "not allowed with"),
    (("kep_hw.bench.sim",), "one of the arguments"),
    (("kep_hw.gateware.verilog", "--pes", "0"), "--pes"),
])
def test_cli_errors(args, msg, capsys):
    with pytest.raises(SystemExit) as exc:
        MAINS[args[0]](list(args[1:]))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert msg in err
    assert err.startswith("error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_follow_lines_sees_each_line_while_the_file_grows(tmp_path):
    """The per-layer progress of a simulation comes from a file the testbench appends to."""
    path = tmp_path / "progress.jsonl"
    got = []
    arrived = threading.Event()

    def on_line(line):
        got.append(line)
        arrived.set()

    with cosim.FollowLines(path, on_line, interval=0.05):
        time.sleep(0.1)                           # the file does not exist yet
        with open(path, "a") as f:
            f.write('{"name": "a"}\n{"name": "b')  # the second line is not complete
            f.flush()
            assert arrived.wait(2.0)
            assert got == ['{"name": "a"}']
            f.write('"}\n')
    assert got == ['{"name": "a"}', '{"name": "b"}']


def test_sim_progress_lines(tmp_path, capsys):
    """``python -m kep_hw.sim --random 2``: the simulator build's start and end and one line per
    layer (name, exact, cycles, seconds) on stderr, each with the elapsed time; the table on
    stdout, with no simulator output mixed in."""
    out = tmp_path / "r.json"
    assert sim.main(["--random", "2", "--seed", "3", "--json", str(out)]) == 0
    cap = capsys.readouterr()
    rows = json.loads(out.read_text())["layers"]
    t = r"^\[\s*\d+\.\d s\] "
    err = cap.err
    assert all(re.match(t, ln) for ln in err.splitlines()), err
    assert re.search(t + r"simulator build \(verilator\): started in \S+verilator-\w+$", err,
                     re.M), err
    assert re.search(t + r"simulator build \(verilator\): done in \d+\.\d s$", err, re.M)
    assert re.search(t + r"simulation \(verilator\): 2 layers$", err, re.M)
    for n, row in enumerate(rows, start=1):
        assert re.search(t + rf"layer {n}/2 {row['layer']}: exact, {row['cycles']} cycles, "
                         r"\d+\.\d s$", err, re.M), err
    assert err.index("build (verilator): done") < err.index("layer 1/2") < \
        err.index("layer 2/2") < err.index("simulation (verilator): done")
    lines = cap.out.splitlines()
    assert lines[0].startswith("P = 16 PEs") and lines[-1] == "2 layers, 0 not bit-exact"
    assert len(lines) == 2 + 2 + 1                      # header, column names, rows, total
    # --quiet: the table only
    assert sim.main(["--random", "1", "--seed", "3", "--quiet"]) == 0
    cap = capsys.readouterr()
    assert cap.err == "" and cap.out.splitlines()[-1] == "1 layers, 0 not bit-exact"


def test_unknown_simulator():
    with pytest.raises(KepError, match="unknown simulator"):
        cosim.simulator_from_env("modelsim")
    assert cosim.simulator_from_env("ICARUS") == "icarus"


def test_generate_verilog():
    text = generate(EngineParams(pes=4, lanes=2, max_cin=8, max_cout=8, max_hw=4,
                                 act_depth=64, wt_depth=64, prm_depth=16))
    assert "module layer_top" in text and "o__payload" in text
    with pytest.raises(KepError, match="unknown top"):
        generate(EngineParams(), top="nope")


def test_perf_model_numbers():
    p = EngineParams()
    s = LayerShape(cin=16, cout=16, h=32, w=32, k=3, kept=4)
    assert useful_macs(s) == 32 * 32 * 16 * 16 * 4
    assert ideal_cycles(s, p) == 65536
    # one group: start (3) + parameter load (16 reads, 3 cycles of latency), 1024 pixels of
    # 16 channels x 4 elements, the end (15: 3 + the requantization's PIPE = 9 and LEAD = 3;
    # and 1 for the weight register stage S1W) and the last pixel's requantization (16 / 4)
    assert layer_cycles(s, p) == 3 + 19 + 1024 * 16 * 4 + 16 + 4
    d = LayerShape(cin=16, cout=16, h=32, w=32, k=3, kept=9)
    assert layer_cycles(d, p) == 3 + 19 + 1024 * 16 * 9 + 16 + 4
    # a chain of 8 pixel groups: 7 more cycles at the layer's end
    c = EngineParams(pes=128, px=8, lanes=16, rq_lanes=8, chain=True)
    assert layer_cycles(s, c) - layer_cycles(s, dataclasses.replace(c, chain=False)) == 7


def test_parse_pes():
    assert parse_pes("64x4") == (64, 4)
    assert parse_pes("64X4", 4) == (64, 4)
    assert parse_pes("64", 2) == (64, 2)
    assert parse_pes("16") == (16, 1)
    for bad, msg in (("0", "P or PxPX"), ("x4", "P or PxPX"), ("4x4x1", "P or PxPX"),
                     ("sixteen", "P or PxPX"), ("64x0", "P or PxPX"), ("64x3", "multiple of px"),
                     ("64", "multiple of px")):
        with pytest.raises(KepError, match=msg):
            parse_pes(bad, 3 if bad == "64" else None)


def test_ideal_cycles_of_a_network():
    """The ideal cycles of a network: the non-zero MACs of all its conv layers / P."""
    kep = random_network(0)
    shapes = [LayerShape.from_layer(cl) for cl in kep.conv_layers]
    macs = sum(cl.out_shape[0] * cl.out_shape[1] * cl.out_shape[2] * cl.in_shape[0] * cl.K
               for cl in kep.conv_layers)
    assert [s.out_hw for s in shapes] == [tuple(cl.out_shape[1:]) for cl in kep.conv_layers]
    assert ideal_cycles(shapes, 16) == ideal_cycles(shapes, EngineParams()) == macs / 16
    assert ideal_cycles(shapes[0], 16) == useful_macs(shapes[0]) / 16


def test_perf_model_px():
    """P = 64 as Po = 16 x Px = 4 with G = 8: a 3x3 K=4 block of 4 pixels and 16 input
    channels takes 2 words x 32 MAC cycles (the fetcher needs 18 reads per word at stride 1,
    27 at stride 2); a 7-wide row costs one full and one 3-pixel block."""
    p = EngineParams(pes=64, px=4, lanes=8)
    s = LayerShape(cin=16, cout=16, h=32, w=32, k=3, kept=4)
    assert block_cycles(s, p, 4) == 64
    assert ideal_cycles(s, p) == 32 * 32 * 16 * 16 * 4 / 64
    # the first window (18 reads, complete 6 cycles later) comes after the parameters (22)
    assert layer_cycles(s, p) == 18 + 6 + 32 * 8 * 64 + 16 + 4 * 2
    s2 = LayerShape(cin=16, cout=32, h=32, w=32, k=3, kept=4, stride=2)
    assert block_cycles(s2, p, 4) == 64
    # G = 4: the window reads bound the block (18 > 4 * 4, 27 at stride 2); at stride 1 the
    # two are close enough for the two-window FIFO's loop to show: (18 + 16 + 3) / 2 per word
    g4 = EngineParams(pes=64, px=4, lanes=4)
    assert block_cycles(s, g4, 4) == 4 * (18 + 16 + 3) / 2
    assert block_cycles(s2, g4, 4) == 4 * 27
    # 7-wide output: a 4-pixel and a 3-pixel block per row (3x3 K=9, 3 input channels: one
    # channel word, so the fetcher reuses columns and skips the padding column of a row's
    # first block: its first window, 15 reads + 5, is ready before the parameters, 22)
    s7 = LayerShape(cin=3, cout=16, h=7, w=7, k=3, kept=9)
    assert block_cycles(s7, p, 3) == 27
    assert layer_cycles(s7, p) == 22 + 7 * (27 + 27) + 16 + 3 * 2
    # 1x1 stride 2: 4 positions per word, 8 MAC cycles
    sc = LayerShape(cin=16, cout=32, h=32, w=32, k=1, kept=1, stride=2, pad=0)
    assert block_cycles(sc, p, 4) == 2 * 8
