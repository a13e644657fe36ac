# SPDX-License-Identifier: Apache-2.0
"""Which packaged model fits which board, with embedded or streamed weights.

    python benchmarks/board_fit.py [--keep 4] [--boards ulx3s-85f,ulx3s-12f]
        [--out benchmarks/results/board_fit.json]

For every CIFAR-10 model of the zoo (``kep_train.models.CIFAR_MODELS``) a ``.kep`` with random
weights is made at K kept elements per pruned 3x3 plane (the shapes and K decide the fit, not the
values), planned for each board profile at the profile's default P, Px and lanes, and put
through the build's resource estimate (``kep_hw.board.build.estimate_resources``, the one
``python -m kep_hw.build`` uses to choose the weight mode) for embedded and for streamed weights.
The table goes to stdout, the rows to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from kep_common.errors import KepError, cli_errors
from kep_common.fileio import atomic_write_json, environment_info

RESULTS = Path(__file__).resolve().parent / "results"


def random_kep(name: str, keep: int):
    """A ``.kep`` of zoo model ``name`` with random weights, K = ``keep`` in its 3x3 convs."""
    from kep_train.export.kepfile import load_kep
    from kep_train.export.quantize import export_kep
    from kep_train.models import build_model
    torch.manual_seed(0)
    model = build_model(name, 10).eval()
    masks = {}
    for mname, mod in model.named_modules():
        if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (3, 3) and mod.in_channels > 3:
            w = mod.weight.detach()
            flat = w.abs().flatten(2)
            idx = flat.topk(keep, dim=2).indices
            mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(2, idx, True).view_as(w)
            with torch.no_grad():
                mod.weight.mul_(mask)
            masks[mname] = mask
    calib = torch.randn(8, 3, 32, 32)
    meta = {"model_name": name, "dataset": "cifar10", "num_classes": 10,
            "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.kep"
        export_kep(model, path, masks=masks, calib=calib, meta=meta)
        return load_kep(path)


@cli_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/board_fit.py",
                                description=__doc__.split("\n")[0])
    p.add_argument("--keep", type=int, default=4, help="K of the pruned 3x3 layers (1..9)")
    p.add_argument("--models", default=None,
                   help="comma-separated zoo names (default: every CIFAR-10 model)")
    p.add_argument("--boards", default="ulx3s-85f,ulx3s-12f",
                   help="comma-separated board profiles (default ulx3s-85f,ulx3s-12f)")
    p.add_argument("--out", default=str(RESULTS / "board_fit.json"))
    args = p.parse_args(argv)
    if not 1 <= args.keep <= 9:
        raise KepError(f"--keep must lie in [1, 9], got {args.keep}")
    from kep_hw.board.build import estimate_resources
    from kep_hw.board.profiles import load_board
    from kep_hw.system.plan import plan_network
    from kep_train.models import CIFAR_MODELS
    names = args.models.split(",") if args.models else list(CIFAR_MODELS)
    boards = [load_board(b) for b in args.boards.split(",")]
    rows = []
    print("| model | board | P | embedded: LUTs, DSPs, block RAMs | streamed: LUTs, DSPs, "
          "block RAMs | fits |")
    print("|---|---|---|---|---|---|")
    for name in names:
        kep = random_kep(name, args.keep)
        for board in boards:
            pes, px, lanes = board.default_pes, board.default_px, board.default_lanes
            plan = plan_network(kep, po=pes // px, lanes=lanes)
            est = {mode: estimate_resources(plan, streamed=mode == "streamed", px=px,
                                            rq_lanes=board.rq_lanes_for(lanes),
                                            lut_pes=board.default_lut_pes)
                   for mode in ("embedded", "streamed")}
            fits = [mode for mode in est if all(est[mode][k] <= getattr(board, k)
                                                for k in ("luts", "dsps", "brams"))]
            rows.append({"model": name, "board": board.name, "pes": pes, "px": px,
                         "lanes": lanes, "estimate": est, "fits": fits,
                         "budget": {k: getattr(board, k) for k in ("luts", "dsps", "brams")}})
            cell = {m: f"{e['luts']}, {e['dsps']}, {e['brams']}" for m, e in est.items()}
            print(f"| {name} | {board.name} | {pes} | {cell['embedded']} | {cell['streamed']} | "
                  f"{fits[0] if fits else 'no'} |", flush=True)
    atomic_write_json(args.out, {"keep": args.keep, "rows": rows,
                                 "environment": environment_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
