# SPDX-License-Identifier: Apache-2.0
"""Regenerate the plots of a finished training run from its ``report.json`` and
``checkpoint.pt`` (the same figures ``python -m kep_train cifar`` writes into ``--out``).

    python benchmarks/plots.py runs/r20-k4 --out docs/img/r20-k4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kep_common.errors import KepError, cli_errors
from kep_train.train.checkpoint import load_checkpoint
from kep_train.train.report import plot_accuracy, plot_kept_fraction, plot_kernel_heatmap


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="run folder holding report.json and checkpoint.pt")
    p.add_argument("--out", help="folder for the PNG files (default: the run folder)")
    args = p.parse_args(argv)
    run = Path(args.run)
    out = Path(args.out or run)
    try:
        report = json.loads((run / "report.json").read_text())
    except (OSError, ValueError) as e:
        raise KepError(f"cannot read {run / 'report.json'}: {e}") from None
    ck = load_checkpoint(run / "checkpoint.pt")
    out.mkdir(parents=True, exist_ok=True)
    plot_accuracy(report["history"], out / "accuracy.png")
    plot_kept_fraction(report["layers"], out / "kept_fraction.png")
    plot_kernel_heatmap(ck["masks"], out / "kernel_heatmap.png")
    for name in ("accuracy.png", "kept_fraction.png", "kernel_heatmap.png"):
        if (out / name).exists():
            print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
