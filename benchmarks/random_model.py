# SPDX-License-Identifier: Apache-2.0
"""Write a ``.kep`` model with random weights and random KEP masks, for hardware measurements
that do not need a trained model.

    python benchmarks/random_model.py [--model resnet20] [--keep 4] [--seed 0]
        [--out runs/r20-k4-random.kep]

The model has the layer shapes of zoo model ``--model`` (``kep_train.models``), K = ``--keep``
kept elements in every plane of its k x k convs but the first (dense, as in a KEP-pruned model),
random BN statistics and int8 quantization calibrated on random inputs
(``kep_train.testing.random_kep``). The engine's cycles, the bitstream's resources and its
routing depend on the shapes and K only, so a build or an RTL simulation of this file measures
what one of a trained model of the same shapes would (the predictions are meaningless; every
output is still compared bit for bit with the golden model). Deterministic given ``--seed``;
written atomically.
"""

from __future__ import annotations

import argparse
import sys

from kep_common.errors import KepError, cli_errors


@cli_errors
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20",
                    help="zoo model whose shapes to use (default resnet20)")
    ap.add_argument("--keep", type=int, default=4,
                    help="K, kept elements per pruned plane (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="seed of weights and masks (default 0)")
    ap.add_argument("--out", default="runs/r20-k4-random.kep", help="output .kep file")
    args = ap.parse_args(argv)
    from kep_train.export.kepfile import save_kep
    from kep_train.models import CIFAR_MODELS
    from kep_train.testing import random_kep
    if args.model not in CIFAR_MODELS:
        raise KepError(f"unknown model {args.model!r}; choose from "
                       f"{', '.join(sorted(CIFAR_MODELS))}")
    if args.seed < 0:
        raise KepError(f"--seed must be >= 0, got {args.seed}")
    kep = random_kep(args.model, K=args.keep, seed=args.seed)
    save_kep(args.out, kep)
    print(f"wrote {args.out}: {args.model}, random weights, K={args.keep}, seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
