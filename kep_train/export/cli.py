# SPDX-License-Identifier: Apache-2.0
"""``python -m kep_train export`` (checkpoint -> .kep) and ``python -m kep_train inspect``.

The inspect table counts storage the way the hardware holds it:

- **values**: one int8 byte per kept element (``Cout * Cin * K``); a kept element that
  quantized to 0 still counts.
- **indices**: ``ceil(log2(k*k))`` bits per kept element (4 bits for 3x3), packed LSB-first
  into bytes in ``[Cout, Cin, K]`` order (two 3x3 indices per byte, the first in the low
  nibble). Dense layers store no indices. (The ``.kep`` file itself keeps one uint8 per index.)
- **dense int8**: ``Cout * Cin * k * k`` bytes.
- **CSR**: the weight as a ``Cout x (Cin*k*k)`` matrix holding the same kept elements:
  int8 values + int16 column indices + int32 row pointers (``Cout + 1`` of them).

Per-channel bias/requantization words (bias, mult, shift, res_mult) are the same in every
variant and are not counted.
"""

from __future__ import annotations

import argparse
import math
import os

import torch

from kep_common.errors import KepError, cli_errors
from kep_common.fileio import check_output_file
from kep_common.log import add_logging_args, setup_logging, verbosity

__all__ = ["main", "inspect_main", "layer_table", "calibration_images"]


def calibration_images(data_dir, mean, std, *, n: int, seed: int = 0,
                       use_cache: bool = True) -> torch.Tensor:
    """``n`` normalized training images drawn without replacement (seeded), float32;
    ``use_cache`` reads/writes the decoded-image cache (:func:`kep_train.data.cifar.cache_dir`).

    Raises
    ------
    KepError
        Missing data folder or ``n < 1``.
    """
    from kep_train.data.cifar import normalize
    from kep_train.golden.evaluate import load_test_images
    if n < 1:
        raise KepError(f"need at least one calibration image, got {n}")
    images, _ = load_test_images(data_dir, train=True, use_cache=use_cache)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(images.shape[0], generator=g)[:n]
    return normalize(images[idx], mean, std)


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2 and one ``error: ...`` line on a bad option."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def _export_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m kep_train export",
                                description="write a compressed int8 .kep model from a "
                                            "training checkpoint")
    p.add_argument("--checkpoint", required=True, help="training checkpoint (.pt)")
    p.add_argument("--out", required=True, help="output .kep file")
    p.add_argument("--model", default=None, metavar="MODEL",
                   help="the checkpoint's model, needed (and checked) when it is your own "
                        "module.path:callable: a checkpoint never imports code by itself")
    p.add_argument("--strict-hw", action="store_true",
                   help="refuse (exit 2, no file written) a model that the kep_hw accelerator "
                        "cannot run, instead of warning about each such layer")
    p.add_argument("--data-dir", help="CIFAR-10 folder for calibration (default: the "
                   "checkpoint's data_dir argument)")
    p.add_argument("--calib-batches", type=int, default=4,
                   help="calibration batches of training images (default 4)")
    p.add_argument("--calib-batch-size", type=int, default=256)
    p.add_argument("--calib-method", default="percentile", choices=("percentile", "max"))
    p.add_argument("--percentile", type=float, default=99.99,
                   help="percentile of |x| per batch (method percentile), default 99.99")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration draw")
    p.add_argument("--no-cache", action="store_true",
                   help="neither read nor write the decoded-image cache ($KEP_CACHE, else "
                        "$XDG_CACHE_HOME/kep_toolkit, else ~/.cache/kep_toolkit)")
    add_logging_args(p)
    return p


@cli_errors
def main(argv: list[str] | None = None) -> int:
    """``python -m kep_train export --checkpoint CKPT --out model.kep``."""
    from kep_train.export.hardware import hardware_problems, strict_hw_message, warn_hardware
    from kep_train.export.quantize import kep_from_checkpoint
    from kep_train.train.checkpoint import check_model_arg, load_checkpoint
    args = _export_parser().parse_args(argv)
    setup_logging(verbosity(args))
    if args.calib_batches < 1 or args.calib_batch_size < 1:
        raise KepError("--calib-batches and --calib-batch-size must be >= 1")
    if not 0 < args.percentile <= 100:
        raise KepError(f"--percentile must lie in (0, 100], got {args.percentile}")
    if not 0 <= args.seed < 2**63:
        raise KepError(f"--seed must be an integer in [0, 2**63), got {args.seed}")
    check_output_file(args.out, "--out")
    ckpt = load_checkpoint(args.checkpoint)
    # before any work: a user model is rebuilt only from the --model given here
    check_model_arg(ckpt["model_name"], args.model, f"checkpoint {args.checkpoint!r}")
    data_dir = args.data_dir
    if data_dir is None:
        a = ckpt.get("args")
        data_dir = a.get("data_dir") if isinstance(a, dict) else None
        if data_dir is not None and not isinstance(data_dir, str):
            raise KepError(f"checkpoint {args.checkpoint!r}: args.data_dir is not a path")
    if not data_dir:
        raise KepError("--data-dir is required (calibration needs training images)")
    if not os.path.isdir(data_dir):
        raise KepError(f"data folder {data_dir!r} does not exist")
    for key in ("mean", "std"):
        if key not in ckpt:
            raise KepError(f"checkpoint {args.checkpoint!r} lacks {key!r}")
    calib = calibration_images(data_dir, ckpt["mean"], ckpt["std"],
                               n=args.calib_batches * args.calib_batch_size, seed=args.seed,
                               use_cache=not args.no_cache)
    del ckpt
    kep = kep_from_checkpoint(args.checkpoint, calib, method=args.calib_method,
                              percentile=args.percentile, model_spec=args.model)
    kep.meta["calibration"]["seed"] = args.seed
    problems = hardware_problems(kep)
    if problems and args.strict_hw:
        raise KepError(strict_hw_message(problems))
    from kep_train.export.kepfile import save_kep
    save_kep(args.out, kep)
    rows, total = layer_table(kep)
    print(f"wrote {args.out}: {len(kep.layers)} layers, {total['values_bytes']} value bytes + "
          f"{total['index_bytes']} index bytes ({100 * total['kep_vs_dense']:.1f} % of dense "
          f"int8), {os.path.getsize(args.out)} bytes on disk")
    warn_hardware(problems)     # the .kep stays valid for the golden model
    return 0


def layer_table(kep) -> tuple[list, dict]:
    """Per-layer storage rows and totals of a :class:`~kep_train.export.kepfile.KepModel`.

    Returns
    -------
    rows : list of dict
        One per layer: name, op, in/out shape, k, stride, K, nnz, values/index/dense/CSR
        bytes and ratios (see the module docstring for the counting rules).
    totals : dict
        Sums over weight layers and the overall ratios.
    """
    rows = []
    tot = dict(nnz=0, values_bytes=0, index_bytes=0, dense_bytes=0, csr_bytes=0)
    for ly in kep.layers:
        row = {"name": ly.name, "op": ly.op, "in_shape": list(ly.in_shape),
               "out_shape": list(ly.out_shape)}
        if ly.op in ("conv", "linear"):
            if ly.op == "conv":
                cout, cin, k = ly.out_shape[0], ly.in_shape[0], ly.kernel_size
                big_k, kk = ly.K, k * k
                row.update(k=k, stride=ly.stride, sparse=ly.sparse, K=big_k,
                           weight_shape=[cout, cin, k, k])
            else:
                cout, cin = ly.weight.shape
                big_k, kk = 1, 1
                row.update(k=None, stride=None, sparse=False, K=None, weight_shape=[cout, cin])
            nnz = cout * cin * big_k
            bits = math.ceil(math.log2(kk)) if (ly.op == "conv" and ly.sparse and kk > 1) else 0
            vbytes = nnz
            ibytes = (nnz * bits + 7) // 8
            dense = cout * cin * kk
            csr = nnz * (1 + 2) + (cout + 1) * 4
            row.update(nnz=nnz, index_bits=bits, values_bytes=vbytes, index_bytes=ibytes,
                       dense_bytes=dense, csr_bytes=csr,
                       index_vs_values=ibytes / vbytes if vbytes else 0.0,
                       kep_vs_dense=(vbytes + ibytes) / dense if dense else 0.0,
                       kep_vs_csr=(vbytes + ibytes) / csr if csr else 0.0)
            for key in tot:
                tot[key] += row[key]
        rows.append(row)
    kep_bytes = tot["values_bytes"] + tot["index_bytes"]
    tot.update(kep_bytes=kep_bytes,
               index_vs_values=tot["index_bytes"] / max(tot["values_bytes"], 1),
               kep_vs_dense=kep_bytes / max(tot["dense_bytes"], 1),
               kep_vs_csr=kep_bytes / max(tot["csr_bytes"], 1))
    return rows, tot


def _fmt_table(kep, rows, tot) -> str:
    head = (f"{'layer':<22}{'op':<8}{'weight':<16}{'s':>2}{'K':>3}{'nnz':>8}{'val B':>8}"
            f"{'idx B':>7}{'idx/val':>8}{'dense B':>9}{'CSR B':>9}{'/dense':>8}{'/CSR':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "nnz" not in r:
            shape = "x".join(map(str, r["out_shape"]))
            lines.append(f"{r['name']:<22}{r['op']:<8}{'-> ' + shape:<16}")
            continue
        ws = "x".join(map(str, r["weight_shape"]))
        lines.append(
            f"{r['name']:<22}{r['op']:<8}{ws:<16}{r['stride'] or '':>2}{r['K'] or '-':>3}"
            f"{r['nnz']:>8}{r['values_bytes']:>8}{r['index_bytes']:>7}"
            f"{100 * r['index_vs_values']:>7.1f}%{r['dense_bytes']:>9}{r['csr_bytes']:>9}"
            f"{100 * r['kep_vs_dense']:>7.1f}%{100 * r['kep_vs_csr']:>6.1f}%")
    lines.append("-" * len(head))
    lines.append(
        f"{'total':<22}{'':<8}{'':<16}{'':>2}{'':>3}{tot['nnz']:>8}{tot['values_bytes']:>8}"
        f"{tot['index_bytes']:>7}{100 * tot['index_vs_values']:>7.1f}%{tot['dense_bytes']:>9}"
        f"{tot['csr_bytes']:>9}{100 * tot['kep_vs_dense']:>7.1f}%"
        f"{100 * tot['kep_vs_csr']:>6.1f}%")
    lines.append("")
    lines.append(f"KEP storage = values + indices = {tot['kep_bytes']} bytes; indices are "
                 f"{100 * tot['index_vs_values']:.1f} % of the value bytes.")
    lines.append("values: int8, 1 byte per kept element; indices: ceil(log2(k*k)) bits each "
                 "(4 for 3x3), packed LSB-first, two per byte; dense layers have none.")
    lines.append("CSR: rows = output channels, int8 values + int16 column indices + int32 row "
                 "pointers, same kept elements. bias/mult/shift/res_mult not counted.")
    m = kep.meta
    lines.append(f"model {m.get('model_name', '?')} ({m.get('dataset', '?')}), format "
                 f"version {m.get('format_version', '?')}, KEP settings {m.get('kep', {})}")
    return "\n".join(lines)


def _inspect_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m kep_train inspect",
                                description="per-layer storage table of a .kep model")
    p.add_argument("model", help=".kep file")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--out", help="also write the JSON report here")
    add_logging_args(p)
    return p


@cli_errors
def inspect_main(argv: list[str] | None = None) -> int:
    """``python -m kep_train inspect model.kep [--json]``."""
    import json

    from kep_common.fileio import atomic_write_json, environment_info
    from kep_train.export.kepfile import load_kep
    args = _inspect_parser().parse_args(argv)
    setup_logging(verbosity(args))
    if args.out:
        check_output_file(args.out, "--out")
    kep = load_kep(args.model)
    rows, tot = layer_table(kep)
    report = {"model": str(args.model), "file_bytes": os.path.getsize(args.model),
              "meta": kep.meta, "layers": rows, "totals": tot,
              "environment": environment_info()}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_fmt_table(kep, rows, tot))
        print(f"file {args.model}: {report['file_bytes']} bytes")
    if args.out:
        atomic_write_json(args.out, report)
    return 0
