# SPDX-License-Identifier: Apache-2.0
"""Host side of the engine: memory images, configuration, golden outputs, random layers.

Everything a testbench (amaranth.sim or cocotb) or a system needs to run one layer: a
:class:`LayerJob` holds one layer's integer tensors; :func:`layer_program` turns it into the load
words of :class:`kep_hw.layer_top.LayerTop` and the configuration register values;
:func:`expected_words` and :func:`decode_outputs` map between the output stream and tensors.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from kep_common.errors import KepError
from kep_train.golden.sparseconv import check_sparse_planes, expand_dense, sparse_conv2d

from kep_hw.gateware.layouts import ParamWord, Target, act_word, pack, weight_word
from kep_hw.gateware.params import EngineParams, layer_config

__all__ = ["LayerJob", "layer_program", "golden", "expected_words", "decode_outputs",
           "random_job", "dense_job", "random_layers"]


@dataclasses.dataclass
class LayerJob:
    """One convolution layer with its input (batch of one), all integer tensors.

    Parameters
    ----------
    x : torch.Tensor
        int8 input ``[Cin, H, W]``.
    values, index : torch.Tensor
        int8 values and uint8 indices ``[Cout, Cin, K]``.
    bias : torch.Tensor
        int32 ``[Cout]``.
    mult, shift, res_mult : torch.Tensor
        Requantization parameters ``[Cout]``.
    k, stride, pad : int
        Kernel size, stride, zero padding.
    relu : bool
        ReLU flag.
    residual : torch.Tensor or None
        int8 ``[Cout, Ho, Wo]`` or None.
    dense : bool
        Run in dense mode (``values``/``index`` hold all k*k elements, index ascending).
    name : str
        Label for reports.
    """

    x: torch.Tensor
    values: torch.Tensor
    index: torch.Tensor
    bias: torch.Tensor
    mult: torch.Tensor
    shift: torch.Tensor
    res_mult: torch.Tensor
    k: int = 3
    stride: int = 1
    pad: int = 1
    relu: bool = False
    residual: torch.Tensor | None = None
    dense: bool = False
    name: str = "layer"

    @property
    def cin(self) -> int:
        return int(self.values.shape[1])

    @property
    def cout(self) -> int:
        return int(self.values.shape[0])

    @property
    def kept(self) -> int:
        return int(self.values.shape[2])

    @property
    def out_hw(self) -> tuple[int, int]:
        h, w = self.x.shape[1:]
        return ((h + 2 * self.pad - self.k) // self.stride + 1,
                (w + 2 * self.pad - self.k) // self.stride + 1)


def golden(job: LayerJob) -> torch.Tensor:
    """int8 ``[Cout, Ho, Wo]`` from :func:`kep_train.sparseconv.sparse_conv2d`."""
    res = None if job.residual is None else job.residual.unsqueeze(0)
    return sparse_conv2d(job.x.unsqueeze(0), job.values, job.index, job.bias, job.mult,
                         job.shift, kernel_size=job.k, stride=job.stride, padding=job.pad,
                         relu=job.relu, residual=res,
                         res_mult=job.res_mult if res is not None else None)[0]


def _check(job: LayerJob) -> None:
    try:
        check_sparse_planes(job.values, job.index, job.k)
    except ValueError as e:
        raise KepError(f"{job.name}: {e}") from None
    if job.dense:
        want = torch.arange(job.k * job.k).expand_as(job.index)
        if job.kept != job.k * job.k or not bool((job.index.to(torch.int64) == want).all()):
            raise KepError(f"{job.name}: dense mode needs all k*k elements in index order")
    c = job.cout
    for name in ("bias", "mult", "shift", "res_mult"):
        t = getattr(job, name)
        if tuple(t.shape) != (c,):
            raise KepError(f"{job.name}: {name} must have shape [{c}], got {tuple(t.shape)}")


def layer_program(params: EngineParams, job: LayerJob, *, act_base: int = 0,
                  res_base: int | None = None, wt_base: int = 0,
                  prm_base: int = 0) -> tuple[dict, list[tuple[Target, int, int]]]:
    """Configuration and load words for one layer.

    Parameters
    ----------
    params : EngineParams
        The engine.
    job : LayerJob
        The layer.
    act_base, res_base, wt_base, prm_base : int
        Base addresses; ``res_base`` defaults to just after the activations.

    Returns
    -------
    cfg : dict
        Configuration register values.
    loads : list of (Target, int, int)
        ``(target, address, packed word)``.

    Raises
    ------
    KepError
        If the layer is malformed or does not fit the engine.
    """
    _check(job)
    P, G = params.pes, params.lanes
    cin, cout = job.cin, job.cout
    h, w = job.x.shape[1:]
    cwi = math.ceil(cin / G)
    if res_base is None:
        res_base = act_base + h * w * cwi
    cfg = layer_config(params, cin=cin, cout=cout, h=h, w=w, k=job.k, kept=job.kept,
                       stride=job.stride, pad=job.pad, relu=job.relu,
                       residual=job.residual is not None, dense=job.dense,
                       act_base=act_base, res_base=res_base, wt_base=wt_base,
                       prm_base=prm_base)
    loads = []
    aw = act_word(G)

    def pixel_words(t: torch.Tensor, base: int):
        c, hh, ww = t.shape
        nw = math.ceil(c / G)
        pad = torch.zeros(nw * G, hh, ww, dtype=torch.int64)
        pad[:c] = t.to(torch.int64)
        for y in range(hh):
            for x in range(ww):
                for wd in range(nw):
                    lanes = pad[wd * G:(wd + 1) * G, y, x].tolist()
                    loads.append((Target.ACT, base + (y * ww + x) * nw + wd, pack(aw, lanes)))

    pixel_words(job.x, act_base)
    if job.residual is not None:
        ho, wo = job.out_hw
        if tuple(job.residual.shape) != (cout, ho, wo):
            raise KepError(f"{job.name}: residual must be [{cout}, {ho}, {wo}]")
        pixel_words(job.residual, res_base)
    ww_layout = weight_word(P)
    groups = cfg["groups"]
    vals = job.values.to(torch.int64)
    idx = job.index.to(torch.int64)
    for g in range(groups):
        for i in range(cin):
            for j in range(job.kept):
                elems = []
                for pe in range(P):
                    o = g * P + pe
                    if o < cout:
                        elems.append({"value": int(vals[o, i, j]), "index": int(idx[o, i, j])})
                    else:
                        elems.append({"value": 0, "index": 0})
                loads.append((Target.WT, wt_base + (g * cin + i) * job.kept + j,
                              pack(ww_layout, elems)))
    for o in range(groups * P):
        if o < cout:
            word = {"bias": int(job.bias[o]), "mult": int(job.mult[o]),
                    "shift": int(job.shift[o]), "res_mult": int(job.res_mult[o])}
        else:
            word = {"bias": 0, "mult": 0, "shift": 1, "res_mult": 0}
        loads.append((Target.PRM, prm_base + o, pack(ParamWord, word)))
    return cfg, loads


def expected_words(params: EngineParams, job: LayerJob, out: torch.Tensor) -> list[list[int]]:
    """Expected output transfers in stream order: per transfer the ``min(P, Cout - g*P)``
    valid int8 lanes."""
    P = params.pes
    cout, ho, wo = out.shape
    words = []
    for g in range(math.ceil(cout / P)):
        n = min(P, cout - g * P)
        for y in range(ho):
            for x in range(wo):
                words.append(out[g * P:g * P + n, y, x].to(torch.int64).tolist())
    return words


def decode_outputs(params: EngineParams, job: LayerJob, words: list[list[int]]) -> torch.Tensor:
    """Inverse of :func:`expected_words`: transfers (lists of lanes) -> int8 tensor."""
    P = params.pes
    ho, wo = job.out_hw
    cout = job.cout
    out = torch.zeros(cout, ho, wo, dtype=torch.int8)
    it = iter(words)
    for g in range(math.ceil(cout / P)):
        n = min(P, cout - g * P)
        for y in range(ho):
            for x in range(wo):
                out[g * P:g * P + n, y, x] = torch.tensor(next(it)[:n], dtype=torch.int8)
    return out


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


def dense_job(job: LayerJob) -> LayerJob:
    """The same layer in dense mode (all k*k elements, pruned ones as zero values)."""
    dense = expand_dense(job.values, job.index, job.k).reshape(job.cout, job.cin, -1)
    kk = job.k * job.k
    index = torch.arange(kk, dtype=torch.uint8).expand(job.cout, job.cin, kk).contiguous()
    return dataclasses.replace(job, values=dense.contiguous(), index=index, dense=True,
                               name=job.name + ":dense")


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
