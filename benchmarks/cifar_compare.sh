#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The CIFAR-10 comparison of the README: KEP (K=4) vs dense, L1 filter pruning and the no-penalty
# ablation, all at equal epochs from the same dense checkpoint. Then the results table.
#   usage: benchmarks/cifar_compare.sh [DATA_DIR] [OUT_ROOT] [extra options for every run]
# With TIMED=1 it also repeats the main job alone, uninterrupted, as r20-k4-timed: its wall time is
# the quick schedule's end-to-end time on this machine, and the results table checks that it
# reproduces r20-k4 epoch for epoch (same options, same seed).
set -euo pipefail
DATA=${1:-../shared/data/cifar10}
ROOT=${2:-runs}
shift $(( $# > 2 ? 2 : $# ))
run() { python -m kep_train cifar --data-dir "$DATA" --model resnet20 --schedule quick --seed 0 \
          --no-progress "$@"; }
# 1. the main job: dense -> KEP (reg + fine-tune) -> model.kep
[ -f "$ROOT/r20-k4/report.json" ] || run --out "$ROOT/r20-k4" --keep 4 --resume "$@"
DENSE="$ROOT/r20-k4/dense.pt"
# 2-4. same epochs after the dense stage, same learning rates
[ -f "$ROOT/r20-dense/report.json" ] || run --out "$ROOT/r20-dense" --method dense --pretrained "$DENSE" --resume "$@"
[ -f "$ROOT/r20-l1/report.json" ] || run --out "$ROOT/r20-l1" --method filter-l1 --keep 4 --pretrained "$DENSE" --resume "$@"
[ -f "$ROOT/r20-k4-nopen/report.json" ] || run --out "$ROOT/r20-k4-nopen" --keep 4 --no-penalty --pretrained "$DENSE" --resume "$@"
if [ "${TIMED:-0}" = 1 ] && [ ! -f "$ROOT/r20-k4-timed/report.json" ]; then
  rm -rf "$ROOT/r20-k4-timed"
  run --out "$ROOT/r20-k4-timed" --keep 4 "$@"
fi
python benchmarks/results_table.py "$ROOT"
