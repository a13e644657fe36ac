# SPDX-License-Identifier: Apache-2.0
"""``benchmarks/hw_regression.py`` without a simulator (``cosim.run_layers`` replaced by a fake
that returns rows): resume after an interruption skips the finished chunks and writes the report
of an uninterrupted run, a state file of other settings or a corrupt one is one error line,
``--max-minutes`` stops cleanly and the printed command continues, and the results table reads
the report and not the state file."""

from __future__ import annotations

import json
import shlex
import types
from pathlib import Path

import pytest

from kep_hw.bench import cosim

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
ARGS = ["--layers", "12", "--chunk", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def hw(bench_script):
    return bench_script("hw_regression")


def _layer(job):
    """The drawn layer's name without the dense-mode suffix (``rand5:dense`` -> ``rand5``)."""
    return job.name.split(":")[0]


class FakeSim:
    """Stands for ``cosim.run_layers``: rows that depend on the layers, the engine and the
    back-pressure seed (``rand5`` is not exact); raises ``fail_with`` on call ``fail_at``
    (1-based); advances the clock by ``seconds`` per call."""

    def __init__(self):
        self.calls = []
        self.fail_at = None
        self.fail_with = KeyboardInterrupt
        self.now = 1000.0
        self.seconds = 0.0

    def __call__(self, params, jobs, *, sim=None, stall=0.0, seed=0):
        self.calls.append((sim, params.px, jobs[0].name, seed))
        if len(self.calls) == self.fail_at:
            raise self.fail_with()
        self.now += self.seconds
        return [{"name": j.name, "cycles": 100 * params.px + seed + i,
                 "outputs": 3 + i, "expected_outputs": 3 + i,
                 "mismatches": int(_layer(j) == "rand5"), "bad_last": 0,
                 "exact": _layer(j) != "rand5"} for i, j in enumerate(jobs)]

    def monotonic(self):
        return self.now


@pytest.fixture
def fake(hw, monkeypatch):
    sim = FakeSim()
    monkeypatch.setattr(cosim, "run_layers", sim)
    monkeypatch.setattr(hw, "verilog_digests", lambda engines: {str(p): "v1" for p in engines})
    monkeypatch.setattr(hw, "time", types.SimpleNamespace(monotonic=sim.monotonic))
    return sim


@pytest.fixture
def run(hw):
    def go(*args):
        try:
            return hw.main([str(a) for a in args])
        except SystemExit as e:
            return e.code
    return go


def _report(path):
    rep = json.loads(Path(path).read_text())
    rep.pop("environment")
    for s in rep["simulators"].values():
        s.pop("seconds")
    return rep


@pytest.fixture
def reference(fake, run, tmp_path):
    """The report and the chunk calls of an uninterrupted run of ``ARGS``."""
    out = tmp_path / "ref.json"
    assert run(*ARGS, "--out", out) == 1          # rand5 is not exact
    calls = list(fake.calls)
    fake.calls.clear()
    assert not (tmp_path / "ref.state.json").exists()
    return _report(out), calls


@pytest.fixture
def interrupted(fake, run, capsys):
    """``interrupted(out, after=2, error=KeyboardInterrupt)``: a ``--resume`` run of ``ARGS``
    that ``error`` stops in chunk ``after + 1``; returns its exit code and stderr."""
    def go(out, after=2, error=KeyboardInterrupt):
        fake.calls.clear()
        fake.fail_at, fake.fail_with = after + 1, error
        code = run(*ARGS, "--out", out, "--resume")
        fake.fail_at = None
        fake.calls.clear()
        return code, capsys.readouterr().err
    return go


def test_resume_skips_finished_chunks_and_writes_the_same_report(fake, run, reference,
                                                                 tmp_path, capsys, interrupted):
    ref, ref_calls = reference
    assert len(ref_calls) >= 6 and len({c[1] for c in ref_calls}) > 1
    assert ref["simulators"]["verilator"]["not_exact"] == 1
    out = tmp_path / "soak.json"
    capsys.readouterr()
    code, err = interrupted(out, after=2)
    assert code == 130
    assert "2 of" in err and "--resume" in err
    state = json.loads((tmp_path / "soak.state.json").read_text())
    assert len(state["chunks"]) == 2 and not out.exists()

    assert run(*ARGS, "--out", out, "--resume") == 1
    assert fake.calls == ref_calls[2:]           # only the unfinished chunks, same seeds
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("resuming ") and f"2 of {len(ref_calls)} chunks" in lines[0]
    assert "skipped" in lines[0]
    assert _report(out) == ref
    assert not (tmp_path / "soak.state.json").exists()


def test_simulator_failure_keeps_finished_chunks(fake, run, reference, tmp_path, interrupted):
    ref, ref_calls = reference
    out = tmp_path / "soak.json"
    code, err = interrupted(out, after=3,
                            error=lambda: cosim.KepError("verilator simulation produced no "
                                                         "result"))
    assert code == 2 and err.strip().startswith("error:") and len(err.strip().splitlines()) == 1
    line = err.strip()
    assert "no result" in line and "3 of" in line and "--resume" in line
    assert run(*ARGS, "--out", out, "--resume") == 1
    assert fake.calls == ref_calls[3:]
    assert _report(out) == ref


def test_progress_line_per_chunk(fake, run, tmp_path, capsys):
    fake.seconds = 10.0
    assert run(*ARGS, "--out", tmp_path / "o.json") == 1
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("chunk ")]
    n = len(fake.calls)
    assert len(lines) == n
    assert lines[0].startswith(f"chunk 1/{n} (verilator, Px ")
    assert " layers): 2/12 layers done, 0 not bit-exact (0 mismatching outputs) so far" \
        in lines[0] and "elapsed 0:00:10, ETA 0:00:50" in lines[0]
    assert "12/12 layers done, 1 not bit-exact (1 mismatching outputs) so far" in lines[-1]
    assert lines[-1].endswith("ETA 0:00:00")


def test_plain_run_refuses_an_existing_state(fake, run, tmp_path, one_line_error, interrupted):
    out = tmp_path / "soak.json"
    interrupted(out)
    before = (tmp_path / "soak.state.json").read_bytes()
    line = one_line_error(run(*ARGS, "--out", out))
    assert "--resume" in line and "soak.state.json" in line
    assert (tmp_path / "soak.state.json").read_bytes() == before and not fake.calls


@pytest.mark.parametrize("change,named", [
    (["--seed", "4"], "--seed 3 there, 4 here"),
    (["--layers", "14"], "--layers 12 there, 14 here"),
    (["--chunk", "3"], "--chunk 2 there, 3 here"),
    (["--stall", "0.5"], "--stall 0.3 there, 0.5 here"),
    (["--max-cin", "32"], "--max-cin 64 there, 32 here"),
    (["--px-choices", "1", "2"], "--px-choices [1, 2, 4] there, [1, 2] here"),
    (["--sim", "icarus"], '--sim ["verilator"] there, ["icarus"] here'),
    ("verilog", "the generated Verilog of Px 1 changed"),
])
def test_state_of_other_settings_is_refused(hw, fake, run, tmp_path, monkeypatch,
                                            one_line_error, change, named, interrupted):
    out = tmp_path / "soak.json"
    interrupted(out)
    before = (tmp_path / "soak.state.json").read_bytes()
    args = list(ARGS)
    if change == "verilog":
        monkeypatch.setattr(hw, "verilog_digests",
                            lambda engines: {str(p): "v2" if p == 1 else "v1" for p in engines})
    else:
        for opt, *vals in [change]:
            if opt in args:
                i = args.index(opt)
                args[i + 1:i + 2] = vals
            else:
                args += [opt, *vals]
    line = one_line_error(run(*args, "--out", out, "--resume"))
    assert named in line and "other settings" in line and "another --out" in line
    assert (tmp_path / "soak.state.json").read_bytes() == before and not fake.calls


def _corrupt_variants():
    def edit(fn):
        def apply(text):
            state = json.loads(text)
            fn(state)
            return json.dumps(state).encode()
        return apply
    first = lambda s: next(iter(s["chunks"].values()))   # noqa: E731
    return [
        ("truncated", lambda t: t[: len(t) // 2], "not JSON"),
        ("binary", lambda t: b"\xff\xfe\x00garbage", "not JSON"),
        ("empty", lambda t: b"", "not JSON"),
        ("list", lambda t: b"[1, 2]", "not a hw_regression state file"),
        ("no chunks", edit(lambda s: s.pop("chunks")), "no settings or chunks"),
        ("unknown chunk", edit(lambda s: s["chunks"].update({"verilator px8 0": {}})),
         "unknown chunk"),
        ("rows of another chunk", edit(lambda s: first(s)["rows"].reverse()),
         "are not its layers"),
        ("row without exact", edit(lambda s: first(s)["rows"][0].pop("exact")), "lacks"),
        ("seconds missing", edit(lambda s: first(s).pop("seconds")), "no rows or seconds"),
    ]


@pytest.mark.parametrize("what,corrupt,msg", _corrupt_variants(),
                         ids=[v[0] for v in _corrupt_variants()])
def test_corrupt_state_is_one_error_line(fake, run, tmp_path, one_line_error, what, corrupt,
                                         msg, interrupted):
    out = tmp_path / "soak.json"
    interrupted(out)
    sf = tmp_path / "soak.state.json"
    sf.write_bytes(corrupt(sf.read_bytes()))
    line = one_line_error(run(*ARGS, "--out", out, "--resume"))
    assert msg in line and "soak.state.json" in line
    assert not fake.calls


def test_state_file_that_is_a_folder(fake, run, tmp_path, one_line_error):
    (tmp_path / "soak.state.json").mkdir()
    line = one_line_error(run(*ARGS, "--out", tmp_path / "soak.json", "--resume"))
    assert "folder" in line and not fake.calls


def test_max_minutes_stops_after_the_crossing_chunk_and_continues(fake, run, reference,
                                                                   tmp_path, capsys, monkeypatch):
    ref, ref_calls = reference
    fake.seconds = 25.0
    out = tmp_path / "soak.json"
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert run(*ARGS, "--out", out, "--max-minutes", "1") == 0
    assert len(fake.calls) == 3                    # 25, 50, 75 s: the third crosses 60 s
    state = json.loads((tmp_path / "soak.state.json").read_text())
    assert len(state["chunks"]) == 3 and not out.exists()
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("stopped after 0:01:15 (--max-minutes 1): 3 of ")
    cmd = shlex.split(last.split("continue with: ", 1)[1])
    assert cmd[0] == "python"
    assert Path(cmd[1]).resolve() == BENCH / "hw_regression.py" and cmd.count("--resume") == 1
    fake.calls.clear()
    fake.seconds = 1.0
    assert run(*cmd[2:]) == 1                     # the printed command finishes the run
    assert fake.calls == ref_calls[3:]
    assert _report(out) == ref


def test_max_minutes_zero_runs_one_chunk_per_slice(fake, run, reference, tmp_path):
    ref, ref_calls = reference
    out = tmp_path / "soak.json"
    slices = 0
    while not out.exists():
        assert run(*ARGS, "--out", out, "--resume", "--max-minutes", "0") in (0, 1)
        slices += 1
        assert slices <= len(ref_calls)
    assert slices == len(ref_calls) and fake.calls == ref_calls
    assert _report(out) == ref


def test_bad_max_minutes(fake, run, tmp_path, one_line_error):
    line = one_line_error(run(*ARGS, "--out", tmp_path / "o.json", "--max-minutes", "-1"))
    assert "--max-minutes" in line


def test_px_choice_the_engine_refuses(fake, run, tmp_path, one_line_error):
    # the distribution register needs Px > 1: Px = 1 is one error line, not a traceback
    line = one_line_error(run("--layers", "2", "--pes", "16x2", "--lanes", "4",
                              "--px-choices", "1", "2", "--dist-reg",
                              "--out", tmp_path / "o.json"))
    assert "--px-choices 1" in line and "dist_reg" in line


def test_stale_temp_of_the_state_is_harmless(fake, run, reference, tmp_path, interrupted):
    ref, ref_calls = reference
    out = tmp_path / "soak.json"
    interrupted(out)
    stale = tmp_path / ".soak.state.json.tmp-abcd1234"   # a write killed half-way
    stale.write_bytes(b'{"kind": "kep hw_regr')
    assert run(*ARGS, "--out", out, "--resume") == 1
    assert not stale.exists() and _report(out) == ref


def test_results_table_reads_the_report_not_the_state(fake, run, tmp_path, interrupted,
                                                      bench_script):
    table = bench_script("results_table")
    runs = tmp_path / "runs"
    assert run(*ARGS, "--out", runs / "hw_regression_a.json") == 1
    interrupted(runs / "hw_regression_b.json")
    assert (runs / "hw_regression_b.state.json").exists()
    rows = [r for r in table.summary_rows(runs) if "random-layer RTL regression" in r]
    assert len(rows) == 1 and "hw_regression_a.json" in rows[0]
    assert "verilator, 12 layers, 1 not bit-exact, 1 mismatching outputs of" in rows[0]


def test_layer_hw_draws_wider_layers(hw, fake, run, monkeypatch, tmp_path):
    """--layer-hw passes the largest drawn map size on (the default draws up to 7) and is
    recorded in the report's settings; 0 is refused with one line."""
    seen = []
    real = hw.random_layers

    def spy(seed, n, params, **kw):
        seen.append(kw)
        return real(seed, n, params, **kw)

    monkeypatch.setattr(hw, "random_layers", spy)
    assert run(*ARGS, "--out", tmp_path / "a.json") == 1          # rand5 is not exact
    assert run(*ARGS, "--layer-hw", "20", "--out", tmp_path / "b.json") == 1
    assert seen == [{"max_hw": 7}, {"max_hw": 20}]
    assert run(*ARGS, "--layer-hw", "0", "--out", tmp_path / "c.json") == 2
