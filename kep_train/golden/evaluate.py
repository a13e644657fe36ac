# SPDX-License-Identifier: Apache-2.0
"""The golden model: a whole ``.kep`` network in the one integer arithmetic, bit exact.

Every conv layer is the paper's sparse convolution (shift-and-accumulate over the kept
elements, :mod:`kep_train.golden.sparseconv`), followed by the requantization of
:mod:`kep_train.golden.intarith` (``docs/arithmetic.md``). The accelerator computes exactly this.

Speed: the accumulation of a conv layer runs as one float32 matrix product per kernel offset
``(r, c)`` that holds at least one kept element (``acc += W_rc @ shifted input``). That is exact:
every product ``v * x`` is an integer of magnitude <= 2**14, and every partial sum of a dot
product is an integer bounded by ``B = max_o sum_{i,j} |v[o,i,j]| * 128``; when ``B < 2**24``
every intermediate value is representable in float32, so the result is the exact integer
whatever the summation order. A layer with ``B >= 2**24`` runs in float64 (exact below 2**53).
The bias is added and the sum wrapped to int32 in int64. ``tests/golden/test_golden.py`` checks this
path against :func:`kep_train.golden.sparseconv.sparse_conv2d` (pure int64) and ``F.conv2d``.

Command line: ``python -m kep_train golden --model model.kep --data-dir DIR [--n N] [--shuffle]
[--out golden.json]``: the first N test images in sorted order (class folders, then files) or a
seeded random subset; the JSON report holds every image's file, label, prediction and int32
logits, so that another implementation can be checked bit for bit below the top-1 level.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kep_common.errors import KepError, cli_errors
from kep_common.fileio import check_output_file
from kep_common.log import add_logging_args, setup_logging, verbosity
from kep_train.data.cifar import load_cifar10, normalize, read_cifar10_split
from kep_train.golden.intarith import INT8_MAX, INT8_MIN, quantize_tensor, requantize, wrap_int32
from kep_train.export.kepfile import KepLayer, KepModel, load_kep

__all__ = ["run_network", "quantize_input", "conv_layer", "conv_acc_exact_dtype",
           "top1", "load_test_images", "golden_logits", "evaluate_int8", "evaluate_float",
           "percent", "main"]

log = logging.getLogger(__name__)

_F32_EXACT = 2**24
_F64_EXACT = 2**53


def _check_input(kep: KepModel, x: torch.Tensor, dtype: torch.dtype, what: str, has: str):
    """KepError unless ``x`` is ``dtype [N, C, H, W]`` with the model's input shape."""
    if x.dtype != dtype or x.dim() != 4:
        raise KepError(f"{what} must be {str(dtype).removeprefix('torch.')} [N, C, H, W], got "
                       f"{x.dtype} {list(x.shape)}")
    expect = tuple(kep.meta.get("input_shape", x.shape[1:]))
    if tuple(x.shape[1:]) != expect:
        raise KepError(f"{what} {has} shape {list(x.shape[1:])}, the model expects "
                       f"{list(expect)}")


def quantize_input(kep: KepModel, images_uint8: torch.Tensor) -> torch.Tensor:
    """Normalize uint8 images with the model's mean/std and quantize them to int8.

    Parameters
    ----------
    kep : KepModel
        Gives ``meta["mean"]``, ``meta["std"]`` and ``meta["input_scale"]``.
    images_uint8 : torch.Tensor
        ``uint8 [N, C, H, W]`` pixels.

    Returns
    -------
    torch.Tensor
        int8 ``[N, C, H, W]``: ``round_half_even(((p / 255) - mean) / std / input_scale)``
        clamped to [-128, 127] (computed in float64).

    Raises
    ------
    KepError
        Wrong dtype or shape.
    """
    _check_input(kep, images_uint8, torch.uint8, "images", "have")
    mean = torch.tensor(kep.meta["mean"], dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(kep.meta["std"], dtype=torch.float64).view(1, -1, 1, 1)
    x = (images_uint8.to(torch.float64) / 255.0 - mean) / std
    return quantize_tensor(x, kep.input_scale)


def conv_acc_exact_dtype(values: torch.Tensor) -> torch.dtype:
    """The float dtype in which a conv with these int8 ``values [Cout, Cin, K]`` (any int8
    input) accumulates exactly: float32 when ``max_o sum |v| * 128 < 2**24``, else float64."""
    bound = int(values.to(torch.int64).abs().flatten(1).sum(1).max()) * 128 if values.numel() \
        else 0
    if bound < _F32_EXACT and torch.get_float32_matmul_precision() == "highest":
        return torch.float32
    if bound < _F64_EXACT:
        return torch.float64
    raise KepError(f"conv accumulation bound {bound} is too large for an exact float path")


def _prepare(layer: KepLayer, cache: dict):
    """Per-layer constants: accumulation dtype, the ``[Cout, Cin]`` weight matrix of every
    kernel offset holding a kept element, and whether int32 wrap-around is impossible."""
    if layer.name not in cache:
        k = layer.kernel_size
        values, index = layer.planes()
        dtype = conv_acc_exact_dtype(values)
        cout, cin, _ = values.shape
        dense = torch.zeros(cout, cin, k * k, dtype=dtype)
        dense.scatter_(2, index.to(torch.int64), values.to(dtype))
        kept = index.to(torch.int64).flatten().unique().tolist()  # offsets with kept elements
        bias = layer.bias.to(torch.int64)
        bound = (int(values.to(torch.int64).abs().flatten(1).sum(1).max()) * 128
                 + int(bias.abs().max()) if values.numel() else 0)
        cache[layer.name] = (dtype, [(j, dense[:, :, j].contiguous()) for j in kept],
                             bound < 2**31)
    return cache[layer.name]


def _conv_acc_cnhw(x: torch.Tensor, layer: KepLayer, cache: dict) -> tuple:
    """Sparse shift-and-accumulate on ``[Cin, N, H, W]`` activations.

    Returns ``(acc, no_wrap)``: the exact sums ``[Cout, N, Ho, Wo]`` (float, bias NOT included)
    and whether ``acc + bias`` provably fits int32 without wrap-around.

    Stride 1 uses flat shifts: on the zero-padded input flattened to ``[Cin, N*Hp*Wp]``, the
    input shifted by ``(r, c)`` is the column window starting at ``r*Wp + c`` (a view, no copy).
    Outputs are computed on the padded grid and cropped to ``[:Ho, :Wo]``; a valid output
    ``(y, x)`` reads ``xp[y + r, x + c]`` with ``y + r < Hp`` and ``x + c < Wp``, so it never
    reads across a row or image boundary.
    """
    k, s, p = layer.kernel_size, layer.stride, layer.padding
    dtype, offsets, no_wrap = _prepare(layer, cache)
    cout = layer.out_shape[0]
    cin, n, h, w = x.shape
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    xp = F.pad(x.to(dtype), (p, p, p, p))
    hp, wp = h + 2 * p, w + 2 * p
    if s == 1:
        length = n * hp * wp
        flat = torch.zeros(cin, length + (k - 1) * (wp + 1), dtype=dtype)
        flat[:, :length] = xp.reshape(cin, length)
        acc = torch.zeros(cout, length, dtype=dtype)
        for j, wj in offsets:
            r, c = divmod(j, k)
            off = r * wp + c
            acc.addmm_(wj, flat[:, off:off + length])
        return acc.view(cout, n, hp, wp)[:, :, :ho, :wo], no_wrap
    acc = torch.zeros(cout, n * ho * wo, dtype=dtype)
    for j, wj in offsets:
        r, c = divmod(j, k)
        shifted = xp[:, :, r:r + s * (ho - 1) + 1:s, c:c + s * (wo - 1) + 1:s]
        acc.addmm_(wj, shifted.reshape(cin, n * ho * wo))
    return acc.view(cout, n, ho, wo), no_wrap


def _conv_requant(x: torch.Tensor, layer: KepLayer, res: torch.Tensor | None,
                  cache: dict) -> torch.Tensor:
    """A conv layer on ``[C, N, H, W]`` activations: exact accumulation, bias, requantization.

    When ``acc + bias`` provably fits int32 (no wrap), the arithmetic of
    :func:`kep_train.golden.intarith.requantize` is evaluated in place in int64 with the bias folded
    into the rounding constant: ``(acc + b) * m + r + 2**(s-1) = acc * m + (b * m + 2**(s-1))
    + r`` exactly (all terms < 2**50). Otherwise the reference path (wrap, requantize) runs.
    Both are tested equal.
    """
    acc, no_wrap = _conv_acc_cnhw(x, layer, cache)
    shape = (-1, 1, 1, 1)
    if not no_wrap:
        acc = wrap_int32(acc.to(torch.int64) + layer.bias.to(torch.int64).view(shape))
        return requantize(acc, layer.mult, layer.shift, residual=res,
                          res_mult=layer.res_mult if res is not None else None,
                          relu=layer.relu, channel_dim=0)
    m = layer.mult.to(torch.int64).view(shape)
    s = layer.shift.to(torch.int64).view(shape)
    const = layer.bias.to(torch.int64).view(shape) * m + (torch.ones_like(s) << (s - 1))
    z = acc.to(torch.int64)
    z.mul_(m).add_(const)
    if res is not None:
        z.add_(res.to(torch.int64) * layer.res_mult.to(torch.int64).view(shape))
    z.bitwise_right_shift_(s)
    z.clamp_(0 if layer.relu else INT8_MIN, INT8_MAX)
    return z.to(torch.int8)


def conv_layer(x: torch.Tensor, layer: KepLayer, residual: torch.Tensor | None = None,
               ) -> torch.Tensor:
    """One int8 conv layer of a .kep (fast exact path), ``[N, Cin, H, W]`` -> ``[N, Cout, Ho,
    Wo]`` int8; equal to :func:`kep_train.golden.sparseconv.sparse_conv2d` with the layer's
    ``planes()``, bias, mult, shift, res_mult, relu (tested)."""
    res = residual.transpose(0, 1) if residual is not None else None
    return _conv_requant(x.transpose(0, 1), layer, res, {}).transpose(0, 1).contiguous()


def run_network(kep: KepModel, x_int8: torch.Tensor, *, return_all: bool = False,
                _cache: dict | None = None):
    """Run a whole .kep network on int8 inputs in the integer arithmetic.

    Parameters
    ----------
    kep : KepModel
        The model.
    x_int8 : torch.Tensor
        int8 ``[N, C, H, W]`` (see :func:`quantize_input`).
    return_all : bool
        Also return every layer's output.

    Returns
    -------
    torch.Tensor or (torch.Tensor, dict)
        The last layer's output: int32 logits ``[N, classes]`` for a classifier (int8
        ``[N, C, H, W]`` if the network ends with a conv). With ``return_all``, also
        ``{"input": x_int8, layer name: output}``: int8 ``[N, C, H, W]`` for conv/maxpool,
        int32 ``[N, C]`` for avgpool (sums over H x W) and linear.

    Raises
    ------
    KepError
        If the input is not int8 of the model's input shape.
    """
    _check_input(kep, x_int8, torch.int8, "input", "has")
    cache = {} if _cache is None else _cache
    acts = {"input": x_int8.transpose(0, 1)}     # internal layout [C, N, H, W] / [C, N]
    with torch.inference_mode():
        for layer in kep.layers:
            x = acts[layer.input]
            if layer.op == "conv":
                res = acts[layer.residual] if layer.residual is not None else None
                y = _conv_requant(x, layer, res, cache)
            elif layer.op == "maxpool":
                p = layer.padding
                xf = F.pad(x.to(torch.float32), (p, p, p, p), value=float(INT8_MIN))
                y = F.max_pool2d(xf, layer.kernel_size, layer.stride).to(torch.int8)
            elif layer.op == "avgpool":
                y = wrap_int32(x.to(torch.int64).sum(dim=(2, 3))).to(torch.int32)
            elif layer.op == "linear":
                acc = layer.weight.to(torch.int64) @ x.to(torch.int64)
                y = wrap_int32(acc + layer.bias.to(torch.int64).view(-1, 1)).to(torch.int32)
            else:  # the reader rejects unknown kinds; this guards hand-built models
                raise KepError(f"layer {layer.name!r}: unknown kind {layer.op!r}")
            acts[layer.name] = y
    out = acts[kep.layers[-1].name].transpose(0, 1).contiguous()
    if not return_all:
        return out
    return out, {name: v.transpose(0, 1).contiguous() for name, v in acts.items()}


def top1(logits: torch.Tensor) -> torch.Tensor:
    """Predicted classes: argmax with ties to the lowest class index."""
    return logits.to(torch.int64).argmax(dim=1)  # torch.argmax returns the first maximum


def load_test_images(data_dir: str | os.PathLike, *, train: bool = False, use_cache: bool = True,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 images ``uint8 [N, 3, 32, 32]`` and labels ``int64 [N]`` of an existing folder
    in the training order (:func:`kep_train.data.cifar.load_cifar10`, never downloading; image
    folders in a fixed shuffled order). The ``golden`` command reads the sorted order instead
    (:func:`kep_train.data.cifar.read_cifar10_split`).

    Raises
    ------
    KepError
        Missing or empty data folder.
    """
    if not Path(data_dir).is_dir():
        raise KepError(f"data folder {str(data_dir)!r} does not exist")
    return load_cifar10(data_dir, train=train, download=False, use_cache=use_cache)


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2 and one ``error: ...`` line on a bad option."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m kep_train golden",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="top-1 of the bit-exact int8 golden model of a .kep file on the CIFAR-10 "
                    "test set,\nnext to the float pruned model's when its checkpoint exists",
        epilog=(
            "image order: image folders are read in sorted order (class folders sorted, files "
            "sorted\nwithin a class), cifar-10-batches-py in the official order; --n N takes "
            "the first N of\nthat order (with sorted class folders, the first classes only), "
            "--shuffle --n N a random\nsubset drawn with --seed. Only test/ is read: no train/ "
            "folder is needed.\n\n"
            "cache: decoded image folders are kept in $KEP_CACHE, else "
            "$XDG_CACHE_HOME/kep_toolkit,\nelse ~/.cache/kep_toolkit; an entry is keyed on the "
            "files' names, sizes and modification\ntimes (a replaced image is decoded again); "
            "--no-cache neither reads nor writes it.\n\n"
            "--out JSON: int8_top1 (%, rounded to 4 decimals), int8_correct, images, the float "
            "model's\nfigures when compared, and per_image: one record per image {index, file "
            "(relative to\n--data-dir), label, prediction, logits (the int32 outputs)}."))
    p.add_argument("--model", required=True, help=".kep file")
    p.add_argument("--data-dir", required=True, help="CIFAR-10 folder (holding test/ or "
                   "cifar-10-batches-py)")
    p.add_argument("--checkpoint", help="float checkpoint to compare with (default: the one "
                   "named in the .kep metadata, if it exists)")
    p.add_argument("--float-model", default=None, metavar="MODULE:CALLABLE",
                   help="the checkpoint's model when it is your own module.path:callable (as "
                        "given to cifar --model): a checkpoint never imports code by itself")
    p.add_argument("--n", type=int, default=None,
                   help="use only the first N test images in sorted order (default: all)")
    p.add_argument("--shuffle", action="store_true",
                   help="take the images in a random order drawn with --seed (with --n: a "
                        "random subset of N)")
    p.add_argument("--seed", type=int, default=None, help="seed of --shuffle (default 0)")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--no-cache", action="store_true",
                   help="neither read nor write the decoded-image cache")
    p.add_argument("--out", help="write a JSON report here (with per-image records)")
    add_logging_args(p)
    return p


class _Progress:
    """Log ``images done / total, elapsed s, images/s`` every ``every_s`` seconds and at the
    end (INFO: silenced by ``--quiet``)."""

    def __init__(self, what: str, total: int, every_s: float = 2.0):
        self.what, self.total, self.every_s = what, total, every_s
        self.t0 = self.last = time.perf_counter()

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if done < self.total and now - self.last < self.every_s:
            return
        self.last = now
        dt = now - self.t0
        log.info("%s: %d/%d images, %.1f s, %.0f images/s", self.what, done, self.total, dt,
                 done / max(dt, 1e-9))


def golden_logits(kep: KepModel, images: torch.Tensor, batch_size: int = 1000, *,
                  progress=None) -> torch.Tensor:
    """The golden model's outputs (int32 logits ``[N, classes]``) for uint8 images, in batches;
    ``progress(images_done)`` is called after every batch."""
    cache: dict = {}
    outs = []
    for s in range(0, images.shape[0], batch_size):
        x = quantize_input(kep, images[s:s + batch_size])
        outs.append(run_network(kep, x, _cache=cache))
        if progress is not None:
            progress(min(s + batch_size, images.shape[0]))
    return torch.cat(outs)


def evaluate_int8(kep: KepModel, images: torch.Tensor, batch_size: int = 1000, *,
                  progress=None) -> torch.Tensor:
    """Predicted classes of the golden model for uint8 images, in batches."""
    return top1(golden_logits(kep, images, batch_size, progress=progress))


def evaluate_float(ckpt_path, kep: KepModel, images: torch.Tensor,
                   batch_size: int = 1000, *, model_spec: str | None = None) -> torch.Tensor:
    """Predicted classes of a checkpoint's float model on the same images; ``model_spec`` is
    the user's ``module:callable`` when the checkpoint records one (it is never imported on
    the checkpoint's word: :func:`kep_train.train.checkpoint.model_from_checkpoint`)."""
    from kep_train.train.checkpoint import model_from_checkpoint
    model, _ = model_from_checkpoint(ckpt_path, model_spec, option="--float-model")
    preds = []
    with torch.inference_mode():
        for s in range(0, images.shape[0], batch_size):
            x = normalize(images[s:s + batch_size], kep.meta["mean"], kep.meta["std"])
            preds.append(model(x).argmax(1))
    return torch.cat(preds)


def percent(count: int, total: int) -> float:
    """``100 * count / total`` rounded to 4 decimals (computed from Python ints; 0.0 when
    ``total`` is 0)."""
    return round(100 * count / total, 4) if total else 0.0


def _report_json(report: dict) -> bytes:
    """Indented JSON with every ``per_image`` record on one line."""
    head = {k: v for k, v in report.items() if k != "per_image"}
    text = json.dumps(head, indent=2)
    if "per_image" in report:
        rows = ",\n".join("    " + json.dumps(r) for r in report["per_image"])
        text = text[:-2] + ',\n  "per_image": [' + (f"\n{rows}\n  " if rows else "") + "]\n}"
    return (text + "\n").encode()


def _check_classifier(kep: KepModel, path) -> None:
    """KepError unless the network ends in per-class outputs (a linear or avgpool layer): the
    format also allows networks ending in a conv, which have no top-1."""
    last = kep.layers[-1]
    if last.op not in ("linear", "avgpool"):
        raise KepError(f"{str(path)!r} ends with the {last.op} layer {last.name!r}: the golden "
                       "top-1 needs a classifier (a network ending in a linear layer)")


#: bound on the int64/float64 activations of one golden batch (the batch is split below it)
_BATCH_BYTES = 2**31


def _bounded_batch(kep: KepModel, batch_size: int) -> int:
    """``batch_size`` lowered so that the largest activation of a batch, as 8-byte numbers,
    stays below :data:`_BATCH_BYTES` (results do not depend on the batching)."""
    biggest = max(math.prod(ly.out_shape) for ly in kep.layers)
    biggest = max(biggest, math.prod(kep.meta["input_shape"]))
    return max(1, min(batch_size, _BATCH_BYTES // (8 * biggest)))


@cli_errors
def main(argv: list[str] | None = None) -> int:
    """``python -m kep_train golden``: int8 top-1 next to the float pruned model's."""
    from kep_common.fileio import atomic_write_bytes, environment_info
    args = _parser().parse_args(argv)
    setup_logging(verbosity(args))
    if args.batch_size < 1:
        raise KepError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.n is not None and args.n < 1:
        raise KepError(f"--n must be >= 1, got {args.n}")
    if args.seed is not None and not args.shuffle:
        raise KepError("--seed only applies with --shuffle")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise KepError(f"--seed must be an integer in [0, 2**63), got {args.seed}")
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise KepError(f"checkpoint {args.checkpoint!r} does not exist")
    if args.out:
        check_output_file(args.out, "--out")
    kep = load_kep(args.model)
    _check_classifier(kep, args.model)
    args.batch_size = _bounded_batch(kep, args.batch_size)
    ckpt = args.checkpoint or kep.meta.get("checkpoint")
    compare = bool(ckpt) and os.path.isfile(ckpt)
    if args.float_model is not None and not compare:
        raise KepError("--float-model needs the checkpoint to compare with (--checkpoint, or "
                       "an existing one named in the .kep)")
    if compare:     # a malformed checkpoint fails now, not after the work
        from kep_train.models import is_user_model
        from kep_train.train.checkpoint import load_checkpoint, model_from_checkpoint
        recorded = load_checkpoint(ckpt)["model_name"]
        if not args.checkpoint and args.float_model is None and is_user_model(recorded):
            log.warning("no float comparison: the checkpoint %s named in the .kep holds the "
                        "user model %r; give --float-model %s to compare (a checkpoint never "
                        "imports code by itself)", ckpt, recorded, recorded)
            compare = False
        else:
            model_from_checkpoint(ckpt, args.float_model, option="--float-model")
    if not Path(args.data_dir).is_dir():
        raise KepError(f"data folder {str(args.data_dir)!r} does not exist")
    split = read_cifar10_split(args.data_dir, train=False, download=False,
                               use_cache=not args.no_cache)
    index = torch.arange(len(split.labels))
    if args.shuffle:
        seed = 0 if args.seed is None else args.seed
        index = torch.randperm(len(split.labels), generator=torch.Generator().manual_seed(seed))
    if args.n is not None:
        if args.n > len(index):
            log.warning("--n %d: the test set has only %d images; using them all", args.n,
                        len(index))
        index = index[:args.n]
    images, labels = split.images[index], split.labels[index]
    n = int(labels.numel())
    log.info("golden model %s on %d test images of %s", args.model, n, args.data_dir)
    t0 = time.perf_counter()
    logits = golden_logits(kep, images, args.batch_size, progress=_Progress("int8 golden", n))
    seconds = time.perf_counter() - t0
    pred = top1(logits)
    correct = int((pred == labels).sum())
    report = {"model": str(args.model), "data_dir": str(args.data_dir), "images": n,
              "order": ("shuffled" if args.shuffle else "sorted"),
              "seed": (0 if args.seed is None else args.seed) if args.shuffle else None,
              "int8_top1": percent(correct, n), "int8_correct": correct,
              "int8_seconds": round(seconds, 3)}
    fpred = None
    if compare:
        log.info("float model of %s on the same images", ckpt)
        fpred = evaluate_float(ckpt, kep, images, args.batch_size, model_spec=args.float_model)
        fcorrect = int((fpred == labels).sum())
        same = int((fpred == pred).sum())
        report.update(checkpoint=str(ckpt), float_top1=percent(fcorrect, n),
                      float_correct=fcorrect, agreement=percent(same, n), same_prediction=same,
                      diff_pt=round(percent(correct, n) - percent(fcorrect, n), 4))
    elif ckpt and not os.path.isfile(ckpt):
        log.info("no float comparison: the checkpoint %s named in the .kep does not exist", ckpt)
    print(f"int8 golden top-1: {report['int8_top1']:.2f} % ({correct}/{n} images, "
          f"{seconds:.1f} s, {n / max(seconds, 1e-9):.0f} images/s)")
    if fpred is not None:
        print(f"float pruned top-1: {report['float_top1']:.2f} %  (int8 - float = "
              f"{report['diff_pt']:+.2f} pt, same prediction on {report['agreement']:.2f} %)")
    report["environment"] = environment_info()
    if args.out:
        logits_list = logits.tolist()
        report["per_image"] = [
            {"index": int(i), "file": split.files[int(i)], "label": int(y),
             "prediction": int(p), "logits": lg}
            | ({"float_prediction": int(fpred[j])} if fpred is not None else {})
            for j, (i, y, p, lg) in enumerate(zip(index.tolist(), labels.tolist(),
                                                  pred.tolist(), logits_list))]
        atomic_write_bytes(args.out, _report_json(report))
    return 0
