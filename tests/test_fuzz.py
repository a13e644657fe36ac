# SPDX-License-Identifier: Apache-2.0
"""``benchmarks/fuzz.py``: a short fixed-seed run over every class of inputs finds nothing, and
the harness itself detects each kind of finding (traceback, crash, hang, silent acceptance,
messy refusal, false refusal)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

FUZZ = Path(__file__).resolve().parent.parent / "benchmarks" / "fuzz.py"


# Both tests run the fuzzer in a fresh process: it forks, which the pytest process (after torch
# computations in other tests, with OpenMP thread pools) must not do.

def test_short_fuzz_run_finds_nothing(tmp_path):
    out = tmp_path / "fuzz.json"
    r = subprocess.run([sys.executable, str(FUZZ), "--cases", "60", "--seed", "0",
                        "--deadline", "60", "--classes", "kep,checkpoint,profile,data",
                        "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    rep = json.loads(out.read_text())
    assert set(rep["counts"]) == {"kep", "checkpoint", "profile", "data"}
    assert sum(rep["counts"][c]["ok"] for c in rep["counts"]) == 60, rep["findings"]
    t = rep["total"]
    assert t["traceback"] == t["hang"] == t["silent"] == t["crash"] == 0, rep["findings"]
    assert r.returncode == 0, r.stdout + r.stderr
    # the cases really run both ways: some inputs accepted, some refused
    results = [m for m in rep["by_mutator"].values()]
    assert sum(m["accepted"] for m in results) > 0 and sum(m["refused"] for m in results) > 0
    assert "python" in rep["environment"] and "torch" in rep["environment"]


SELFTEST = textwrap.dedent('''
    import importlib.util, json, os, signal, sys, tempfile, time
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("fuzz", sys.argv[1])
    fz = importlib.util.module_from_spec(spec)
    sys.modules["fuzz"] = fz
    spec.loader.exec_module(fz)

    def two_lines():
        print("error: one", file=sys.stderr)
        print("error: two", file=sys.stderr)
        return 2

    def refuse():
        print("error: no", file=sys.stderr)
        return 2

    def boom():
        raise ValueError("escaped")

    RUNS = [("traceback", boom, fz.EITHER), ("hang", lambda: time.sleep(30), fz.EITHER),
            ("silent", lambda: 0, fz.REJECT), ("messy", two_lines, fz.EITHER),
            ("false_refusal", refuse, fz.ACCEPT), ("crash", lambda: os.kill(os.getpid(),
                                                                             signal.SIGSEGV),
                                                   fz.EITHER),
            ("ok", refuse, fz.REJECT), ("ok", lambda: 0, fz.ACCEPT)]

    @fz.register("selftest")
    class Selftest(fz.FuzzClass):
        needs_assets = False

        def case(self, rng, workdir):
            name, fn, expect = RUNS[int(workdir.name)]     # case folders are numbered
            return fz.Case(fn, expect, "selftest/" + name, name)

    with tempfile.TemporaryDirectory() as d:
        rep = fz.fuzz(len(RUNS), 0, ["selftest"], Path(d), deadline=3, progress=False)
    print(json.dumps(rep["by_mutator"]))
''')


def test_harness_detects_every_kind_of_finding():
    r = subprocess.run([sys.executable, "-c", SELFTEST, str(FUZZ)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    by = json.loads(r.stdout.strip().splitlines()[-1])
    for name, counts in by.items():
        expected = name.split("/", 1)[1]
        assert counts[expected] >= 1, (name, counts)
        assert sum(v for k, v in counts.items() if k not in ("accepted", "refused")) \
            == counts[expected], (name, counts)
