# SPDX-License-Identifier: Apache-2.0
"""From a ``.kep`` network to what the board runs: layer table, buffers, weight and param words.

Shared by the gateware generator (:mod:`kep_hw.system`, build time) and the host runtime
(:mod:`kep_hw.run`), so both agree on every address. No Amaranth import here.

On chip: every conv layer of the network (a prefix of the layer list that holds only conv
layers). The rest -- global average pooling and the classifier -- runs on the host in exact
integers (``docs/arithmetic.md``, "Other operations"). Max pooling between conv layers is not
supported on chip (the plan raises :class:`~kep_train.errors.KepError`).

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
from kep_train.golden.intarith import wrap_int32

__all__ = ["LayerPlan", "NetworkPlan", "plan_network", "pack_weight_words", "pack_param_words",
           "tensor_to_words", "words_to_tensor", "run_tail", "WEIGHT_ELEM_BITS",
           "PARAM_WORD_BITS"]

WEIGHT_ELEM_BITS = 12      # value signed(8) | index unsigned(4) << 8
PARAM_WORD_BITS = 78       # bias s32 | mult u16 | shift u6 | res_mult u24


@dataclass
class LayerPlan:
    """One on-chip conv layer: its config registers, buffers and packed memory words."""
    name: str
    cfg: dict
    src: int
    res: int | None
    dst: int
    wt_words: list
    prm_words: list


@dataclass
class NetworkPlan:
    """Everything the system needs for one network at given ``po``/``lanes``.

    ``buffer_words[b]`` is the depth of activation buffer ``b``; ``input_buffer`` receives the
    image, ``output_buffer`` holds the last conv output; ``tail`` are the host-side layers.
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
    def out_words(self) -> int:
        """Activation words of the last conv output."""
        c, h, w = self.out_shape
        return h * w * math.ceil(c / self.lanes)

    def model_id(self, streamed: bool) -> int:
        """32-bit fingerprint of the layer table (and weights when embedded)."""
        crc = zlib.crc32(repr((self.po, self.lanes, streamed,
                               [(lp.cfg, lp.src, lp.res, lp.dst) for lp in self.layers]))
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


def pack_weight_words(values: torch.Tensor, index: torch.Tensor, po: int) -> list:
    """Weight words of a layer (``docs/accelerator.md``): word ``(g*Cin + i)*K + j`` holds, in
    lane ``p``, ``(value, index)`` of output channel ``g*P + p`` (zeros past ``Cout``)."""
    cout, cin, k = values.shape
    groups = math.ceil(cout / po)
    v = torch.zeros(groups * po, cin, k, dtype=torch.int64)
    x = torch.zeros(groups * po, cin, k, dtype=torch.int64)
    v[:cout] = values.to(torch.int64)
    x[:cout] = index.to(torch.int64)
    elem = (v & 0xFF) | (x << 8)                                 # [G*P, Cin, K]
    elem = elem.reshape(groups, po, cin, k).permute(0, 2, 3, 1).reshape(-1, po).tolist()
    words = []
    for lanes in elem:
        w = 0
        for p, e in enumerate(lanes):
            w |= e << (WEIGHT_ELEM_BITS * p)
        words.append(w)
    return words


def pack_param_words(layer, po: int) -> list:
    """Parameter words of a layer, one per output channel, padded to whole groups with 0."""
    cout = int(layer.bias.shape[0])
    res_mult = layer.res_mult if layer.res_mult is not None else torch.zeros(cout)
    words = []
    for o in range(math.ceil(cout / po) * po):
        if o >= cout:
            words.append(0)
            continue
        words.append((int(layer.bias[o]) & 0xFFFFFFFF) | (int(layer.mult[o]) << 32)
                     | (int(layer.shift[o]) << 48) | (int(res_mult[o]) << 54))
    return words


def tensor_to_words(x: torch.Tensor, lanes: int) -> list:
    """int8 ``[C, H, W]`` -> activation words (HWC, ``lanes`` channels per word, LSB lane 0)."""
    c, h, w = x.shape
    cw = math.ceil(c / lanes)
    pad = torch.zeros(cw * lanes, h, w, dtype=torch.int64)
    pad[:c] = x.to(torch.int64) & 0xFF
    flat = pad.permute(1, 2, 0).reshape(h * w * cw, lanes).tolist()
    return [sum(b << (8 * i) for i, b in enumerate(row)) for row in flat]


def words_to_tensor(words: list, shape: tuple, lanes: int) -> torch.Tensor:
    """Inverse of :func:`tensor_to_words`: activation words -> int8 ``[C, H, W]``."""
    c, h, w = shape
    cw = math.ceil(c / lanes)
    if len(words) != h * w * cw:
        raise KepError(f"expected {h * w * cw} activation words, got {len(words)}")
    t = torch.tensor([[(wd >> (8 * i)) & 0xFF for i in range(lanes)] for wd in words],
                     dtype=torch.int64)
    t = torch.where(t >= 128, t - 256, t)
    return t.reshape(h, w, cw * lanes).permute(2, 0, 1)[:c].to(torch.int8).contiguous()


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
    kep : kep_train.kepfile.KepModel
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
        if layer.op == "conv" and not tail:
            convs.append(layer)
        elif layer.op in ("avgpool", "linear") and convs:
            tail.append(layer)
        else:
            raise KepError(f"layer {layer.name!r}: {layer.op!r} is not supported by the board "
                           "system (conv layers on chip, then avgpool/linear on the host)")
    if not convs:
        raise KepError("the network has no conv layer")
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
        values, index = layer.planes()
        K = int(values.shape[2])
        cout, cin = int(values.shape[0]), int(values.shape[1])
        if k not in (1, 3) or s not in (1, 2) or p not in (0, 1) or K > k * k:
            raise KepError(f"layer {layer.name!r}: kernel {k}, stride {s}, padding {p}, K {K} "
                           "not supported on chip (k 1 or 3, stride 1/2, padding 0/1)")
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
