# SPDX-License-Identifier: Apache-2.0
"""Test fixtures: random layers for the engine, a tiny random network for the system.

:func:`random_job` and :func:`random_layers` draw valid layers
(:class:`~kep_hw.host.driver.LayerJob`) for the engine's regressions. The network of
:func:`random_network` has every feature the board system handles: a dense 3x3 first layer,
sparse K=4 layers, a stride-2 layer with a 1x1 shortcut, residual adds, ReLU, then global
average pooling and a linear classifier on the host. :func:`reference_logits` computes it layer
by layer with the golden layer :func:`kep_train.golden.sparseconv.sparse_conv2d`.
"""

from __future__ import annotations

import torch

from kep_train.export.kepfile import KepLayer, KepModel
from kep_train.golden.sparseconv import sparse_conv2d

from kep_hw.gateware.params import EngineParams
from kep_hw.host.driver import LayerJob, dense_job
from kep_hw.system.plan import run_tail

__all__ = ["random_job", "random_layers", "random_network", "reference_activations",
           "reference_logits"]

SCALE = 1.0 / 64     # every activation scale of the test network (consistent for save_kep)


def random_job(gen: torch.Generator, *, cin: int, cout: int, h: int, w: int, k: int = 3,
               kept: int = 4, stride: int = 1, pad: int | None = None, relu: bool = True,
               residual: bool = False, extreme: bool = False, name: str = "random") -> LayerJob:
    """A random valid layer (deterministic given ``gen``).

    ``extreme`` draws values, activations and residuals only from {-128, 127} and uses large
    multipliers, to exercise products like -128 * -128 and saturation.
    """
    if pad is None:
        pad = 1 if k == 3 else 0

    def i8(*shape):
        if extreme:
            return torch.where(torch.rand(*shape, generator=gen) < 0.5,
                               torch.tensor(-128), torch.tensor(127)).to(torch.int8)
        return torch.randint(-128, 128, shape, generator=gen, dtype=torch.int8)

    kk = k * k
    x = i8(cin, h, w)
    scores = torch.rand(cout, cin, kk, generator=gen)
    index = scores.argsort(dim=2)[..., :kept].sort(dim=2).values.to(torch.uint8)
    values = i8(cout, cin, kept)
    bias = torch.randint(-2**20, 2**20, (cout,), generator=gen, dtype=torch.int32)
    shift = torch.randint(8, 24, (cout,), generator=gen, dtype=torch.int64)
    mult = torch.randint(1, 2**16, (cout,), generator=gen, dtype=torch.int64)
    res_mult = torch.randint(0, 2**24, (cout,), generator=gen, dtype=torch.int64)
    if extreme:
        mult[:] = 2**16 - 1
        shift[:] = torch.randint(1, 48, (cout,), generator=gen)
        bias = torch.randint(-2**31, 2**31 - 1, (cout,), generator=gen, dtype=torch.int64)
        bias = bias.to(torch.int32)
    ho = (h + 2 * pad - k) // stride + 1
    wo = (w + 2 * pad - k) // stride + 1
    res = i8(cout, ho, wo) if residual else None
    if not residual:
        res_mult = torch.zeros(cout, dtype=torch.int64)
    return LayerJob(x=x, values=values, index=index, bias=bias, mult=mult, shift=shift,
                    res_mult=res_mult, k=k, stride=stride, pad=pad, relu=relu, residual=res,
                    name=name)


def random_layers(seed: int, n: int, params: EngineParams, *, max_hw: int = 7,
                  max_c: int = 40) -> list[LayerJob]:
    """``n`` random valid layers for the regression (deterministic given ``seed``).

    Shapes, strides, kernel size (3x3 or 1x1), K (0 .. k*k), ReLU, residual, dense mode and
    extreme values (only -128 / 127) are all drawn at random, within ``params``' limits.
    """
    gen = torch.Generator().manual_seed(seed)

    def draw(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    jobs = []
    for t in range(n):
        k = 3 if draw(0, 3) else 1
        kept = draw(0, k * k)
        stride = draw(1, 2)
        pad = 1 if k == 3 else draw(0, 1)
        cin = draw(1, min(max_c, params.max_cin))
        cout = draw(1, min(max_c, params.max_cout))
        h = draw(max(1, k - 2 * pad), min(max_hw, params.max_hw))
        w = draw(max(1, k - 2 * pad), min(max_hw, params.max_hw))
        job = random_job(gen, cin=cin, cout=cout, h=h, w=w, k=k, kept=kept, stride=stride,
                         pad=pad, relu=bool(draw(0, 1)), residual=bool(draw(0, 1)),
                         extreme=draw(0, 5) == 0, name=f"rand{t}")
        if draw(0, 7) == 0:
            job = dense_job(job)
            job.name = f"rand{t}:dense"
        jobs.append(job)
    return jobs


def _conv(gen, name, inp, cin, cout, h, *, k=3, stride=1, K=None, relu=True, residual=None):
    pad = 1 if k == 3 else 0
    ho = (h + 2 * pad - k) // stride + 1
    kk = k * k
    K = kk if K is None else K
    values = torch.randint(-128, 128, (cout, cin, K), generator=gen, dtype=torch.int64)
    perm = torch.argsort(torch.rand(cout, cin, kk, generator=gen), dim=2)[..., :K]
    index = torch.sort(perm, dim=2).values
    bias = torch.randint(-2**14, 2**14, (cout,), generator=gen, dtype=torch.int64)
    fan = cin * K * 128 * 64
    shift = torch.full((cout,), max(1, fan.bit_length()), dtype=torch.int64)
    mult = torch.randint(2**14, 2**16, (cout,), generator=gen, dtype=torch.int64)
    res_mult = (torch.randint(2**20, 2**24, (cout,), generator=gen, dtype=torch.int64)
                >> max(0, 24 - int(shift[0]))) if residual else torch.zeros(cout,
                                                                            dtype=torch.int64)
    common = dict(name=name, op="conv", input=inp, in_shape=(cin, h, h), out_shape=(cout, ho, ho),
                  kernel_size=k, stride=stride, padding=pad, relu=relu, residual=residual,
                  bias=bias.to(torch.int32), mult=mult.to(torch.int32),
                  shift=shift.to(torch.int32), res_mult=res_mult.to(torch.int32),
                  w_scale=torch.ones(cout), in_scale=SCALE, out_scale=SCALE)
    if K == kk:
        dense = torch.zeros(cout, cin, kk, dtype=torch.int64)
        dense.scatter_(2, index, values)
        return KepLayer(sparse=False, weight=dense.view(cout, cin, k, k).to(torch.int8),
                        **common), ho
    return KepLayer(sparse=True, values=values.to(torch.int8), index=index.to(torch.uint8),
                    **common), ho


def random_network(seed: int = 0, *, size: int = 8, width: int = 8,
                   classes: int = 10) -> KepModel:
    """A small random network (input ``[3, size, size]``), deterministic given ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    w1, w2 = width, 2 * width
    layers = []
    c0, h = _conv(gen, "conv0", "input", 3, w1, size)
    b1, _ = _conv(gen, "b1.conv1", "conv0", w1, w1, h, K=4)
    b2, _ = _conv(gen, "b1.conv2", "b1.conv1", w1, w1, h, K=4, residual="conv0")
    c3, h2 = _conv(gen, "b2.conv1", "b1.conv2", w1, w2, h, stride=2, K=4)
    sc, _ = _conv(gen, "b2.shortcut", "b1.conv2", w1, w2, h, k=1, stride=2, relu=False)
    c4, _ = _conv(gen, "b2.conv2", "b2.conv1", w2, w2, h2, K=4, residual="b2.shortcut")
    layers = [c0, b1, b2, c3, sc, c4]
    layers.append(KepLayer(name="pool", op="avgpool", input="b2.conv2",
                           in_shape=(w2, h2, h2), out_shape=(w2,), in_scale=SCALE,
                           out_scale=SCALE / (h2 * h2)))
    layers.append(KepLayer(
        name="fc", op="linear", input="pool", in_shape=(w2,), out_shape=(classes,),
        in_scale=SCALE / (h2 * h2), out_scale=SCALE, w_scale=torch.ones(classes),
        weight=torch.randint(-127, 128, (classes, w2), generator=gen, dtype=torch.int8),
        bias=torch.randint(-1000, 1000, (classes,), generator=gen, dtype=torch.int32)))
    meta = {"model_name": "random-test", "dataset": "random", "num_classes": classes,
            "input_shape": [3, size, size], "input_scale": SCALE,
            "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}
    return KepModel(layers=layers, meta=meta)


def reference_activations(kep: KepModel, x: torch.Tensor) -> dict:
    """int8 output ``[C, H, W]`` of every conv layer for one int8 image ``[C, H, W]``."""
    acts = {"input": x.unsqueeze(0)}
    for layer in kep.conv_layers:
        values, index = layer.planes()
        res = acts[layer.residual] if layer.residual is not None else None
        acts[layer.name] = sparse_conv2d(
            acts[layer.input], values, index, layer.bias, layer.mult, layer.shift,
            kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding,
            relu=layer.relu, residual=res, res_mult=layer.res_mult if res is not None else None)
    return {k: v[0] for k, v in acts.items()}


def reference_logits(kep: KepModel, x: torch.Tensor) -> torch.Tensor:
    """int32 logits (as int64) of one int8 image ``[C, H, W]``."""
    acts = reference_activations(kep, x)
    tail = [layer for layer in kep.layers if layer.op in ("avgpool", "linear")]
    return run_tail(tail, acts[kep.conv_layers[-1].name])
