# SPDX-License-Identifier: Apache-2.0
"""Print the README's results table (Markdown) from the runs' ``report.json`` files.

usage: python benchmarks/results_table.py [RUNS_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def training_rows(root: Path) -> list[str]:
    rows = ["| run | method | top-1 dense (%) | top-1 pruned (%) | MACs removed (whole net) | "
            "MACs removed (pruned 3x3 layers) | params removed | seconds |",
            "|---|---|---|---|---|---|---|---|"]
    for rep_path in sorted(root.glob("*/report.json")):
        r = _load(rep_path)
        if not r or "top1" not in r:
            continue
        t = r["totals"]
        method = r["method"] + (" (no penalty)" if r["args"].get("no_penalty") else "")
        rows.append(f"| {rep_path.parent.name} | {method} | {r['top1']['dense']:.2f} | "
                    f"{r['top1']['pruned']:.2f} | {100 * t['macs_reduction']:.1f} % | "
                    f"{100 * t['pruned_layers_macs_reduction']:.1f} % | "
                    f"{100 * t['params_reduction']:.1f} % | {r['seconds']['total']:.0f} |")
    return rows


def golden_rows(root: Path) -> list[str]:
    rows = ["| model | images | float top-1 (%) | int8 golden top-1 (%) | int8 - float (pt) | "
            "same prediction | seconds |", "|---|---|---|---|---|---|---|"]
    for path in sorted(root.glob("*/golden.json")):
        g = _load(path)
        if g and g.get("float_top1") is not None:
            rows.append(f"| {g['model']} | {g['images']} | {g['float_top1']:.2f} | "
                        f"{g['int8_top1']:.2f} | {g['diff_pt']:+.2f} | {g['agreement']:.2f} % | "
                        f"{g['int8_seconds']:.0f} |")
    return rows if len(rows) > 2 else []


def _pe_label(p: dict) -> str:
    px = p.get("px", 1)
    split = f" = {p['pes'] // px} channels x {px} pixels" if px > 1 else ""
    return f"P={p['pes']}{split}, G={p.get('lanes', 4)}"


def hw_rows(root: Path) -> list[str]:
    """A per-layer table for each engine configuration (Verilator runs first; a configuration
    seen on several simulators is shown once, the others are summary lines)."""
    rows, seen = [], set()
    paths = sorted(root.glob("*_model_*.json"), key=lambda q: ("verilator" not in q.name, q.name))
    for path in paths:
        h = _load(path)
        if not h or "layers" not in h:
            continue
        p = h["params"]
        config = (p["pes"], p.get("px", 1), p.get("lanes", 4), h["source"])
        if config in seen:
            continue
        seen.add(config)
        rows += [f"", f"RTL ({h['simulator']}, {_pe_label(p)}, {h['source']}): "
                 f"{len(h['layers'])} conv layers, {h['not_exact']} not bit-exact", "",
                 "| layer | Cin->Cout | input HxW | K | stride | exact | cycles | ideal | utilization | "
                 "model error | dense cycles | speed-up |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for ly in h["layers"]:
            dense = ly.get("dense_cycles")
            sp = ly.get("speedup")
            rows.append(f"| {ly['layer']} | {ly['cin']}->{ly['cout']} | {ly['hw'][0]}x{ly['hw'][1]}"
                        f" | {ly['K']} | {ly['stride']} | {'yes' if ly['exact'] else 'NO'} | "
                        f"{ly['cycles']} | {ly['ideal_cycles']:.0f} | "
                        f"{100 * ly['utilization']:.1f} % | {100 * ly['model_error']:.2f} % | "
                        f"{dense if dense else '-'} | {f'{sp:.2f}' if sp else '-'} |")
    return rows


def board_rows(root: Path) -> list[str]:
    """Bitstream builds (``python -m kep_hw.build ... --out RUNS/build-NAME``) and whole-system
    runs (``python -m kep_hw.run ... --out RUNS/system_*.json``)."""
    rows = []
    builds = [b for b in (_load(q) for q in sorted(root.glob("build-*/report.json")))
              if b and b.get("status") == "built"]
    if builds:
        rows += ["| board | P | weights | LUTs | FFs | DSPs | block RAMs | clock (MHz) | fmax (MHz) |"
                 " timing met | seconds |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for b in builds:
            u = b["utilisation"]
            cell = {k: f"{u[k]['used']} / {u[k]['available']}" for k in u}
            split = f" ({b['po']}x{b['px']})" if b.get("px", 1) > 1 else ""
            rows.append(f"| {b['board']} | {b['pes']}{split} | {b['weights']} | {cell['luts']} | "
                        f"{cell['ffs']} | {cell['dsps']} | {cell['brams']} | "
                        f"{b['freq_requested_mhz']:.0f} | {b['fmax_mhz']:.2f} | "
                        f"{'yes' if b['timing_met'] else 'NO'} | {b['seconds']:.0f} |")
    for q in sorted(root.glob("system*.json")):
        r = _load(q)
        if not r or "cycles_mean" not in r:
            continue
        clocks = sorted({b["freq_requested_mhz"] for b in builds if b["pes"] == r["pes"]
                         and b.get("px", 1) == r.get("px", 1) and b["timing_met"]})
        lat = "; ".join(f"{r['cycles_mean'] / (f * 1e3):.2f} ms at {f:.0f} MHz (ideal "
                        f"{r['ideal_cycles'] / (f * 1e3):.2f} ms)" for f in clocks)
        rows += ["", f"- whole system ({q.name}, {r['target']}, P={r['pes']}, {r['mode']} weights): "
                 f"{r['n']} images, board top-1 {100 * r['top1_board']:.1f} %, golden top-1 "
                 f"{100 * r['top1_golden']:.1f} %, {len(r['disagreements'])} disagreements, "
                 f"bit-exact last conv output: {r['bit_exact']}; {r['cycles_mean']:.0f} cycles per "
                 f"image (ideal {r['ideal_cycles']:.0f} = non-zero MACs / P, "
                 f"{100 * r['ideal_cycles'] / r['cycles_mean']:.1f} %)"
                 + (f"; latency {lat}" if lat else "")]
    return rows


_RUN_ONLY_ARGS = ("out", "resume", "no_progress", "threads", "device", "eval_every")


def _same_epoch(a: dict, b: dict) -> bool:
    """Same loss and accuracies in one epoch record; the test top-1 only where both runs
    evaluated it (``--eval-every``)."""
    tested = a.get("test_top1") is not None and b.get("test_top1") is not None
    return (a.get("train_loss"), a.get("train_top1")) == (b.get("train_loss"),
                                                          b.get("train_top1")) \
        and (not tested or a["test_top1"] == b["test_top1"])


def repeat_rows(root: Path) -> list[str]:
    """One line per pair of finished runs made with the same options and seed (not the same
    output folder): are their per-epoch metrics and final top-1 identical?"""
    runs = []
    for rep_path in sorted(root.glob("*/report.json")):
        r = _load(rep_path)
        if r and "args" in r and r.get("finished"):
            key = {k: v for k, v in r["args"].items() if k not in _RUN_ONLY_ARGS}
            runs.append((rep_path.parent.name, key, r))
    rows = []
    for i, (name_a, key_a, a) in enumerate(runs):
        for name_b, key_b, b in runs[i + 1:]:
            # an option that a run's version did not have yet counts as its default (off)
            if any(key_a.get(k) != key_b.get(k) and (key_a.get(k) or key_b.get(k))
                   for k in key_a.keys() | key_b.keys()):
                continue
            same = (len(a["history"]) == len(b["history"]) and a["top1"] == b["top1"]
                    and all(_same_epoch(ha, hb) for ha, hb in zip(a["history"], b["history"])))
            rows.append(f"- repeatability: {name_a} and {name_b} ran the same options and seed "
                        f"({len(a['history'])} epochs): identical loss/accuracy in every epoch and "
                        f"identical final top-1: {'yes' if same else 'NO'} (wall time "
                        f"{a['seconds']['total']:.0f} s vs {b['seconds']['total']:.0f} s)")
    return rows


def summary_rows(root: Path) -> list[str]:
    """One line each for the golden-model speed, the random-layer RTL regressions and repeated
    training runs."""
    rows = repeat_rows(root)
    g = _load(Path(__file__).parent / "results" / "golden_speed.json")
    if g:
        rows.append(f"- golden model speed (`benchmarks/golden_speed.py`): {g['images']} images in "
                    f"{g['best_wall_s']:.1f} s ({g['threads']} threads, {g['images_per_s']:.0f} "
                    f"images/s, bit-exact vs the int64 path: {g['bit_exact']}), model {g['model']}")
    for path in sorted(root.glob("hw_regression*.json")):
        h = _load(path)
        for sim, r in (h or {}).get("simulators", {}).items():
            rows.append(f"- random-layer RTL regression (`benchmarks/hw_regression.py`, {path.name}):"
                        f" {sim}, {r['layers']} layers, {r['not_exact']} not bit-exact, "
                        f"{r['mismatches']} mismatching outputs of {r['outputs']} transfers, "
                        f"ready stalls {100 * h['stall']:.0f} %, {r['seconds']:.0f} s")
    for path in sorted(root.glob("*_model_*.json")):
        h = _load(path)
        if h and "layers" in h:
            rows.append(f"- {h['simulator']} ({_pe_label(h['params'])}): {len(h['layers'])} conv "
                        f"layers of {h['source']}, "
                        f"{h['not_exact']} not bit-exact ({path.name})")
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else "runs")
    print("\n".join(training_rows(root) + [""] + golden_rows(root) + hw_rows(root) + [""]
                    + summary_rows(root) + [""] + board_rows(root)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
