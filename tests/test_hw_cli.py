# SPDX-License-Identifier: Apache-2.0
"""Command-line and input checking of kep_hw (no simulator run): one-line errors, exit code 2."""

from __future__ import annotations

import pytest

from kep_hw import cosim, sim, verilog
from kep_hw.perf import LayerShape, ideal_cycles, layer_cycles, useful_macs
from kep_hw.params import EngineParams
from kep_hw.verilog import generate
from kep_train.errors import KepError


MAINS = {"kep_hw.sim": sim.main, "kep_hw.verilog": verilog.main}


@pytest.mark.parametrize("args,msg", [
    (("kep_hw.sim", "--random", "0"), "--random must be >= 1"),
    (("kep_hw.sim", "--model", "/nonexistent/model.kep"), "error:"),
    (("kep_hw.sim", "--resnet20", "--pes", "6"), "multiple of lanes"),
    (("kep_hw.sim", "--resnet20", "--stall", "1.5"), "--stall"),
    (("kep_hw.sim", "--resnet20", "--layer", "conv1"), "need --model"),
    (("kep_hw.verilog", "--lanes", "0"), "lanes"),
])
def test_cli_errors(args, msg, capsys):
    with pytest.raises(SystemExit) as exc:
        MAINS[args[0]](list(args[1:]))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert msg in err
    assert err.startswith("error:") and "Traceback" not in err


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
    # one group: start + parameter load, 1024 pixels of 16 channels x 4 elements, drain
    assert layer_cycles(s, p) == 65566
    d = LayerShape(cin=16, cout=16, h=32, w=32, k=3, kept=9)
    assert layer_cycles(d, p) == 3 + 18 + 1024 * 16 * 9 + 9
