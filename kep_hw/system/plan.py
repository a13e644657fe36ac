# SPDX-License-Identifier: Apache-2.0
"""From a ``.kep`` network to what the board runs: layer table, buffers, weight and param words.

Shared by the gateware generator (:mod:`kep_hw.system`, build time) and the host runtime
(:mod:`kep_hw.host.run`), so both agree on every address. The words are packed by
:mod:`kep_hw.gateware.images` (the same packer as the layer driver's), whose packers and the
word sizes of :mod:`kep_hw.gateware.layouts` are re-exported here.

On chip: every conv and max pooling layer of the network (a prefix of the layer list that
holds only these; max pooling 2x2 with stride 2 and no padding, :mod:`kep_hw.system.pool`),
then the head -- global average pooling and the classifier -- in exact integers
(``docs/arithmetic.md``, "Other operations"; :mod:`kep_hw.system.head`). :func:`run_tail` is
the same head on the host, the golden check of a returned feature map. Anything else raises
:class:`~kep_common.errors.KepError` naming the layer; the per-layer rules are those of
:mod:`kep_train.export.hardware`, which the exporter checks too.

Activations live in on-chip buffers (one memory each, words of ``lanes`` int8 channels of one
pixel, HWC order as ``docs/accelerator.md`` defines). Buffers are assigned by liveness: a
layer's output goes to a buffer whose tensor is no longer needed, so a ResNet needs four.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import torch

from kep_common.errors import KepError
from kep_train.export.hardware import layer_problems
from kep_train.golden.intarith import wrap_int32

from kep_hw.gateware.images import (pack_param_words, pack_weight_words, tensor_to_words,
                                    words_to_tensor)
from kep_hw.gateware.layouts import PARAM_WORD_BITS, WEIGHT_ELEM_BITS

__all__ = ["LayerPlan", "NetworkPlan", "plan_network", "pack_weight_words", "pack_param_words",
           "tensor_to_words", "words_to_tensor", "run_tail", "image_payload", "payload_image", "WEIGHT_ELEM_BITS",
           "PARAM_WORD_BITS"]


@dataclass
class LayerPlan:
    """One on-chip layer: its config registers, buffers and packed memory words.

    ``kind`` is ``"conv"`` (run by the engine) or ``"maxpool"`` (run by
    :class:`~kep_hw.system.pool.MaxPool`: no weights; ``cfg`` gives its shape in the engine's
    fields, ``cwi = cwo`` channel words per pixel)."""
    name: str
    cfg: dict
    src: int
    res: int | None
    dst: int
    wt_words: list
    prm_words: list
    kind: str = "conv"


@dataclass
class NetworkPlan:
    """Everything the system needs for one network at given ``po``/``lanes``.

    ``buffer_words[b]`` is the depth of activation buffer ``b``; ``input_buffer`` receives the
    image, ``output_buffer`` holds the last conv output; ``tail`` is the head (global average
    pool, then the classifier; empty for a network that ends in a conv layer).
    """
    po: int
    lanes: int
    layers: list
    buffer_words: list
    input_buffer: int
    output_buffer: int
    in_shape: tuple
    out_shape: tuple
    tail: list = field(default_factory=list)

    @property
    def conv_layers(self) -> list:
        """Indexes of the conv layers in :attr:`layers` (the ones that need weights)."""
        return [n for n, lp in enumerate(self.layers) if lp.kind == "conv"]

    @property
    def classes(self) -> int:
        """Logits the board returns (0: no head, the board returns the last conv output)."""
        return int(self.tail[-1].weight.shape[0]) if self.tail else 0

    def result_bytes(self, fmap: bool) -> int:
        """Payload bytes of a ``RESULT`` frame: cycles (u32), int32 logits and, when asked for
        (``IMAGE_FMAP``) or without a head, the last conv output."""
        with_fmap = fmap or not self.tail
        return 4 + 4 * self.classes + (self.out_words * self.lanes if with_fmap else 0)

    @property
    def weight_words(self) -> int:
        """Weight words of all layers (embedded mode depth)."""
        return sum(len(lp.wt_words) for lp in self.layers)

    @property
    def max_layer_weight_words(self) -> int:
        """Weight words of the largest layer (streamed mode depth)."""
        return max(len(lp.wt_words) for lp in self.layers)

    @property
    def param_words(self) -> int:
        """Parameter words of all layers."""
        return sum(len(lp.prm_words) for lp in self.layers)

    @property
    def max_layer_param_words(self) -> int:
        """Parameter words of the largest layer."""
        return max(len(lp.prm_words) for lp in self.layers)

    @property
    def in_words(self) -> int:
        """Activation words of the input image."""
        c, h, w = self.in_shape
        return h * w * math.ceil(c / self.lanes)

    @property
    def image_bytes(self) -> int:
        """Bytes of an ``IMAGE`` payload: the input tensor, C bytes per pixel."""
        c, h, w = self.in_shape
        return c * h * w

    @property
    def out_words(self) -> int:
        """Activation words of the last conv output."""
        c, h, w = self.out_shape
        return h * w * math.ceil(c / self.lanes)

    def model_id(self, streamed: bool) -> int:
        """32-bit fingerprint of the layer table (and weights when embedded)."""
        crc = zlib.crc32(repr((self.po, self.lanes, streamed,
                               [(lp.kind, lp.cfg, lp.src, lp.res, lp.dst) for lp in self.layers]))
                         .encode())
        if not streamed:
            for lp in self.layers:
                crc = zlib.crc32(repr((lp.wt_words, lp.prm_words)).encode(), crc)
        return crc

    def with_bases(self, streamed: bool) -> list:
        """Per-layer config dicts with ``wt_base``/``prm_base`` for the chosen mode."""
        out, wt, prm = [], 0, 0
        for lp in self.layers:
            cfg = dict(lp.cfg, act_base=0, res_base=0,
                       wt_base=0 if streamed else wt, prm_base=0 if streamed else prm)
            out.append(cfg)
            wt += len(lp.wt_words)
            prm += len(lp.prm_words)
        return out


def image_payload(x: torch.Tensor) -> bytes:
    """The ``IMAGE`` payload of an int8 image ``[C, H, W]``: HWC order, C bytes per pixel."""
    return x.to(torch.int8).permute(1, 2, 0).contiguous().numpy().tobytes()


def payload_image(data: bytes, shape: tuple) -> torch.Tensor:
    """The int8 image ``[C, H, W]`` of an ``IMAGE`` payload (inverse of
    :func:`image_payload`)."""
    c, h, w = shape
    return torch.frombuffer(bytearray(data), dtype=torch.int8).view(h, w, c).permute(2, 0, 1) \
        .contiguous()


def run_tail(tail: list, act: torch.Tensor) -> torch.Tensor:
    """Run the host-side layers (global average pool as an int32 sum, linear) on the int8
    output of the last conv layer ``[C, H, W]``; returns the int32 logits (as int64)."""
    x = act.to(torch.int64)
    for layer in tail:
        if layer.op == "avgpool":
            x = wrap_int32(x.sum(dim=(-1, -2)))
        elif layer.op == "linear":
            x = wrap_int32(layer.bias.to(torch.int64) + layer.weight.to(torch.int64) @ x)
        else:
            raise KepError(f"layer {layer.name!r}: {layer.op!r} cannot run on the host tail")
    return x


def plan_network(kep, *, po: int, lanes: int) -> NetworkPlan:
    """Plan a whole network for the board.

    Parameters
    ----------
    kep : kep_train.export.kepfile.KepModel
        The network.
    po, lanes : int
        Po output channels per group (the engine's P / Px) and G channels per activation word
        (``po % lanes == 0``).

    Returns
    -------
    NetworkPlan

    Raises
    ------
    KepError
        If the network has an operation the board cannot run (conv layers must come first,
        then only avgpool/linear), or a conv shape outside the engine's support.
    """
    if po < 1 or lanes < 1 or po % lanes:
        raise KepError(f"Po {po} (output channels per group: --pes / Px) must be a positive "
                       f"multiple of the {lanes} lanes")
    convs, tail = [], []
    for layer in kep.layers:
        if layer.op in ("conv", "maxpool") and not tail:
            convs.append(layer)
        elif (layer.op, len(tail)) in (("avgpool", 0), ("linear", 1)) and convs:
            tail.append(layer)
        else:
            raise KepError(f"layer {layer.name!r}: {layer.op!r} is not supported by the board "
                           "system (conv layers, then global average pooling and one linear "
                           "classifier)")
    if not any(layer.op == "conv" for layer in convs):
        raise KepError("the network has no conv layer")
    if len(tail) == 1:
        raise KepError(f"layer {tail[0].name!r}: global average pooling without a classifier "
                       "is not supported by the board system")
    if tail and (tail[0].input != convs[-1].name or tail[1].input != tail[0].name):
        raise KepError(f"layer {tail[0].name!r}: the head must read the last layer's output")
    words = {"input": None}
    c, h, w = convs[0].in_shape
    words["input"] = h * w * math.ceil(c / lanes)
    last_use = {}
    for n, layer in enumerate(convs):
        for name in (layer.input, layer.residual):
            if name is not None:
                if name not in words:
                    raise KepError(f"layer {layer.name!r} reads {name!r}, which is not on chip")
                last_use[name] = n
        c, h, w = layer.out_shape
        words[layer.name] = h * w * math.ceil(c / lanes)
    last_use[convs[-1].name] = len(convs)
    holder, sizes = [], []          # buffer -> tensor name, buffer -> depth
    where = {}

    def alloc(name, now):
        for b, t in enumerate(holder):
            if t is None or last_use.get(t, -1) < now:
                holder[b] = name
                sizes[b] = max(sizes[b], words[name])
                where[name] = b
                return b
        holder.append(name)
        sizes.append(words[name])
        where[name] = len(holder) - 1
        return where[name]

    alloc("input", -1)
    layers = []
    for n, layer in enumerate(convs):
        k, s, p = layer.kernel_size, layer.stride, layer.padding
        problems = layer_problems(layer)           # the accelerator's rules, one place
        if problems:
            raise KepError(f"layer {layer.name!r}: {'; '.join(problems)}")
        if layer.op == "maxpool":
            c, h, w = layer.in_shape
            _, ho, wo = layer.out_shape
            dst = alloc(layer.name, n)
            cw = math.ceil(c / lanes)
            cfg = dict(cin=c, cout=c, h=h, w=w, ho=ho, wo=wo, cwi=cw, cwo=cw,
                       groups=math.ceil(c / po), k=1, kk=1, stride=1, pad=0, relu=0,
                       residual=0, dense=0)
            layers.append(LayerPlan(name=layer.name, cfg=cfg, src=where[layer.input], res=None,
                                    dst=dst, wt_words=[], prm_words=[], kind="maxpool"))
            continue
        values, index = layer.planes()
        K = int(values.shape[2])
        cout, cin = int(values.shape[0]), int(values.shape[1])
        _, h, w = layer.in_shape
        _, ho, wo = layer.out_shape
        # protect the inputs of this layer while choosing its output buffer
        saved = dict(last_use)
        for name in (layer.input, layer.residual):
            if name is not None:
                last_use[name] = max(last_use[name], n)
        dst = alloc(layer.name, n)
        last_use.update({kk: max(v, saved.get(kk, v)) for kk, v in last_use.items()})
        cfg = dict(cin=cin, cout=cout, h=h, w=w, ho=ho, wo=wo, cwi=math.ceil(cin / lanes),
                   cwo=math.ceil(cout / lanes), groups=math.ceil(cout / po), k=k, kk=K,
                   stride=s, pad=p, relu=int(bool(layer.relu)),
                   residual=int(layer.residual is not None), dense=0)
        layers.append(LayerPlan(
            name=layer.name, cfg=cfg, src=where[layer.input],
            res=where[layer.residual] if layer.residual is not None else None, dst=dst,
            wt_words=pack_weight_words(values, index, po),
            prm_words=pack_param_words(layer, po)))
    return NetworkPlan(po=po, lanes=lanes, layers=layers, buffer_words=sizes,
                       input_buffer=where["input"], output_buffer=where[convs[-1].name],
                       in_shape=tuple(convs[0].in_shape), out_shape=tuple(convs[-1].out_shape),
                       tail=tail)
