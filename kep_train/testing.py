# SPDX-License-Identifier: Apache-2.0
"""Fixtures for tests and hardware checks: random KEP-pruned models, random ``.kep`` models and an
independent layer-by-layer reference of the golden model, and a deadline for tests of commands
that must never hang.

Nothing here is used by the training, export or golden-model code itself.
"""

from __future__ import annotations

import contextlib
import signal

import torch
import torch.nn.functional as F
from torch import nn

from kep_common.errors import KepError
from kep_train.export.kepfile import KepModel
from kep_train.export.quantize import quantize_model
from kep_train.golden.intarith import wrap_int32
from kep_train.golden.sparseconv import sparse_conv2d
from kep_train.models import build_model

__all__ = ["random_pruned_model", "random_kep", "reference_network"]


def random_pruned_model(model: nn.Module, *, K: int = 4, seed: int = 0,
                        skip: tuple | None = None) -> tuple[nn.Module, dict]:
    """Give ``model`` random weights, random KEP masks (K kept elements per plane of every
    conv with k > 1 except those named in ``skip``, default: the first conv) and random BN
    statistics, in place; for tests and hardware checks.

    Parameters
    ----------
    model : nn.Module
        The model to randomise.
    K : int
        Kept elements per kernel plane.
    seed : int
        Seed of the weights, masks and BN statistics.
    skip : tuple of str, optional
        Convs left dense (default: the first conv).

    Returns
    -------
    model : nn.Module
        The same module, eval mode, pruned elements zeroed.
    masks : dict
        ``{conv name: bool mask}``.

    Raises
    ------
    KepError
        ``K`` outside ``[1, k*k]`` for a pruned conv.
    """
    g = torch.Generator().manual_seed(seed)
    masks = {}
    if skip is None:
        skip = tuple(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))[:1]
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Conv2d):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g)
                                 * (2.0 / mod.weight[0].numel()) ** 0.5)
                kk = mod.weight.shape[2] * mod.weight.shape[3]
                if kk > 1 and name not in skip:
                    if not 1 <= K <= kk:
                        raise KepError(f"K must lie in [1, {kk}], got {K!r}")
                    score = torch.rand(mod.weight.shape, generator=g).flatten(2)
                    idx = score.topk(K, dim=2).indices
                    m = torch.zeros_like(score, dtype=torch.bool).scatter_(2, idx, True)
                    masks[name] = m.view_as(mod.weight)
                    mod.weight.mul_(masks[name])
            elif isinstance(mod, nn.BatchNorm2d):
                c = mod.num_features
                mod.running_mean.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
                mod.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                mod.weight.copy_(torch.rand(c, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
    return model.eval(), masks


def random_kep(model: nn.Module | str = "resnet20", *, K: int = 4, seed: int = 0,
               n_calib: int = 16, input_shape: tuple = (3, 32, 32)) -> KepModel:
    """A :class:`KepModel` of a randomly initialised, randomly KEP-pruned model (tests,
    hardware bring-up).

    Parameters
    ----------
    model : nn.Module or str
        A module (changed in place, see :func:`random_pruned_model`) or a name for
        :func:`kep_train.models.build_model`.
    K : int
        Kept elements per kernel plane.
    seed : int
        Seed of the weights, masks and calibration inputs.
    n_calib : int
        Random calibration inputs of shape ``input_shape``.
    input_shape : tuple
        ``(C, H, W)`` of the model's input.

    Raises
    ------
    KepError
        ``K`` out of range, or a model the quantizer does not support.
    """
    if isinstance(model, str):
        torch.manual_seed(seed)
        model = build_model(model)
    model, masks = random_pruned_model(model, K=K, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    calib = torch.randn((n_calib, *input_shape), generator=g)
    meta = {"model_name": type(model).__name__, "dataset": "random", "num_classes": None,
            "mean": [0.5] * input_shape[0], "std": [0.25] * input_shape[0],
            "kep": {"K": K, "random": True, "seed": seed}}
    return quantize_model(model, masks=masks, calib=calib, meta=meta)


def reference_network(kep: KepModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every layer's output of a ``.kep`` network, computed layer by layer with
    :func:`kep_train.golden.sparseconv.sparse_conv2d` (int64) and plain torch ops: slow, and
    independent of the fast path of :func:`kep_train.golden.evaluate.run_network`.

    Parameters
    ----------
    kep : KepModel
        The model.
    x : torch.Tensor
        int8 ``[N, C, H, W]`` input.

    Returns
    -------
    dict
        ``{"input": x, layer name: output}``: int8 ``[N, C, H, W]`` for conv/maxpool, int32
        ``[N, C]`` for avgpool (sums over H x W) and linear.
    """
    acts = {"input": x}
    for ly in kep.layers:
        a = acts[ly.input]
        if ly.op == "conv":
            v, i = ly.planes()
            res = acts[ly.residual] if ly.residual else None
            y = sparse_conv2d(a, v, i, ly.bias, ly.mult, ly.shift, kernel_size=ly.kernel_size,
                              stride=ly.stride, padding=ly.padding, relu=ly.relu, residual=res,
                              res_mult=ly.res_mult if res is not None else None)
        elif ly.op == "maxpool":
            p = ly.padding
            ap = F.pad(a.to(torch.int64), (p, p, p, p), value=-128)
            u = ap.unfold(2, ly.kernel_size, ly.stride).unfold(3, ly.kernel_size, ly.stride)
            y = u.amax(dim=(4, 5)).to(torch.int8)
        elif ly.op == "avgpool":
            y = a.to(torch.int64).sum(dim=(2, 3)).to(torch.int32)
        else:
            y = wrap_int32(a.to(torch.int64) @ ly.weight.to(torch.int64).T
                           + ly.bias.to(torch.int64)).to(torch.int32)
        acts[ly.name] = y
    return acts


@contextlib.contextmanager
def deadline(seconds: int):
    """Raise :class:`TimeoutError` in the block when it runs longer than ``seconds`` (SIGALRM, so
    it also interrupts a blocking ``open`` of a FIFO); main thread only."""
    def boom(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
