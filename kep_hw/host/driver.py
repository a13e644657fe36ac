# SPDX-License-Identifier: Apache-2.0
"""Host side of the engine: memory images, configuration, golden outputs of one layer.

Everything a testbench (amaranth.sim or cocotb) or a system needs to run one layer: a
:class:`LayerJob` holds one layer's integer tensors; :func:`layer_program` turns it into the load
words of :class:`kep_hw.gateware.layer_top.LayerTop` (packed by :mod:`kep_hw.gateware.images`)
and the configuration register values; :func:`expected_words` and :func:`decode_outputs` map
between the output stream and tensors. Random layers for tests: :mod:`kep_hw.testing`.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from kep_common.errors import KepError
from kep_train.golden.sparseconv import check_sparse_planes, expand_dense, sparse_conv2d

from kep_hw.gateware.images import pack_param_words, pack_weight_words, tensor_to_words
from kep_hw.gateware.layouts import Target
from kep_hw.gateware.params import EngineParams, layer_config
from kep_hw.gateware.perf import LayerShape

__all__ = ["LayerJob", "layer_program", "golden", "expected_words", "decode_outputs",
           "dense_job"]


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
        return self.shape.out_hw

    @property
    def shape(self) -> LayerShape:
        """The layer's shape, for the cycle model :mod:`kep_hw.gateware.perf`."""
        return LayerShape(cin=self.cin, cout=self.cout, h=int(self.x.shape[1]),
                          w=int(self.x.shape[2]), k=self.k, kept=self.kept, stride=self.stride,
                          pad=self.pad)


def golden(job: LayerJob) -> torch.Tensor:
    """int8 ``[Cout, Ho, Wo]`` from :func:`kep_train.golden.sparseconv.sparse_conv2d`."""
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
    ho, wo = job.out_hw
    if job.residual is not None and tuple(job.residual.shape) != (cout, ho, wo):
        raise KepError(f"{job.name}: residual must be [{cout}, {ho}, {wo}]")
    images = [(Target.ACT, act_base, tensor_to_words(job.x, G))]
    if job.residual is not None:
        images.append((Target.ACT, res_base, tensor_to_words(job.residual, G)))
    images += [(Target.WT, wt_base, pack_weight_words(job.values, job.index, P)),
               (Target.PRM, prm_base, pack_param_words(job, P))]
    loads = [(target, base + n, word) for target, base, words in images
             for n, word in enumerate(words)]
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


def dense_job(job: LayerJob) -> LayerJob:
    """The same layer in dense mode (all k*k elements, pruned ones as zero values)."""
    dense = expand_dense(job.values, job.index, job.k).reshape(job.cout, job.cin, -1)
    kk = job.k * job.k
    index = torch.arange(kk, dtype=torch.uint8).expand(job.cout, job.cin, kk).contiguous()
    return dataclasses.replace(job, values=dense.contiguous(), index=index, dense=True,
                               name=job.name + ":dense")
