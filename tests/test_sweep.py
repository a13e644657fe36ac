# SPDX-License-Identifier: Apache-2.0
"""``benchmarks/sweep.py`` without training: the grid and its per-seed layout, the skip /
resume / fresh decisions, the commands a sweep runs (kep_train replaced by a stub), and the
aggregation (grouping, mean and standard deviation, the Markdown table, the JSON, the figure)
over fake run folders."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest

@pytest.fixture(scope="module")
def sweep(bench_script):
    return bench_script("sweep")


def fake_report(folder: Path, method="kep", seed=0, keep=4, target_macs=None, no_penalty=False,
                top1=80.0, cut_top1=50.0, masked_share=0.1, macs_kept=450, params_kept=300,
                pretrained="dense.pt", reg=2, finetune=4, dense=20, finished=True,
                penalty_init=None, penalty_step=None):
    """A report.json shaped like kep_train's (only the fields the sweep reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    rep = {
        "args": {"method": method, "seed": seed, "keep": keep, "target_macs": target_macs,
                 "no_penalty": no_penalty, "pretrained": pretrained, "reg_epochs": reg,
                 "finetune_epochs": finetune, "dense_epochs": dense, "subset": 0,
                 "test_subset": 0, "penalty_init": penalty_init, "penalty_step": penalty_step},
        "schedule": {"dense_epochs": dense, "reg_epochs": reg, "finetune_epochs": finetune},
        "method": method,
        "top1": {"dense": 79.0, "pruned": top1},
        "kep": {"method": method} | ({"cut": {"stage": "reg", "test_top1": cut_top1,
                                              "masked_share": masked_share}}
                                     if method != "dense" else {}),
        "totals": {"macs": 1000, "macs_kept": macs_kept, "params": 500,
                   "params_kept": params_kept, "macs_reduction": 1 - macs_kept / 1000,
                   "params_reduction": 1 - params_kept / 500,
                   "pruned_layers_macs_reduction": 0.5},
        "seconds": {"total": 10.0},
        "history": [{"stage": "finetune", "epoch": 1, "test_top1": top1}],
    }
    if finished:
        rep["finished"] = "2025-01-01T00:00:00+0000"
    (folder / "report.json").write_text(json.dumps(rep))
    return rep


def plan_of(sweep, tmp_path, *extra):
    opts = sweep.parser().parse_args(["run", "--runs", str(tmp_path / "sw"), "--data-dir", "D",
                                      *extra])
    return sweep.plan(opts)


# -- the grid ---------------------------------------------------------------------------------

def test_grid_size_and_seed_layout(sweep, tmp_path):
    todo, dense_ckpt, sched = plan_of(sweep, tmp_path)
    assert len(todo) == 32          # the dense checkpoint + 31 runs from it
    assert todo[0].name == "dense-s0" and todo[0].method == "dense-ckpt"
    assert dense_ckpt == tmp_path / "sw" / "dense-s0" / "dense.pt"
    seeds = {}
    for r in todo[1:]:
        seeds.setdefault((r.method, r.budget), []).append(r.seed)
    multi = {(m, f"K={k}") for m in ("kep", "kep-nopen", "kep-late") for k in (2, 4)}
    multi.add(("dense", "none"))
    expected = {(m, f"K={k}") for m in ("kep", "kep-nopen", "magnitude", "filter-l1")
                for k in (2, 3, 4)}
    expected |= {("kep", "MACs 0.3"), ("kep-nopen", "MACs 0.3"), ("dense", "none"),
                 ("kep-late", "K=2"), ("kep-late", "K=4")}
    assert set(seeds) == expected
    for cell, s in seeds.items():
        assert sorted(s) == ([0, 1, 2] if cell in multi else [0]), cell
    # the runs the issue needs most come first: the penalty ablation at K=4, first seed
    assert [r.name for r in todo[1:3]] == ["kep-k4-s0", "kep-nopen-k4-s0"]
    # kep-late, its first seed before the others, then the dense baseline's later seeds
    assert [r.name for r in todo[-8:]] == ["kep-late-k2-s0", "kep-late-k4-s0", "kep-late-k2-s1",
                                           "kep-late-k4-s1", "kep-late-k2-s2", "kep-late-k4-s2",
                                           "dense-eq-s1", "dense-eq-s2"]
    # default schedule: 20 dense epochs once, 2 + 4 per run; about 6 h at 100 s per epoch
    assert sched == {"dense": 20, "reg": 2, "finetune": 4}
    assert sum(r.epochs for r in todo) == 20 + 31 * 6
    assert sum(sweep.estimate_s(r) for r in todo) == pytest.approx(206 * 100 + 32 * 30)


def test_commands_share_the_dense_checkpoint_and_epochs(sweep, tmp_path):
    todo, dense_ckpt, _ = plan_of(sweep, tmp_path, "--reg-epochs", "4", "--finetune-epochs", "6")
    for r in todo[1:]:
        c = r.command
        assert c[c.index("--pretrained") + 1] == str(dense_ckpt)
        assert c[c.index("--reg-epochs") + 1] == "4"
        assert c[c.index("--finetune-epochs") + 1] == "6"
        assert c[c.index("--out") + 1] == str(tmp_path / "sw" / r.name)
        assert c[c.index("--seed") + 1] == str(r.seed)
        assert ("--no-penalty" in c) == (r.method == "kep-nopen")
        late = r.method == "kep-late"     # the penalty held at 0: the cut where KEP cuts
        assert ("--penalty-init" in c and "--penalty-step" in c) == late
        if late:
            assert c[c.index("--penalty-init") + 1] == c[c.index("--penalty-step") + 1] == "0"
            assert c[c.index("--method") + 1] == "kep"
        assert "--resume" not in c      # nothing there yet: fresh runs
        if r.target_macs is not None:
            assert c[c.index("--target-macs") + 1] == "0.3" and "--keep" not in c
    dense = todo[0].command
    assert "--pretrained" not in dense and dense[dense.index("--method") + 1] == "dense"
    # one cosine schedule over --dense-epochs in all (dense - 2 + 1 + 1)
    assert [dense[dense.index(f) + 1] for f in ("--dense-epochs", "--reg-epochs",
                                                "--finetune-epochs")] == ["18", "1", "1"]


def test_other_seeds_and_only_and_given_dense(sweep, tmp_path):
    todo, _, _ = plan_of(sweep, tmp_path, "--seeds", "3,7")
    names = {r.name for r in todo}
    assert {"kep-k4-s3", "kep-k4-s7", "kep-nopen-k2-s7", "magnitude-k4-s3"} <= names
    assert "kep-k3-s7" not in names and "magnitude-k4-s7" not in names and "dense-s3" in names
    assert "dense-eq-s3" in names and "dense-eq-s7" in names
    assert len(todo) == 1 + 31 - 7      # two seeds instead of three in the 7 multi-seed cells
    ck = tmp_path / "given.pt"
    todo, dense_ckpt, _ = plan_of(sweep, tmp_path, "--only", "kep-k4-*", "--dense", str(ck))
    assert [r.name for r in todo] == ["kep-k4-s0", "kep-k4-s1", "kep-k4-s2"]
    assert dense_ckpt == ck and all(str(ck) in r.command for r in todo)


def test_dry_run_lists_commands_and_estimate(sweep, tmp_path, capsys):
    fake_report(tmp_path / "sw" / "kep-k4-s0")
    assert sweep.main(["run", "--dry-run", "--runs", str(tmp_path / "sw"),
                       "--data-dir", "D"]) == 0
    out = capsys.readouterr().out
    assert "32 runs" in out and "one seed (0)" in out and "seeds 0,1,2" in out
    cmds = [ln for ln in out.splitlines() if not ln.startswith("#")]
    assert len(cmds) == 31            # kep-k4-s0 is complete: no command
    assert not any(f"{tmp_path / 'sw' / 'kep-k4-s0'} " in c + " " for c in cmds)
    # 200 epochs left (kep-k4-s0's 6 done) and 31 runs' overhead; 6.0 h for the whole plan
    left = (206 - 6) * 100 + 31 * 30
    total = 206 * 100 + 32 * 30
    assert f"{left / 3600:.1f} h left of {total / 3600:.1f} h" in out
    assert all(shlex.split(c)[1:4] == ["-m", "kep_train", "cifar"] for c in cmds)


# -- skip / resume / fresh ------------------------------------------------------------------------

def test_skip_resume_fresh_decisions(sweep, tmp_path):
    root = tmp_path / "sw"
    fake_report(root / "kep-k4-s0")                                  # complete -> skip
    (root / "kep-nopen-k4-s0").mkdir(parents=True)
    (root / "kep-nopen-k4-s0" / "checkpoint.pt").write_bytes(b"x")   # checkpoint -> resume
    fake_report(root / "kep-k2-s0", keep=2, finished=False)         # incomplete, no ckpt
    (root / "kep-k2-s0" / "checkpoint.pt").unlink(missing_ok=True)
    fake_report(root / "kep-nopen-k2-s0", keep=2, no_penalty=True, finished=False)
    (root / "kep-nopen-k2-s0" / "checkpoint.pt").write_bytes(b"x")   # incomplete + ckpt
    todo, _, _ = plan_of(sweep, tmp_path)
    by = {r.name: r for r in todo}
    assert by["kep-k4-s0"].action == "skip"
    assert by["kep-nopen-k4-s0"].action == "resume"
    assert by["kep-nopen-k4-s0"].command[-1] == "--resume"
    assert by["kep-k2-s0"].action == "fresh" and "--resume" not in by["kep-k2-s0"].command
    assert by["kep-nopen-k2-s0"].action == "resume"
    assert by["magnitude-k4-s0"].action == "fresh"
    assert "--resume" not in by["magnitude-k4-s0"].command
    # the dense checkpoint: a complete report but no dense.pt is not usable
    fake_report(root / "dense-s0", method="dense", pretrained=None, dense=18, reg=1, finetune=1)
    todo, _, _ = plan_of(sweep, tmp_path)
    assert todo[0].action == "conflict"
    (root / "dense-s0" / "dense.pt").write_bytes(b"x")
    todo, _, _ = plan_of(sweep, tmp_path)
    assert todo[0].action == "skip"


def test_report_with_other_options_is_a_conflict(sweep, tmp_path, capsys):
    root = tmp_path / "sw"
    fake_report(root / "kep-k4-s0", keep=3)                # made with K=3
    fake_report(root / "kep-nopen-k4-s0", no_penalty=True, finetune=9)   # other epochs
    todo, _, _ = plan_of(sweep, tmp_path)
    by = {r.name: r for r in todo}
    assert by["kep-k4-s0"].action == "conflict" and "--keep 3" in by["kep-k4-s0"].note
    assert by["kep-nopen-k4-s0"].action == "conflict"
    assert "finetune-epochs" in by["kep-nopen-k4-s0"].note
    with pytest.raises(SystemExit) as e:
        sweep.main(["run", "--runs", str(root), "--data-dir", "D"])
    assert e.value.code == 2
    assert "kep-k4-s0" in capsys.readouterr().err


def test_run_calls_kep_train_only_for_unfinished_runs(sweep, tmp_path, monkeypatch, capsys):
    """kep_train replaced by a stub that writes a report: skipped runs are not started, a
    checkpoint is resumed, the dense checkpoint is trained first, a failure is reported."""
    root = tmp_path / "sw"
    fake_report(root / "kep-k4-s0")
    (root / "kep-nopen-k4-s0").mkdir(parents=True)
    (root / "kep-nopen-k4-s0" / "checkpoint.pt").write_bytes(b"x")
    calls = []

    class Done:
        def __init__(self, rc):
            self.returncode = rc

    def fake_run(cmd):
        out = Path(cmd[cmd.index("--out") + 1])
        calls.append((out.name, "--resume" in cmd))
        if out.name == "magnitude-k4-s0":
            return Done(1)
        seed = int(cmd[cmd.index("--seed") + 1])
        if out.name.startswith("dense-s"):
            fake_report(out, method="dense", seed=seed, pretrained=None, dense=18, reg=1,
                        finetune=1)
            (out / "dense.pt").write_bytes(b"x")
        else:
            assert Path(cmd[cmd.index("--pretrained") + 1]).is_file()
            fake_report(out, method=cmd[cmd.index("--method") + 1], seed=seed,
                        keep=int(cmd[cmd.index("--keep") + 1]) if "--keep" in cmd else 4,
                        target_macs=float(cmd[cmd.index("--target-macs") + 1])
                        if "--target-macs" in cmd else None,
                        no_penalty="--no-penalty" in cmd,
                        **({"penalty_init": 0.0, "penalty_step": 0.0}
                           if "--penalty-init" in cmd else {}))
        return Done(0)

    monkeypatch.setattr(sweep.subprocess, "run", fake_run)
    rc = sweep.main(["run", "--runs", str(root), "--data-dir", "D", "--only", "*-k4-s0,dense-eq*"])
    err = capsys.readouterr().err
    assert rc == 1     # magnitude-k4-s0 failed
    assert calls == [("dense-s0", False), ("kep-nopen-k4-s0", True), ("dense-eq-s0", False),
                     ("filter-l1-k4-s0", False), ("magnitude-k4-s0", False),
                     ("kep-late-k4-s0", False), ("dense-eq-s1", False), ("dense-eq-s2", False)]
    assert "run 2/9 kep-k4-s0: skipped" in err and "ETA" in err
    assert "magnitude-k4-s0: FAILED" in err and "8 of 9 runs complete" in err
    # the same command again: only the failed run is started
    calls.clear()
    monkeypatch.setattr(sweep.subprocess, "run", lambda cmd: (calls.append(cmd), Done(1))[1])
    assert sweep.main(["run", "--runs", str(root), "--data-dir", "D", "--only",
                       "*-k4-s0,dense-eq*"]) == 1
    assert len(calls) == 1 and str(root / "magnitude-k4-s0") in calls[0]


# -- aggregation ----------------------------------------------------------------------------------

def _fake_sweep(root: Path):
    fake_report(root / "dense-s0", method="dense", pretrained=None, top1=79.0, macs_kept=1000,
                params_kept=500)
    for s, top1, cut, share in ((0, 80.0, 50.0, 0.1), (1, 82.0, 60.0, 0.2), (2, 84.5, 70.0, 0.3)):
        fake_report(root / f"kep-k4-s{s}", seed=s, top1=top1, cut_top1=cut, masked_share=share)
    fake_report(root / "kep-nopen-k4-s0", no_penalty=True, top1=81.0, cut_top1=30.0,
                masked_share=0.5)
    fake_report(root / "filter-l1-k4-s0", method="filter-l1", top1=78.0, cut_top1=20.0,
                macs_kept=440, masked_share=0.7)
    fake_report(root / "kep-macs0.3-s0", keep=4, target_macs=0.3, top1=77.0, macs_kept=300)
    fake_report(root / "dense-eq-s0", method="dense", top1=83.0, macs_kept=1000,
                params_kept=500)
    fake_report(root / "kep-k2-s0", keep=2, finished=False)        # unfinished: left out


def test_grouping_mean_and_std(sweep, tmp_path):
    _fake_sweep(tmp_path)
    runs, unfinished = sweep.collect(tmp_path)
    assert unfinished == ["kep-k2-s0"]
    groups = sweep.group(runs)
    by = {(g["method"], g["budget"]): g for g in groups}
    assert set(by) == {("kep", "K=4"), ("kep-nopen", "K=4"), ("filter-l1", "K=4"),
                       ("kep", "MACs 0.3"), ("dense", "none")}   # the dense start left out
    k4 = by[("kep", "K=4")]
    assert k4["n"] == 3 and k4["seeds"] == [0, 1, 2]
    # by hand: mean 246.5 / 3; deviations -2.1667, -0.1667, 2.3333 -> sum of squares 10.1667
    assert k4["top1"]["mean"] == pytest.approx(82.1666667)
    assert k4["top1"]["std"] == pytest.approx(math.sqrt(10.1666667 / 2), rel=1e-6)
    assert k4["cut_top1"]["mean"] == pytest.approx(60.0)
    assert k4["cut_top1"]["std"] == pytest.approx(10.0)
    assert k4["cut_masked_share"]["mean"] == pytest.approx(0.2)
    assert k4["cut_masked_share"]["std"] == pytest.approx(0.1)
    assert k4["macs_kept"]["mean"] == pytest.approx(0.45)
    assert k4["macs_removed"]["mean"] == pytest.approx(0.55)
    assert k4["params_removed"]["mean"] == pytest.approx(0.4)
    one = by[("kep-nopen", "K=4")]
    assert one["n"] == 1 and one["top1"]["std"] is None and one["top1"]["mean"] == 81.0
    dense = by[("dense", "none")]     # the baseline only, not the checkpoint it starts from
    assert dense["n"] == 1 and dense["runs"] == ["dense-eq-s0"] and dense["top1"]["mean"] == 83.0
    assert dense["cut_top1"]["mean"] is None
    assert by[("kep", "MACs 0.3")]["macs_kept"]["mean"] == pytest.approx(0.3)
    # dense baseline first, then K=4 (kep, kep-nopen, filter-l1), then the MACs budget
    assert [(g["method"], g["budget"]) for g in groups] == [
        ("dense", "none"), ("kep", "K=4"), ("kep-nopen", "K=4"), ("filter-l1", "K=4"),
        ("kep", "MACs 0.3")]


def test_table_markdown_json_and_figure(sweep, tmp_path, capsys):
    _fake_sweep(tmp_path / "sw")
    out, fig = tmp_path / "res" / "sweep.json", tmp_path / "img" / "sweep.png"
    assert sweep.main(["table", "--runs", str(tmp_path / "sw"), "--out", str(out),
                       "--figure", str(fig)]) == 0
    text = capsys.readouterr().out
    rows = [ln for ln in text.splitlines() if ln.startswith("| kep | K=4")]
    assert len(rows) == 1
    assert "| n=3 | 82.17 ± 2.25 | 60.00 ± 10.00 | 20.0 ± 10.0 % | 45.0 % | 55.0 % | 40.0 % |" \
        in rows[0]
    nopen = [ln for ln in text.splitlines() if ln.startswith("| kep-nopen | K=4")][0]
    assert "| 1 seed | 81.00 | 30.00 |" in nopen and "±" not in nopen
    assert "dense checkpoint dense-s0: top-1 79.00 %" in text
    assert "partial sweep: 24 of 31 planned runs left out" in text and "kep-k2-s0" in text
    data = json.loads(out.read_text())
    assert len(data["groups"]) == 5 and "python" in data["environment"]
    assert "kep-k4-s1" not in data["missing"] and "kep-k2-s1" in data["missing"]
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.stat().st_size > 10_000


def test_table_of_an_empty_folder(sweep, tmp_path, capsys):
    fig = tmp_path / "f.png"
    assert sweep.main(["table", "--runs", str(tmp_path / "none"), "--figure", str(fig)]) == 0
    out = capsys.readouterr()
    assert "31 of 31 planned runs left out" in out.out
    assert not fig.exists() and "no figure" in out.err


def test_include_an_earlier_table_for_lost_run_folders(sweep, tmp_path, capsys, monkeypatch):
    """A sweep whose run folders are gone goes on from its last table's JSON: ``run --include``
    skips the runs recorded there, ``table --include`` takes them (a folder of the same name
    wins) and names them; a run from another dense start is flagged."""
    _fake_sweep(tmp_path / "old")
    old = tmp_path / "old.json"
    assert sweep.main(["table", "--runs", str(tmp_path / "old"), "--out", str(old)]) == 0
    root = tmp_path / "sw"
    fake_report(root / "kep-k4-s1", seed=1, top1=90.0)                  # a folder wins
    todo, _, _ = plan_of(sweep, tmp_path, "--include", str(old), "--dense", "d.pt")
    act = {r.name: (r.action, r.note) for r in todo}
    assert act["kep-k4-s0"] == ("skip", f"recorded in {old}")
    assert act["kep-k4-s1"][0] == "skip" and "complete" in act["kep-k4-s1"][1]
    assert act["kep-k2-s0"] == ("fresh", "")     # unfinished in the old sweep: not recorded
    assert sum(a == "skip" for a, _ in act.values()) == 7
    capsys.readouterr()
    out = tmp_path / "new.json"
    assert sweep.main(["table", "--runs", str(root), "--include", str(old), "--out",
                       str(out)]) == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    k4 = {(g["method"], g["budget"]): g for g in data["groups"]}[("kep", "K=4")]
    assert k4["top1"]["values"] == [80.0, 90.0, 84.5]
    src = {d["name"]: d.get("from") for d in data["runs"]}
    assert src["kep-k4-s1"] is None and src["kep-k4-s0"] == str(old)
    assert f"runs taken from {old}" in text and data["included"] == [str(old)]
    assert "different test top-1" not in text
    # a run fine-tuned from another dense model is flagged
    rep = json.loads((root / "kep-k4-s1" / "report.json").read_text())
    rep["top1"]["dense"] = 70.0
    (root / "kep-k4-s1" / "report.json").write_text(json.dumps(rep))
    assert sweep.main(["table", "--runs", str(root), "--include", str(old)]) == 0
    assert "different test top-1 [70.0, 79.0]" in capsys.readouterr().out
    # a file that is no table is one clear error
    bad = tmp_path / "bad.json"
    bad.write_text('{"groups": []}')
    with pytest.raises(SystemExit) as e:
        sweep.main(["table", "--runs", str(root), "--include", str(bad)])
    assert e.value.code != 0
    assert "no 'runs' list" in capsys.readouterr().err


def test_late_cut_ablation_is_told_apart(sweep, tmp_path):
    """kep-late (kep with the penalty held at 0) is its own cell in the table, and a kep report
    in its folder (or the reverse) is a conflict, not a finished run: 0 is a penalty value."""
    late = fake_report(tmp_path / "a", penalty_init=0.0, penalty_step=0.0, top1=70.0)
    plain = fake_report(tmp_path / "b", top1=71.0)
    assert sweep.describe(late)["method"] == "kep-late"
    assert sweep.describe(plain)["method"] == "kep"
    root = tmp_path / "sw"
    fake_report(root / "kep-late-k2-s0", keep=2)                         # no penalty args
    fake_report(root / "kep-k2-s0", keep=2, penalty_init=0.0, penalty_step=0.0)
    fake_report(root / "kep-late-k4-s0", keep=4, penalty_init=0.0, penalty_step=0.0)
    todo, _, _ = plan_of(sweep, tmp_path, "--only", "kep-late-*-s0,kep-k2-s0", "--dense", "d.pt")
    act = {r.name: r.action for r in todo}
    assert act == {"kep-k2-s0": "conflict", "kep-late-k2-s0": "conflict",
                   "kep-late-k4-s0": "skip"}
