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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else "runs")
    print("\n".join(training_rows(root)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
