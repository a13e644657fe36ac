# SPDX-License-Identifier: Apache-2.0
"""Speed of the golden model: N images (default the 10,000 of the CIFAR-10 test set) through a
whole .kep network, against the 60 s budget on 2 CPU cores.

    python benchmarks/golden_speed.py --model model.kep --data-dir ../shared/data/cifar10

Without ``--model`` a randomly pruned ResNet-20 (K=4) is used; without ``--data-dir`` random
int8 inputs (the arithmetic does not depend on the pixels). The fast path is checked bit for
bit against the pure int64 reference (:func:`kep_train.testing.reference_network`) on a subset.
Writes ``benchmarks/results/golden_speed.json`` (with versions, machine and load average: the
CPU may be shared, so the process CPU time is reported next to the wall time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from kep_common.errors import KepError, cli_errors

RESULTS = Path(__file__).resolve().parent / "results"


@cli_errors
def main(argv=None) -> int:
    from kep_common.fileio import atomic_write_json, environment_info
    from kep_train.golden.evaluate import load_test_images, quantize_input, run_network
    from kep_train.export.kepfile import load_kep
    from kep_train.testing import random_kep, reference_network
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help=".kep file (default: random ResNet-20, K=4)")
    p.add_argument("--data-dir", help="CIFAR-10 folder (default: random int8 inputs)")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--check", type=int, default=50, help="images checked against int64 path")
    p.add_argument("--budget-s", type=float, default=60.0)
    p.add_argument("--out", default=str(RESULTS / "golden_speed.json"))
    args = p.parse_args(argv)
    if args.n < 1 or args.batch_size < 1 or args.threads < 1 or args.repeats < 1:
        raise KepError("--n, --batch-size, --threads and --repeats must be >= 1")
    torch.set_num_threads(args.threads)
    if args.model:
        kep = load_kep(args.model)
    else:
        kep = random_kep("resnet20", K=4, seed=0)
    if args.data_dir:
        images, _ = load_test_images(args.data_dir, train=False)
        images = images[:args.n]
    else:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (args.n, *kep.meta["input_shape"]), generator=g,
                               dtype=torch.uint8)
    n = images.shape[0]
    walls, cpus, preds = [], [], None
    for _ in range(args.repeats):
        cache: dict = {}
        t0, c0 = time.perf_counter(), time.process_time()
        out = []
        for s in range(0, n, args.batch_size):
            x = quantize_input(kep, images[s:s + args.batch_size])
            out.append(run_network(kep, x, _cache=cache).argmax(1))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        preds = torch.cat(out)
    m = min(args.check, n)
    x = quantize_input(kep, images[:m])
    t0 = time.perf_counter()
    ref = reference_network(kep, x)[kep.layers[-1].name]
    ref_s = time.perf_counter() - t0
    fast = run_network(kep, x)
    exact = bool(torch.equal(ref.to(torch.int64), fast.to(torch.int64)))
    if not exact or not torch.equal(fast.argmax(1), preds[:m]):
        raise KepError("the fast golden path differs from the int64 reference")
    wall = min(walls)
    report = {
        "model": args.model or "random resnet20 K=4", "images": n,
        "batch_size": args.batch_size, "threads": args.threads,
        "wall_s": walls, "cpu_s": cpus, "best_wall_s": wall,
        "mean_wall_s": statistics.mean(walls),
        "std_wall_s": statistics.stdev(walls) if len(walls) > 1 else 0.0,
        "images_per_s": n / wall, "scaled_to_10000_s": wall * 10000 / n,
        "budget_s": args.budget_s, "within_budget": wall * 10000 / n <= args.budget_s,
        "reference_int64_s_per_image": ref_s / m, "checked_images": m, "bit_exact": exact,
        "loadavg": os.getloadavg(), "environment": environment_info(),
    }
    atomic_write_json(args.out, report)
    print(f"golden model: {n} images in {wall:.1f} s wall ({min(cpus):.1f} s CPU, "
          f"{args.threads} threads, batch {args.batch_size}) = {n / wall:.0f} images/s; "
          f"10,000 images -> {wall * 10000 / n:.1f} s (budget {args.budget_s:.0f} s)")
    print(f"int64 reference path: {ref_s / m * 1000:.1f} ms/image; bit exact on {m} images; "
          f"load average {os.getloadavg()[0]:.1f}; report {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
