# SPDX-License-Identifier: Apache-2.0
"""The evidence sweep: KEP, its no-penalty ablation and the baselines over several budgets and
seeds, all fine-tuned from ONE dense ResNet-20 checkpoint at equal epochs and learning rates;
then the table and the figure.

    python benchmarks/sweep.py run --data-dir ../shared/data/cifar10 --runs runs/sweep [--dry-run]
    python benchmarks/sweep.py table --runs runs/sweep --out benchmarks/results/sweep.json \\
        --figure docs/img/sweep.png

The grid (``run``): methods kep, kep-nopen (``kep --no-penalty``), magnitude and filter-l1 at
uniform K = 2, 3, 4 kept elements per 3x3 plane; kep and kep-nopen at one per-layer budget
(``--target-macs 0.3``); a dense baseline trained for the same epochs; kep-late at K=2 and K=4
(KEP's schedule with the penalty held at 0: the cut where KEP cuts, after 2 reg epochs without
penalty, so that it fine-tunes its pruned network for as many epochs as KEP; kep-nopen cuts
before the reg stage and trains the pruned network 2 epochs longer). kep, kep-nopen and kep-late at
K=2 and K=4 and the dense baseline run every seed of ``--seeds`` (default 0,1,2; the dense
baseline's later seeds come last); every other cell runs the first seed only.
The dense checkpoint is trained once, as ``RUNS/dense-s{first seed}`` (or given with
``--dense``). Every run is one ``python -m kep_train cifar`` subprocess into ``RUNS/NAME``: a run
with a complete ``report.json`` is skipped, one with a ``checkpoint.pt`` but no report is
continued with ``--resume``; so the same command, run again, resumes a killed sweep. A sweep
whose run folders were lost goes on from its last table: ``--include
benchmarks/results/sweep.json`` (on ``run`` and ``table``) counts the runs recorded there as done.

Default schedule: the main job's recipe (the ``quick`` preset: learning-rate shapes, label
smoothing, penalty; ``docs/method.md``) with its 20 dense epochs but a shorter pruning stage
(``--reg-epochs 2 --finetune-epochs 4`` instead of 3 + 8) so that the grid fits: 31 runs x 6
epochs + 20 dense epochs = 206 epochs, about 5.7 h at ~100 s per epoch on 2 CPU cores (plus
~30 s per run of loading, significance and evaluation: about 6 h in all); with the main job's
``dense.pt`` as ``--dense`` about 5.4 h. ``--dry-run`` prints the plan and its estimate.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    from kep_common.errors import KepError, cli_errors
except ImportError:   # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from kep_common.errors import KepError, cli_errors

#: uniform budgets (elements kept per 3x3 plane)
KEEPS = (2, 3, 4)
#: (method, K) cells that run every seed; all others run the first seed only
MULTI_SEED = {("kep", 2), ("kep", 4), ("kep-nopen", 2), ("kep-nopen", 4),
              ("kep-late", 2), ("kep-late", 4)}
#: methods of the grid (kep-nopen = kep --no-penalty)
METHODS = ("kep", "kep-nopen", "magnitude", "filter-l1")
#: methods run at the per-layer MACs budget too
BUDGET_METHODS = ("kep", "kep-nopen")
#: kep-late (kep with --penalty-init 0 --penalty-step 0: no penalty, the cut where KEP cuts) at
#: these K, every seed (its first seed's runs come before the other seeds')
LATE_CUT_KEEPS = (2, 4)
LATE_CUT_ARGS = ("--penalty-init", "0", "--penalty-step", "0")
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_TARGET_MACS = 0.3
#: default epochs per stage; the dense stage is trained once, reg + finetune by every run
DEFAULT_DENSE_EPOCHS = 20
DEFAULT_REG_EPOCHS = 2
DEFAULT_FINETUNE_EPOCHS = 4
#: time estimate: seconds per epoch of ResNet-20 on 2 CPU cores, and per run outside epochs
SEC_PER_EPOCH = 100.0
OVERHEAD_S = 30.0

_METHOD_ORDER = {m: i for i, m in enumerate(("dense", "kep", "kep-nopen", "kep-late",
                                              "magnitude", "filter-l1"))}


# ------------------------------------------------------------------------------------------
# the grid

@dataclass
class Run:
    """One planned ``python -m kep_train cifar`` run."""

    name: str
    method: str                 # kep | kep-nopen | kep-late | magnitude | filter-l1 | dense |
    #                             dense-ckpt
    seed: int
    keep: int | None = None
    target_macs: float | None = None
    epochs: int = 0             # epochs this run trains
    command: list[str] = field(default_factory=list)
    action: str = "fresh"       # fresh | resume | skip | conflict
    note: str = ""

    @property
    def budget(self) -> str:
        return budget_label(self.keep, self.target_macs, self.method)


def budget_label(keep, target_macs, method) -> str:
    if method in ("dense", "dense-ckpt"):
        return "none"
    if target_macs is not None:
        return f"MACs {target_macs:g}"
    return f"K={keep}"


def run_name(method: str, seed: int, keep=None, target_macs=None) -> str:
    if method == "dense":
        return f"dense-eq-s{seed}"
    if method == "dense-ckpt":
        return f"dense-s{seed}"
    budget = f"macs{target_macs:g}" if target_macs is not None else f"k{keep}"
    return f"{method}-{budget}-s{seed}"


def grid(seeds=DEFAULT_SEEDS, target_macs=DEFAULT_TARGET_MACS) -> list[Run]:
    """The sweep's runs (the dense checkpoint not included), the runs the issue needs most
    first: the penalty ablation at K=4 and K=2 (first seed), the dense baseline, the baselines
    at K=4 and K=2, the other seeds of the ablation, the per-layer budget, then K=3."""
    seeds = list(seeds)
    s0, more = seeds[0], seeds[1:]
    runs: list[Run] = []

    def add(method, seed, keep=None, macs=None):
        runs.append(Run(run_name(method, seed, keep, macs), method, seed, keep, macs))

    for k in (4, 2):
        for m in ("kep", "kep-nopen"):
            add(m, s0, k)
    add("dense", s0)
    for k in (4, 2):
        for m in ("filter-l1", "magnitude"):
            add(m, s0, k)
    for s in more:
        for k in (4, 2):
            for m in ("kep", "kep-nopen"):
                if (m, k) in MULTI_SEED:
                    add(m, s, k)
    for m in BUDGET_METHODS:
        add(m, s0, macs=target_macs)
    for k in KEEPS:
        if k in (2, 4):
            continue
        for m in METHODS:
            for s in (seeds if (m, k) in MULTI_SEED else [s0]):
                add(m, s, k)
    # cells of MULTI_SEED not covered above (if KEEPS or MULTI_SEED are edited)
    names = {r.name for r in runs}
    for k in KEEPS:
        for m in METHODS:
            for s in (seeds if (m, k) in MULTI_SEED else [s0]):
                if run_name(m, s, k) not in names:
                    add(m, s, k)
    for s in seeds:
        for k in LATE_CUT_KEEPS:
            add("kep-late", s, k)
    # the dense baseline's other seeds (the gap to KEP is a mean over seeds too)
    for s in more:
        add("dense", s)
    return runs


# ------------------------------------------------------------------------------------------
# reports and decisions

def load_report(folder: Path) -> dict | None:
    """``folder/report.json`` if it is a complete report of a finished run, else None."""
    try:
        rep = json.loads((Path(folder) / "report.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rep, dict) or not rep.get("finished") or not rep.get("history"):
        return None
    top1 = rep.get("top1")
    if not isinstance(top1, dict) or not isinstance(top1.get("pruned"), (int, float)):
        return None
    if not isinstance(rep.get("args"), dict) or not isinstance(rep.get("totals"), dict):
        return None
    return rep


def _expected_args(run: Run, sched: dict, opts) -> dict:
    """The report ``args`` a finished run of ``run`` must have (the options that change it)."""
    exp = {"seed": run.seed, "subset": opts.subset, "test_subset": opts.test_subset}
    if run.method == "dense-ckpt":
        exp["method"] = "dense"
        exp["pretrained"] = None
        return exp
    exp.update(method="kep" if run.method.startswith("kep") else run.method,
               reg_epochs=sched["reg"], finetune_epochs=sched["finetune"])
    if run.method != "dense":
        exp["target_macs"] = run.target_macs
        if run.target_macs is None:
            exp["keep"] = run.keep
    if run.method.startswith("kep"):
        exp["no_penalty"] = run.method == "kep-nopen"
        late = run.method == "kep-late"
        exp["penalty_init"] = exp["penalty_step"] = 0.0 if late else None
    return exp


def _conflicts(report: dict, expected: dict) -> list[str]:
    args = report.get("args", {})
    out = []
    for k, v in expected.items():
        if k.startswith("_"):
            continue
        got = args.get(k)
        if k == "pretrained":
            if bool(got) != bool(v):
                out.append(f"--pretrained {'given' if got else 'not given'}")
        elif k in ("penalty_init", "penalty_step"):    # 0 is a value here, not "unset"
            if (got is None) != (v is None) or (got is not None and float(got) != v):
                out.append(f"--{k.replace('_', '-')} {got!r} (the sweep wants {v!r})")
        elif got != v and not (v in (None, 0, False) and got in (None, 0, False)):
            out.append(f"--{k.replace('_', '-')} {got!r} (the sweep wants {v!r})")
    if "_total" in expected:   # the dense checkpoint: its epochs in all
        sch = report.get("schedule") or {}
        total = sum(int(sch.get(f"{s}_epochs") or 0) for s in ("dense", "reg", "finetune"))
        if total != expected["_total"]:
            out.append(f"{total} dense epochs (the sweep wants {expected['_total']})")
    return out


def decide(run: Run, folder: Path, expected: dict | None = None) -> tuple[str, str]:
    """What to do with ``run`` in ``folder``: ``skip`` (a complete report), ``resume`` (a
    checkpoint without a complete report), ``fresh`` (neither) or ``conflict`` (a complete
    report made with other options than the sweep's); with a short reason."""
    folder = Path(folder)
    rep = load_report(folder)
    if rep is not None:
        bad = _conflicts(rep, expected) if expected else []
        if bad:
            return "conflict", "report.json made with " + ", ".join(bad)
        if run.method == "dense-ckpt" and not (folder / "dense.pt").is_file():
            return "conflict", "report.json but no dense.pt"
        return "skip", f"complete (top-1 {rep['top1']['pruned']:.2f} %)"
    if (folder / "checkpoint.pt").is_file():
        done = _epochs_done(folder)
        return "resume", f"checkpoint, {done} epoch(s) done" if done is not None else "checkpoint"
    return "fresh", ""


def _epochs_done(folder: Path) -> int | None:
    try:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return None
    n = 0
    for ln in lines:
        try:
            if json.loads(ln).get("stage") != "pretrained":
                n += 1
        except (ValueError, AttributeError):
            pass
    return n


def plan(opts) -> tuple[list[Run], Path, dict]:
    """The runs to do in order (the dense checkpoint first unless ``--dense``), each with its
    command and action; the dense checkpoint's path; the schedule."""
    root = Path(opts.runs)
    seeds = opts.seeds
    sched = {"dense": opts.dense_epochs, "reg": opts.reg_epochs, "finetune": opts.finetune_epochs}
    runs = grid(seeds, opts.target_macs)
    if opts.only:
        pats = [p.strip() for p in opts.only.split(",") if p.strip()]
        runs = [r for r in runs if any(fnmatch.fnmatchcase(r.name, p) or p in r.name
                                       for p in pats)]
    base = [sys.executable, "-m", "kep_train", "cifar", "--data-dir", str(opts.data_dir),
            "--model", "resnet20", "--schedule", "quick", "--no-progress"]
    for flag, val in (("--subset", opts.subset), ("--test-subset", opts.test_subset),
                      ("--threads", opts.threads), ("--device", opts.device)):
        if val:
            base += [flag, str(val)]
    if not opts.export:
        base.append("--no-export")
    base += shlex.split(opts.kep_args or "")
    if opts.dense:
        dense_ckpt = Path(opts.dense)
        todo: list[Run] = []
    else:
        ck = Run(run_name("dense-ckpt", seeds[0]), "dense-ckpt", seeds[0], epochs=sched["dense"])
        dense_ckpt = root / ck.name / "dense.pt"
        if sched["dense"] < 3:
            raise KepError("--dense-epochs must be at least 3 (the dense checkpoint is a "
                           "--method dense run of dense-epochs - 2 + 1 + 1 epochs)")
        # a --method dense run without --pretrained trains one cosine schedule over all three
        # stages' epochs as its dense stage and writes dense.pt at its end
        ck.command = base + ["--out", str(root / ck.name), "--method", "dense", "--seed",
                             str(ck.seed), "--dense-epochs", str(sched["dense"] - 2),
                             "--reg-epochs", "1", "--finetune-epochs", "1"]
        todo = [ck] if runs else []
    for r in runs:
        r.epochs = sched["reg"] + sched["finetune"]
        method = {"kep-nopen": "kep", "kep-late": "kep"}.get(r.method, r.method)
        cmd = base + ["--out", str(root / r.name), "--method", method, "--seed", str(r.seed),
                      "--dense-epochs", str(sched["dense"]), "--reg-epochs", str(sched["reg"]),
                      "--finetune-epochs", str(sched["finetune"]),
                      "--pretrained", str(dense_ckpt)]
        if r.method == "kep-nopen":
            cmd.append("--no-penalty")
        if r.method == "kep-late":
            cmd += list(LATE_CUT_ARGS)
        if r.target_macs is not None:
            cmd += ["--target-macs", f"{r.target_macs:g}"]
        elif r.keep is not None:
            cmd += ["--keep", str(r.keep)]
        r.command = cmd
        todo.append(r)
    recorded: dict[str, str] = {}
    for path in opts.include or []:
        for d in include_runs(path, set()):
            recorded.setdefault(d["name"], path)
    for r in todo:
        if r.name in recorded and load_report(root / r.name) is None:
            r.action, r.note = "skip", f"recorded in {recorded[r.name]}"
            continue
        exp = _expected_args(r, sched, opts)
        if r.method == "dense-ckpt":
            exp["_total"] = sched["dense"]
        r.action, r.note = decide(r, root / r.name, exp)
        if r.action == "resume":
            r.command = r.command + ["--resume"]
    return todo, dense_ckpt, sched


def estimate_s(run: Run, sec_per_epoch: float = SEC_PER_EPOCH,
               overhead_s: float = OVERHEAD_S) -> float:
    """Estimated seconds still needed by ``run`` (0 when it is skipped)."""
    if run.action in ("skip", "conflict"):
        return 0.0
    left = run.epochs
    if run.action == "resume":
        done = _epochs_done(Path(run.command[run.command.index("--out") + 1]))
        left = max(0, run.epochs - (done or 0))
    return left * sec_per_epoch + overhead_s


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def seeds_note(seeds) -> str:
    seeds = list(seeds)
    cells = ", ".join(f"{m} K={k}" for m, k in sorted(MULTI_SEED, key=lambda x: (x[1], x[0])))
    return (f"seeds {','.join(map(str, seeds))} for {cells}, dense; one seed ({seeds[0]}) for "
            "every other cell")


def print_plan(todo: list[Run], dense_ckpt: Path, sched: dict, opts) -> None:
    total_s = sum(estimate_s(r, opts.sec_per_epoch) for r in todo)
    full_s = sum(r.epochs * opts.sec_per_epoch + OVERHEAD_S for r in todo)
    n_epochs = sum(r.epochs for r in todo)
    print(f"# sweep: {len(todo)} runs ({sum(r.method != 'dense-ckpt' for r in todo)} from the "
          f"dense checkpoint {dense_ckpt}); {seeds_note(opts.seeds)}")
    print(f"# schedule: dense {sched['dense']} epochs (once), then reg {sched['reg']} + "
          f"finetune {sched['finetune']} epochs per run; {n_epochs} epochs in all")
    for i, r in enumerate(todo, 1):
        what = {"skip": "skip", "resume": "resume", "fresh": "run", "conflict": "CONFLICT"}
        note = f" ({r.note})" if r.note else ""
        print(f"# [{i}/{len(todo)}] {r.name}: {what[r.action]}{note}, {r.epochs} epochs, "
              f"~{estimate_s(r, opts.sec_per_epoch) / 3600:.2f} h")
        if r.action not in ("skip", "conflict"):
            print(shlex.join(r.command))
    print(f"# estimate: {total_s / 3600:.1f} h left of {full_s / 3600:.1f} h for the whole plan "
          f"(~{opts.sec_per_epoch:g} s per epoch on 2 CPU cores + ~{OVERHEAD_S:g} s per run)")


def run_sweep(opts) -> int:
    todo, dense_ckpt, sched = plan(opts)
    bad = [r for r in todo if r.action == "conflict"]
    if opts.dry_run:
        print_plan(todo, dense_ckpt, sched, opts)
        return 1 if bad else 0
    if bad:
        raise KepError("these run folders hold runs made with other options: "
                       + "; ".join(f"{r.name}: {r.note}" for r in bad)
                       + " (remove them or choose another --runs)")
    if opts.dense and not dense_ckpt.is_file():
        raise KepError(f"--dense {str(dense_ckpt)!r} is no file")
    Path(opts.runs).mkdir(parents=True, exist_ok=True)
    n = len(todo)
    t_start = time.time()
    done_s = done_epochs = 0.0
    failed, complete = [], 0
    log = lambda msg: print(f"[{_hms(time.time() - t_start)}] {msg}", file=sys.stderr,  # noqa
                            flush=True)
    log(f"sweep: {n} runs into {opts.runs}; {seeds_note(opts.seeds)}")
    for i, r in enumerate(todo, 1):
        if r.action == "skip":
            log(f"run {i}/{n} {r.name}: skipped, {r.note}")
            complete += 1
            continue
        rest = todo[i - 1:]
        if done_epochs:   # measured on this sweep's finished runs
            per_epoch = done_s / done_epochs
            eta = sum(estimate_s(x, per_epoch, 0.0) for x in rest)
            how = f"from {done_s / done_epochs:.0f} s per epoch measured"
        else:
            eta = sum(estimate_s(x, opts.sec_per_epoch) for x in rest)
            how = f"estimated at {opts.sec_per_epoch:g} s per epoch"
        log(f"run {i}/{n} {r.name}: {'resumed' if r.action == 'resume' else 'started'}; "
            f"elapsed {_hms(time.time() - t_start)}, ETA {_hms(eta)} ({how})")
        if r.method != "dense-ckpt" and not dense_ckpt.is_file():
            log(f"run {i}/{n} {r.name}: not started, no dense checkpoint {dense_ckpt}")
            failed.append(r.name)
            continue
        t0 = time.time()
        left = estimate_s(r, 1.0, 0.0)
        try:
            rc = subprocess.run(r.command).returncode
        except KeyboardInterrupt:
            log("interrupted: run the same command again to resume")
            return 130
        dt = time.time() - t0
        if rc == 0 and load_report(Path(opts.runs) / r.name) is not None:
            done_s += dt
            done_epochs += left
            complete += 1
            log(f"run {i}/{n} {r.name}: done in {_hms(dt)}")
        else:
            failed.append(r.name)
            log(f"run {i}/{n} {r.name}: FAILED (exit code {rc}) after {_hms(dt)}")
            if r.method == "dense-ckpt":
                break
    log(f"sweep: {complete} of {n} runs complete, {_hms(time.time() - t_start)}"
        + (f"; failed: {', '.join(failed)} (run the same command again to retry)"
           if failed else ""))
    return 0 if complete == n else 1


# ------------------------------------------------------------------------------------------
# aggregation

def describe(rep: dict) -> dict:
    """The numbers of one finished run that the table uses."""
    a = rep["args"]
    method = rep.get("method") or a.get("method")
    if method == "kep" and a.get("no_penalty"):
        method = "kep-nopen"
    elif method == "kep" and a.get("penalty_init") == 0 and a.get("penalty_step") == 0:
        method = "kep-late"
    role = "run"
    if method == "dense" and not a.get("pretrained"):
        role = "start"     # the dense checkpoint every other run starts from
    t = rep["totals"]
    cut = (rep.get("kep") or {}).get("cut") or {}
    sched = rep.get("schedule") or {}
    return {"method": method, "role": role, "seed": a.get("seed"),
            "keep": a.get("keep") if method != "dense" and a.get("target_macs") is None
            else None,
            "target_macs": a.get("target_macs") if method != "dense" else None,
            "top1": rep["top1"]["pruned"], "dense_top1": rep["top1"].get("dense"),
            "cut_top1": cut.get("test_top1"), "cut_masked_share": cut.get("masked_share"),
            "cut_stage": cut.get("stage"),
            "macs_kept": t["macs_kept"] / t["macs"] if t.get("macs") else None,
            "macs_removed": t.get("macs_reduction"),
            "pruned_layers_macs_removed": t.get("pruned_layers_macs_reduction"),
            "params_removed": t.get("params_reduction"),
            "epochs": [sched.get("dense_epochs"), sched.get("reg_epochs"),
                       sched.get("finetune_epochs")],
            "seconds": (rep.get("seconds") or {}).get("total")}


def stats(values: list) -> dict:
    """Mean and sample standard deviation (n - 1) of the values that are not None; std is None
    for fewer than two."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return {"mean": None, "std": None, "n": 0, "values": []}
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else None,
            "n": len(v), "values": v}


_FIELDS = ("top1", "cut_top1", "cut_masked_share", "macs_kept", "macs_removed",
           "pruned_layers_macs_removed", "params_removed", "seconds")


def collect(root: Path) -> tuple[list[dict], list[str]]:
    """Every finished run under ``root`` (``*/report.json``), described; and the folders whose
    report is missing or incomplete."""
    runs, unfinished = [], []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()) \
            if Path(root).is_dir() else []:
        rep = load_report(folder)
        if rep is None:
            if (folder / "report.json").exists() or (folder / "checkpoint.pt").exists():
                unfinished.append(folder.name)
            continue
        d = describe(rep)
        d["name"] = folder.name
        runs.append(d)
    return runs, unfinished


def _budget_sort(g):
    if g["method"] == "dense":
        return (0, 0.0)
    if g["target_macs"] is not None:
        return (2, -g["target_macs"])
    return (1, -g["keep"])


def group(runs: list[dict]) -> list[dict]:
    """Runs grouped by (method, K or MACs budget), with mean/std over their seeds; the dense
    checkpoint (role ``start``) is left out."""
    cells: dict[tuple, list[dict]] = {}
    for d in runs:
        if d["role"] != "run":
            continue
        cells.setdefault((d["method"], d["keep"], d["target_macs"]), []).append(d)
    out = []
    for (method, keep, macs), ds in cells.items():
        ds = sorted(ds, key=lambda d: (d["seed"] is None, d["seed"]))
        g = {"method": method, "budget": budget_label(keep, macs, method), "keep": keep,
             "target_macs": macs, "n": len(ds), "seeds": [d["seed"] for d in ds],
             "runs": [d["name"] for d in ds],
             "epochs": sorted({tuple(d["epochs"]) for d in ds}, key=str)}
        for f in _FIELDS:
            g[f] = stats([d[f] for d in ds])
        out.append(g)
    out.sort(key=lambda g: (_budget_sort(g), _METHOD_ORDER.get(g["method"], 99), g["method"]))
    return out


def _cell(st: dict, scale: float = 1.0, digits: int = 2, unit: str = "",
          zero_std: bool = True) -> str:
    """``mean ± std`` (the std left out for one seed, and with ``zero_std=False`` where all
    seeds agree: the costs of a uniform K)."""
    if st["mean"] is None:
        return "-"
    s = f"{scale * st['mean']:.{digits}f}"
    if st["std"] is not None and (zero_std or st["std"] > 1e-12):
        s += f" ± {scale * st['std']:.{digits}f}"
    return s + unit


def markdown(groups: list[dict]) -> list[str]:
    rows = ["| method | budget | seeds | top-1 (%) | after-cut top-1 (%) | masked share at cut | "
            "MACs kept | MACs removed | params removed |",
            "|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        n = g["top1"]["n"]
        seeds = "1 seed" if n == 1 else f"n={n}"
        rows.append(f"| {g['method']} | {g['budget']} | {seeds} | {_cell(g['top1'])} | "
                    f"{_cell(g['cut_top1'])} | {_cell(g['cut_masked_share'], 100, 1, ' %')} | "
                    f"{_cell(g['macs_kept'], 100, 1, ' %', False)} | "
                    f"{_cell(g['macs_removed'], 100, 1, ' %', False)} | "
                    f"{_cell(g['params_removed'], 100, 1, ' %', False)} |")
    return rows


_COLORS = {"kep": "tab:blue", "kep-nopen": "tab:orange", "kep-late": "tab:purple",
           "magnitude": "tab:green", "filter-l1": "tab:red", "dense": "black"}


def figure(groups: list[dict], path: Path) -> None:
    """Top-1 vs the fraction of MACs kept, one line per method over its uniform-K cells (error
    bars = standard deviation over seeds), the per-layer budget as separate stars, the
    after-cut accuracies as hollow markers, the dense baseline as a dashed line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from kep_common.fileio import atomic_path
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    methods = sorted({g["method"] for g in groups}, key=lambda m: _METHOD_ORDER.get(m, 99))
    handles = []

    def err(st):
        return st["std"] if st["std"] is not None else 0.0

    for m in methods:
        color = _COLORS.get(m)
        gs = [g for g in groups if g["method"] == m and g["macs_kept"]["mean"] is not None]
        if m == "dense":
            for g in gs:
                ax.axhline(g["top1"]["mean"], color=color, ls="--", lw=1)
                ax.errorbar([g["macs_kept"]["mean"]], [g["top1"]["mean"]],
                            yerr=[err(g["top1"])], fmt="s", color=color, capsize=3)
            handles.append(Line2D([], [], color=color, ls="--", marker="s",
                                  label="dense (same epochs)"))
            continue
        uni = sorted((g for g in gs if g["target_macs"] is None),
                     key=lambda g: g["macs_kept"]["mean"])
        bud = [g for g in gs if g["target_macs"] is not None]
        for sel, marker, ls, suffix in ((uni, "o", "-", "uniform K"),
                                        (bud, "*", "none", "per-layer budget")):
            if not sel:
                continue
            x = [g["macs_kept"]["mean"] for g in sel]
            ax.errorbar(x, [g["top1"]["mean"] for g in sel], yerr=[err(g["top1"]) for g in sel],
                        fmt=marker, ls=ls, color=color, capsize=3,
                        markersize=9 if marker == "*" else 6)
            cut = [(xx, g["cut_top1"]) for xx, g in zip(x, sel) if g["cut_top1"]["mean"]
                   is not None]
            if cut:
                ax.errorbar([c[0] for c in cut], [c[1]["mean"] for c in cut],
                            yerr=[err(c[1]) for c in cut], fmt=marker, ls="none", color=color,
                            mfc="none", capsize=2, alpha=0.8,
                            markersize=9 if marker == "*" else 6)
            handles.append(Line2D([], [], color=color, ls="-" if marker == "o" else "none",
                                  marker=marker, label=f"{m} ({suffix})"))
        for g in uni:
            if g["keep"] is not None:
                ax.annotate(f"K={g['keep']}", (g["macs_kept"]["mean"], g["top1"]["mean"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    handles += [Line2D([], [], color="gray", marker="o", ls="none", label="final (fine-tuned)"),
                Line2D([], [], color="gray", marker="o", mfc="none", ls="none",
                       label="right after the cut")]
    ax.set_xlabel("fraction of the network's MACs kept")
    ax.set_ylabel("CIFAR-10 test top-1 (%)")
    ax.set_title("ResNet-20: accuracy vs MACs kept (error bars: std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="best")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def include_runs(path: str, have: set[str]) -> list[dict]:
    """The finished runs recorded in an earlier table's JSON (``table --out``) whose names are
    not in ``have``: a sweep whose run folders were lost goes on from its last table. Each is
    marked with ``"from": path``."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise KepError(f"--include {path!r}: cannot read it ({e.strerror or e})")
    except ValueError as e:
        raise KepError(f"--include {path!r}: not JSON ({e})")
    runs = doc.get("runs") if isinstance(doc, dict) else None
    if not isinstance(runs, list):
        raise KepError(f"--include {path!r}: no 'runs' list (is it a sweep table's JSON?)")
    need = ("name", "method", "role", "seed", "top1", "epochs", *_FIELDS)
    out = []
    for i, d in enumerate(runs):
        if not isinstance(d, dict) or any(k not in d for k in need):
            raise KepError(f"--include {path!r}: run {i} lacks one of {', '.join(need)}")
        if d["name"] not in have:
            out.append({**d, "from": str(path)})
    return out


def table(opts) -> int:
    from kep_common.fileio import atomic_write_json, environment_info
    root = Path(opts.runs)
    runs, unfinished = collect(root)
    included = []
    for path in opts.include or []:
        more = include_runs(path, {d["name"] for d in runs})
        runs += more
        included += [(path, d["name"]) for d in more]
    groups = group(runs)
    starts = [d for d in runs if d["role"] == "start"]
    planned = [r.name for r in grid(opts.seeds, opts.target_macs)]
    have = {d["name"] for d in runs}
    missing = [n for n in planned if n not in have]
    lines = markdown(groups)
    notes = []
    for d in starts:
        notes.append(f"- dense checkpoint {d['name']}: top-1 {d['top1']:.2f} % after "
                     f"{sum(x or 0 for x in d['epochs'])} epochs")
    mixed = sorted({tuple(e) for g in groups for e in g["epochs"]}, key=str)
    if len(mixed) > 1:
        notes.append(f"- warning: the runs do not share one schedule (dense, reg, finetune "
                     f"epochs): {mixed}")
    notes.append(f"- {seeds_note(opts.seeds)}; mean ± sample standard deviation over seeds")
    for path in dict.fromkeys(p for p, _ in included):
        names = [n for p, n in included if p == path]
        notes.append(f"- {len(names)} runs taken from {path} (their folders are not under "
                     f"{root}): {', '.join(names)}")
    starts_top1 = sorted({d["dense_top1"] for d in runs
                          if d["role"] == "run" and d.get("dense_top1") is not None})
    if len(starts_top1) > 1:
        notes.append(f"- warning: the runs start from dense models of different test top-1 "
                     f"{starts_top1}: not one dense checkpoint")
    if missing:
        notes.append(f"- partial sweep: {len(missing)} of {len(planned)} planned runs left out "
                     f"(no complete report.json): {', '.join(missing)}")
    if unfinished:
        notes.append(f"- unfinished run folders: {', '.join(unfinished)}")
    print("\n".join(lines + [""] + notes))
    if opts.out:
        atomic_write_json(opts.out, {
            "runs_dir": str(root), "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "statistics": "mean and sample standard deviation (n - 1) over seeds; "
                          "std null where n = 1",
            "groups": groups, "runs": runs, "start": starts, "planned": planned,
            "missing": missing, "unfinished": unfinished, "included": opts.include or [],
            "environment": environment_info()})
        print(f"-> {opts.out}", file=sys.stderr)
    if opts.figure:
        if groups:
            figure(groups, Path(opts.figure))
            print(f"-> {opts.figure}", file=sys.stderr)
        else:
            print("warning: no finished run: no figure", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------
# command line

def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"need one or more distinct seeds: {text!r}")
    return seeds


def _fraction(text: str) -> float:
    v = float(text)
    if not (0 < v < 1) or math.isnan(v):
        raise argparse.ArgumentTypeError("a fraction in (0, 1)")
    return v


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[1:]))
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs", default="runs/sweep", help="sweep folder (default: runs/sweep)")
    common.add_argument("--seeds", type=_seeds, default=list(DEFAULT_SEEDS),
                        help="seeds of the multi-seed cells (kep, kep-nopen, kep-late at K=2, K=4; "
                             "the dense baseline); the first one for every other cell "
                             "(default: 0,1,2)")
    common.add_argument("--target-macs", type=_fraction, default=DEFAULT_TARGET_MACS,
                        help="per-layer MACs budget of kep/kep-nopen (default: 0.3)")
    common.add_argument("--include", metavar="JSON", action="append",
                        help="finished runs recorded in an earlier table's JSON (e.g. "
                             "benchmarks/results/sweep.json) whose folders are not under --runs: "
                             "run skips them, table takes them; repeatable")
    r = sub.add_parser("run", parents=[common], help="run (or resume) the sweep")
    r.add_argument("--data-dir", default="../shared/data/cifar10")
    r.add_argument("--dense", metavar="CKPT",
                   help="start every run from this dense checkpoint (e.g. runs/r20-k4/dense.pt)"
                        " instead of training RUNS/dense-s{seed}")
    r.add_argument("--only", metavar="PATTERN",
                   help="comma-separated glob patterns or substrings of run names "
                        "(e.g. 'kep*-k4-*')")
    r.add_argument("--dry-run", action="store_true",
                   help="print the plan (commands, skip/resume) and the time estimate")
    r.add_argument("--dense-epochs", type=int, default=DEFAULT_DENSE_EPOCHS,
                   help=f"epochs of the dense checkpoint (default {DEFAULT_DENSE_EPOCHS})")
    r.add_argument("--reg-epochs", type=int, default=DEFAULT_REG_EPOCHS,
                   help=f"reg epochs of every run (default {DEFAULT_REG_EPOCHS})")
    r.add_argument("--finetune-epochs", type=int, default=DEFAULT_FINETUNE_EPOCHS,
                   help=f"fine-tune epochs of every run (default {DEFAULT_FINETUNE_EPOCHS})")
    r.add_argument("--sec-per-epoch", type=float, default=SEC_PER_EPOCH,
                   help="for the estimate (default 100: ResNet-20 on 2 CPU cores)")
    r.add_argument("--subset", type=int, default=0, help="passed on (smoke runs)")
    r.add_argument("--test-subset", type=int, default=0, help="passed on (smoke runs)")
    r.add_argument("--threads", type=int, default=0, help="passed on")
    r.add_argument("--device", default=None, help="passed on")
    r.add_argument("--export", action="store_true", help="also write model.kep in every run")
    r.add_argument("--kep-args", default="", help="more options for every run (one string)")
    t = sub.add_parser("table", parents=[common], help="aggregate the finished runs")
    t.add_argument("--out", help="JSON output (e.g. benchmarks/results/sweep.json)")
    t.add_argument("--figure", help="PNG output (e.g. docs/img/sweep.png)")
    return p


@cli_errors
def main(argv=None) -> int:
    opts = parser().parse_args(argv)
    if opts.cmd == "run":
        for k in ("dense_epochs", "reg_epochs", "finetune_epochs"):
            if getattr(opts, k) < 1:
                raise KepError(f"--{k.replace('_', '-')} must be >= 1")
        return run_sweep(opts)
    return table(opts)


if __name__ == "__main__":
    sys.exit(main())
