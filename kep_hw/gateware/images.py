# SPDX-License-Identifier: Apache-2.0
"""Memory images of the engine: activation, weight and parameter words from integer tensors.

The one packer of these words (``docs/accelerator.md``, "Layouts" and "Addresses"), built on
:mod:`kep_hw.gateware.layouts`; the board plan (:mod:`kep_hw.system.plan`) and the layer driver
(:mod:`kep_hw.host.driver`) both use it. Padding: lanes and channels that hold no data (past
``Cout`` in the last group of Po output channels, past ``C`` in the last activation word) are
0, parameter words included; no output depends on them.
"""

from __future__ import annotations

import math

import torch

from kep_common.errors import KepError

from kep_hw.gateware.layouts import ParamWord, act_word, pack, unpack, weight_word

__all__ = ["pack_weight_words", "pack_param_words", "tensor_to_words", "words_to_tensor"]


def pack_weight_words(values: torch.Tensor, index: torch.Tensor, po: int) -> list[int]:
    """Weight words of one layer.

    Parameters
    ----------
    values, index : torch.Tensor
        int8 values and their plane positions ``[Cout, Cin, K]``.
    po : int
        Po, output channels per group (lanes of a weight word).

    Returns
    -------
    list of int
        Word ``(g*Cin + i)*K + j`` holds, in lane ``p``, element ``j`` of output channel
        ``g*Po + p`` and input channel ``i``; lanes past ``Cout`` are 0.
    """
    cout, cin, k = values.shape
    groups = math.ceil(cout / po)
    v = torch.zeros(groups * po, cin, k, dtype=torch.int64)
    x = torch.zeros(groups * po, cin, k, dtype=torch.int64)
    v[:cout] = values.to(torch.int64)
    x[:cout] = index.to(torch.int64)
    # [G*Po, Cin, K] -> one row of Po lanes per word, in word order
    v = v.reshape(groups, po, cin, k).permute(0, 2, 3, 1).reshape(-1, po).tolist()
    x = x.reshape(groups, po, cin, k).permute(0, 2, 3, 1).reshape(-1, po).tolist()
    layout = weight_word(po)
    return [pack(layout, [{"value": a, "index": b} for a, b in zip(vs, xs)])
            for vs, xs in zip(v, x)]


def pack_param_words(layer, po: int) -> list[int]:
    """Parameter words of one layer, one per output channel, padded to whole groups.

    Parameters
    ----------
    layer
        Anything with the ``[Cout]`` tensors ``bias``, ``mult``, ``shift`` and ``res_mult``
        (``None``: all 0), e.g. a :class:`kep_train.export.kepfile.KepLayer` or a
        :class:`kep_hw.host.driver.LayerJob`.
    po : int
        Po, output channels per group.

    Returns
    -------
    list of int
        ``ceil(Cout/Po)*Po`` :data:`~kep_hw.gateware.layouts.ParamWord` words; those past
        ``Cout`` are 0.
    """
    cout = int(layer.bias.shape[0])
    res_mult = layer.res_mult if layer.res_mult is not None else torch.zeros(cout)
    fields = zip(*(t.to(torch.int64).tolist()
                   for t in (layer.bias, layer.mult, layer.shift, res_mult)))
    words = [pack(ParamWord, {"bias": b, "mult": m, "shift": s, "res_mult": r})
             for b, m, s, r in fields]
    return words + [0] * (math.ceil(cout / po) * po - cout)


def tensor_to_words(x: torch.Tensor, lanes: int) -> list[int]:
    """int8 ``[C, H, W]`` -> activation words: word ``(y*W + x)*ceil(C/lanes) + c//lanes``
    holds channel ``c`` in lane ``c % lanes`` (missing channels of the last word: 0)."""
    c, h, w = x.shape
    cw = math.ceil(c / lanes)
    pad = torch.zeros(cw * lanes, h, w, dtype=torch.int64)
    pad[:c] = x.to(torch.int64)
    layout = act_word(lanes)
    rows = pad.permute(1, 2, 0).reshape(h * w * cw, lanes).tolist()
    return [pack(layout, row) for row in rows]


def words_to_tensor(words: list[int], shape: tuple, lanes: int) -> torch.Tensor:
    """Inverse of :func:`tensor_to_words`: activation words -> int8 ``[C, H, W]``.

    Raises
    ------
    KepError
        If the number of words does not match ``shape``.
    """
    c, h, w = shape
    cw = math.ceil(c / lanes)
    if len(words) != h * w * cw:
        raise KepError(f"expected {h * w * cw} activation words, got {len(words)}")
    layout = act_word(lanes)
    t = torch.tensor([unpack(layout, wd) for wd in words], dtype=torch.int64)
    return t.reshape(h, w, cw * lanes).permute(2, 0, 1)[:c].to(torch.int8).contiguous()
