# SPDX-License-Identifier: Apache-2.0
"""Run conv layers on the RTL (cocotb + Verilator or Icarus) and report exactness and speed.

``python -m kep_hw.sim --model model.kep [--layer NAME] [--sim verilator|icarus] [--pes P[xPX]]``
runs the conv layers of a ``.kep`` model (inputs from the golden network run on a seeded random
image) and prints per layer: bit-exact yes/no, cycles, ideal cycles (non-zero MACs / P),
utilization, the cycle model's prediction, and the dense-mode cycles of the same layer.
``--resnet20`` does the same with random weights of ResNet-20's layer shapes, ``--random N``
runs the random-layer regression with back-pressure. ``--json`` writes the report.
``--pes 64x4 --lanes 8`` (or ``--pes 64 --px 4``): 64 PEs as Px = 4 output pixels x Po = 16
output channels, 8 channels per activation word.

Progress on stderr while it runs: the simulator build's start and end, then one line per layer
as the simulation finishes it (name, exact or not, cycles, seconds), each with the elapsed time;
``--quiet`` keeps only warnings and errors, ``--verbose`` also streams the simulator's output.
The table of results is printed on stdout at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import torch

from kep_common.errors import KepError, cli_errors
from kep_common.fileio import atomic_write_json, environment_info
from kep_common.log import add_logging_args, setup_logging, verbosity

from kep_hw.bench import cosim
from kep_hw.host.driver import LayerJob, dense_job
from kep_hw.gateware.params import EngineParams
from kep_hw.gateware.perf import ideal_cycles, layer_cycles, useful_macs
from kep_hw.gateware.verilog import add_params_args, params_from_args
from kep_hw.testing import random_job, random_layers

__all__ = ["model_jobs", "resnet20_jobs", "run_report", "main"]


def model_jobs(path: str, layer: str | None = None, seed: int = 0,
               data_dir: str | None = None, image: int = 0) -> list[LayerJob]:
    """One job per conv layer of a ``.kep`` model, fed with the golden network's activations.

    The network input is test image ``image`` of the CIFAR-10 folder ``data_dir`` when given,
    else a seeded random int8 tensor of the model's input shape.

    Raises
    ------
    KepError
        If the file is bad or ``layer`` is not a conv layer of the model.
    """
    from kep_train.golden.evaluate import run_network
    from kep_train.export.kepfile import load_kep
    kep = load_kep(path)
    convs = kep.conv_layers
    if layer is not None:
        names = [cl.name for cl in convs]
        if layer not in names:
            raise KepError(f"no conv layer {layer!r} in {path} (have: {', '.join(names)})")
    if data_dir is not None:
        from kep_train.golden.evaluate import load_test_images, quantize_input
        images, _ = load_test_images(data_dir)
        if not 0 <= image < len(images):
            raise KepError(f"--image {image} outside [0, {len(images)})")
        x = quantize_input(kep, images[image:image + 1])
    else:
        gen = torch.Generator().manual_seed(seed)
        shape = tuple(kep.meta["input_shape"])
        x = torch.randint(-128, 128, (1, *shape), generator=gen, dtype=torch.int8)
    _, acts = run_network(kep, x, return_all=True)
    jobs = []
    for cl in convs:
        if layer is not None and cl.name != layer:
            continue
        values, index = cl.planes()
        res = acts[cl.residual][0] if cl.residual else None
        cout = values.shape[0]
        jobs.append(LayerJob(
            x=acts[cl.input][0], values=values, index=index,
            bias=cl.bias.to(torch.int64), mult=cl.mult.to(torch.int64),
            shift=cl.shift.to(torch.int64),
            res_mult=(cl.res_mult.to(torch.int64) if res is not None
                      else torch.zeros(cout, dtype=torch.int64)),
            k=cl.kernel_size, stride=cl.stride, pad=cl.padding, relu=cl.relu, residual=res,
            name=cl.name))
        # the network's own output of this layer must be what the job's golden gives
        from kep_hw.host.driver import golden
        if not torch.equal(golden(jobs[-1]), acts[cl.name][0]):
            raise KepError(f"layer {cl.name}: golden layer and network run disagree")
    return jobs


def resnet20_jobs(seed: int = 0, kept: int = 4) -> list[LayerJob]:
    """Random layers with ResNet-20's conv shapes (CIFAR-10, 32x32): the first 3x3 layer dense,
    the others K=``kept``, the two 1x1 stride-2 shortcuts as K=1, residual on every block's
    second conv."""
    gen = torch.Generator().manual_seed(seed)
    jobs = [random_job(gen, cin=3, cout=16, h=32, w=32, kept=9, name="conv1")]
    cin, hw = 16, 32
    for stage, cout in enumerate((16, 32, 64), start=1):
        for block in range(3):
            stride = 2 if (block == 0 and stage > 1) else 1
            pre = f"layer{stage}.{block}"
            jobs.append(random_job(gen, cin=cin, cout=cout, h=hw, w=hw, kept=kept,
                                   stride=stride, name=f"{pre}.conv1"))
            if stride == 2:
                jobs.append(random_job(gen, cin=cin, cout=cout, h=hw, w=hw, k=1, kept=1,
                                       stride=2, pad=0, relu=False,
                                       name=f"{pre}.shortcut"))
                hw //= 2
            jobs.append(random_job(gen, cin=cout, cout=cout, h=hw, w=hw, kept=kept,
                                   residual=True, name=f"{pre}.conv2"))
            cin = cout
    return jobs


def run_report(params: EngineParams, jobs: list[LayerJob], *, sim: str | None = None,
               dense: bool = True, stall: float = 0.0, seed: int = 0) -> list[dict]:
    """Run ``jobs`` (and their dense-mode twins) in one simulation; per-layer report rows."""
    runs = []
    for job in jobs:
        runs.append(job)
        if dense and not job.dense and job.kept < job.k * job.k:
            runs.append(dense_job(job))
    res = cosim.run_layers(params, runs, sim=sim, stall=stall, seed=seed)
    by_name = {r["name"]: r for r in res}
    rows = []
    for job in jobs:
        r = by_name[job.name]
        shape = job.shape
        ideal = ideal_cycles(shape, params)
        pred = layer_cycles(shape, params)
        row = {
            "layer": job.name, "cin": job.cin, "cout": job.cout,
            "hw": list(job.x.shape[1:]), "k": job.k, "K": job.kept, "stride": job.stride,
            "exact": r["exact"], "mismatches": r["mismatches"], "outputs": r["outputs"],
            "cycles": r["cycles"], "ideal_cycles": ideal,
            "utilization": useful_macs(shape) / (params.pes * r["cycles"]),
            "model_cycles": pred, "model_error": (r["cycles"] - pred) / pred,
        }
        d = by_name.get(job.name + ":dense")
        if d is not None:
            row["dense_exact"] = d["exact"]
            row["dense_cycles"] = d["cycles"]
            row["speedup"] = d["cycles"] / r["cycles"]
            row["speedup_target"] = 0.9 * job.k * job.k / max(job.kept, 1)
        rows.append(row)
    return rows


def _print(params: EngineParams, rows: list[dict]) -> None:
    print(f"P = {params.pes} PEs (Po = {params.po} output channels x Px = {params.px} pixels), "
          f"G = {params.lanes}")
    print(f"{'layer':24s} {'exact':5s} {'cycles':>8s} {'ideal':>8s} {'util':>6s} "
          f"{'model':>8s} {'err%':>6s} {'dense':>8s} {'speedup':>7s}")
    for r in rows:
        dense = f"{r['dense_cycles']:8d}" if "dense_cycles" in r else f"{'-':>8s}"
        sp = f"{r['speedup']:7.2f}" if "speedup" in r else f"{'-':>7s}"
        print(f"{r['layer']:24s} {'yes' if r['exact'] else 'NO':5s} {r['cycles']:8d} "
              f"{r['ideal_cycles']:8.0f} {r['utilization']:6.1%} {r['model_cycles']:8d} "
              f"{100 * r['model_error']:6.2f} {dense} {sp}")


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2 and one ``error: ...`` line on a bad option."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def _check_args(args) -> float:
    """Validate the numeric options (one :class:`KepError` each); returns the stall rate."""
    if (args.layer or args.data_dir) and not args.model:
        raise KepError("--layer and --data-dir need --model")
    if args.random is not None and args.random < 1:
        raise KepError(f"--random must be >= 1, got {args.random!r}")
    if not 1 <= args.kept <= 9:
        raise KepError(f"--kept must lie in [1, 9] (elements kept of a 3x3 kernel), got "
                       f"{args.kept!r}")
    if args.image < 0:
        raise KepError(f"--image must be >= 0, got {args.image!r}")
    if args.seed < 0:
        raise KepError(f"--seed must be >= 0, got {args.seed!r}")
    stall = args.stall if args.stall is not None else (0.3 if args.random else 0.0)
    if not (math.isfinite(stall) and 0.0 <= stall < 1.0):
        raise KepError(f"--stall must lie in [0, 1), got {stall!r}")
    return stall


@cli_errors
def main(argv=None) -> int:
    """Command line (see the module docstring)."""
    ap = _Parser(prog="python -m kep_hw.sim", description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help=".kep model file")
    src.add_argument("--resnet20", action="store_true",
                     help="random weights with ResNet-20's conv shapes")
    src.add_argument("--random", type=int, metavar="N", help="N random layers (regression)")
    ap.add_argument("--layer", help="only this conv layer of --model")
    ap.add_argument("--data-dir", help="CIFAR-10 folder: feed --model with a real test image")
    ap.add_argument("--image", type=int, default=0, help="test image index for --data-dir")
    ap.add_argument("--sim", choices=list(cosim.SIMULATORS), default=None,
                    help="simulator (default: env SIM, else verilator)")
    ap.add_argument("--kept", type=int, default=4, help="K for --resnet20 (1-9, default 4)")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense-mode runs")
    ap.add_argument("--stall", type=float, default=None,
                    help="probability of ready low per cycle (default 0, 0.3 for --random)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the report here")
    add_params_args(ap)
    add_logging_args(ap)
    args = ap.parse_args(argv)
    setup_logging(verbosity(args))
    params = params_from_args(args)
    stall = _check_args(args)
    if args.model:
        jobs = model_jobs(args.model, args.layer, seed=args.seed, data_dir=args.data_dir,
                          image=args.image)
    elif args.resnet20:
        jobs = resnet20_jobs(args.seed, kept=args.kept)
    else:
        jobs = random_layers(args.seed, args.random, params)
    rows = run_report(params, jobs, sim=args.sim, dense=not (args.no_dense or args.random),
                      stall=stall, seed=args.seed)
    _print(params, rows)
    n_bad = sum(not r["exact"] or not r.get("dense_exact", True) for r in rows)
    print(f"{len(rows)} layers, {n_bad} not bit-exact")
    if args.json:
        atomic_write_json(args.json, {
            "environment": environment_info(), "params": dataclasses.asdict(params),
            "simulator": cosim.simulator_from_env(args.sim), "stall": stall,
            "seed": args.seed, "source": args.model or ("resnet20" if args.resnet20
                                                         else f"random:{args.random}"),
            "layers": rows, "not_exact": n_bad})
    return 1 if n_bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
