# SPDX-License-Identifier: Apache-2.0
"""Random-layer regression of the engine's Verilog (cocotb) against the golden model.

``python benchmarks/hw_regression.py --layers 200 --sim verilator icarus``
``--out runs/hw_regression.json``

Random shapes, strides, kernel sizes, K (0..k*k), ReLU/residual, dense mode and extreme
values, with random ``ready`` back-pressure; every output compared bit for bit. Every layer
also draws the split of the P PEs over output pixels, Px from ``--px-choices`` (default 1 2 4;
those with ``P % Px == 0`` and ``(P/Px) % G == 0``); the layers of each Px run on that engine.
Writes a JSON report with versions and machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time

from kep_hw.bench import cosim
from kep_hw.gateware.verilog import add_params_args, params_from_args
from kep_hw.testing import random_layers
from kep_common.errors import KepError, cli_errors
from kep_common.fileio import atomic_write_json, environment_info


@cli_errors
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=50, help="layers per simulation")
    ap.add_argument("--sim", nargs="+", default=["verilator"], choices=list(cosim.SIMULATORS))
    ap.add_argument("--stall", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/hw_regression.json")
    ap.add_argument("--px-choices", type=int, nargs="+", default=[1, 2, 4], metavar="PX",
                    help="Px values drawn per layer (those that split P evenly)")
    add_params_args(ap)
    args = ap.parse_args(argv)
    if args.layers < 1 or args.chunk < 1:
        raise KepError("--layers and --chunk must be >= 1")
    params = params_from_args(args)
    engines = {}
    for px in sorted(set(args.px_choices)):
        if px >= 1 and params.pes % px == 0 and (params.pes // px) % params.lanes == 0:
            engines[px] = dataclasses.replace(params, px=px)
    if not engines:
        raise KepError(f"no Px of {args.px_choices} splits P={params.pes} into multiples "
                       f"of G={params.lanes}")
    jobs = random_layers(args.seed, args.layers, params)
    rng = random.Random(args.seed)
    pxs = [rng.choice(sorted(engines)) for _ in jobs]
    report = {"environment": environment_info(), "params": dataclasses.asdict(params),
              "px_choices": sorted(engines), "seed": args.seed, "stall": args.stall,
              "layers": args.layers, "simulators": {}}
    total_bad = 0
    for sim in args.sim:
        t0 = time.time()
        rows = []
        for px, eng in engines.items():
            mine = [j for j, x in zip(jobs, pxs) if x == px]
            for start in range(0, len(mine), args.chunk):
                part = cosim.run_layers(eng, mine[start:start + args.chunk], sim=sim,
                                        stall=args.stall, seed=args.seed + 1000 * px + start)
                rows += [dict(r, px=px) for r in part]
        bad = [r["name"] for r in rows if not r["exact"]]
        total_bad += len(bad)
        report["simulators"][sim] = {
            "layers": len(rows), "not_exact": len(bad), "failed_layers": bad,
            "outputs": sum(r["outputs"] for r in rows),
            "layers_per_px": {str(px): sum(r["px"] == px for r in rows) for px in engines},
            "mismatches": sum(r["mismatches"] for r in rows),
            "seconds": round(time.time() - t0, 1), "rows": rows,
        }
        print(f"{sim}: {len(rows)} layers (Px: {report['simulators'][sim]['layers_per_px']}), "
              f"{len(bad)} not bit-exact, "
              f"{report['simulators'][sim]['outputs']} output transfers, "
              f"{report['simulators'][sim]['seconds']} s")
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 1 if total_bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
