# SPDX-License-Identifier: Apache-2.0
"""Cycle model of the engine (``docs/accelerator.md``), output stream always ready.

Per output-channel group the engine computes every block of ``nv <= Px`` horizontally adjacent
output pixels (``nv = Px`` except at the end of a row); a block takes one MAC cycle per (input
channel, kept element). The window fetcher supplies a block window (G channels) every
``k * ncols`` cycles (``ncols = (Px-1)*stride + 3`` for 3x3, ``Px`` for 1x1, short blocks
too) from a two-entry FIFO, so a channel word costs ``max(nch * K, k * ncols)`` cycles (or
half of both plus the FIFO's loop latency when they are close), and the requantization unit
needs ``nv * Po/L`` issue cycles per block (L its lanes). Groups follow each other without a drain: the next
group's parameters load into a second bank while a group runs.
"""

from __future__ import annotations

import dataclasses
import math

from kep_hw.gateware.params import EngineParams
from kep_hw.gateware.requant import LEAD, PIPE

__all__ = ["LayerShape", "layer_cycles", "block_cycles", "reuses_columns", "ideal_cycles",
           "useful_macs", "fetch_cycles"]

# pipeline constants, from the RTL (see the docstrings of engine.py / requant.py / fetch.py;
# every memory read takes READ_LATENCY = 2 cycles, the MAC pipeline S0-S4 and the
# requantization pipeline P-R9)
_START = 3          # start -> LOAD, LOAD -> RUN hand-over
_BANK_EXTRA = 2     # hand-over of the bank: shadow freed -> load starts -> ready
_END = 3 + PIPE + LEAD  # last MAC of the layer -> last output transferred (+ nv * Po/L)
_RQ_EXTRA = 5       # a block's shadow register is free LEAD + 1 + 5 cycles after its last
                    # MAC (the requantization unit's first R0 takes it), its parameter bank
                    # nv * Po/L + LEAD + 5 cycles after it (the last R0)
_LOAD_EXTRA = 3     # Po parameter reads, the last one's data READ_LATENCY cycles later
_FETCH_EXTRA = 6    # the first window is complete k * ncols + 6 cycles after start (the
                    # fetcher's two init cycles: its row product, then its base addresses)
_FIFO_LOOP = 3      # two windows in flight: fetch + MAC + 3 cycles for both (on average)


def _extra_stages(params: EngineParams) -> int:
    """MAC stages beyond S0-S4 up to the shadow register: S1W (the weight word's registers
    after its block RAMs, always), S1D and S1E (EngineParams.dist_reg), S2R
    (EngineParams.operand_reg)
    and, in a chain of pixel groups (EngineParams.chain), the last group's Px - 1 cycles
    behind group 0; each one delays the shadow register's hand-over, so _RQ_EXTRA and _END
    grow by one cycle per stage."""
    return (1 + 2 * int(params.dist_reg) + int(params.operand_reg)
            + params.skew(params.px - 1))


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """Shape of one convolution layer (batch of one).

    Parameters
    ----------
    cin, cout, h, w : int
        Channels and input size.
    k : int
        Kernel size (1 or 3).
    kept : int
        K, kept elements per plane (``k*k`` for dense mode).
    stride, pad : int
        Stride and zero padding.
    """

    cin: int
    cout: int
    h: int
    w: int
    k: int = 3
    kept: int = 4
    stride: int = 1
    pad: int = 1

    @classmethod
    def from_layer(cls, layer) -> "LayerShape":
        """The shape of a conv layer of a ``.kep`` model
        (:class:`kep_train.export.kepfile.KepLayer`)."""
        cin, h, w = layer.in_shape
        return cls(cin=cin, cout=layer.out_shape[0], h=h, w=w, k=layer.kernel_size,
                   kept=layer.K, stride=layer.stride, pad=layer.padding)

    @property
    def out_hw(self) -> tuple[int, int]:
        return ((self.h + 2 * self.pad - self.k) // self.stride + 1,
                (self.w + 2 * self.pad - self.k) // self.stride + 1)


def useful_macs(shape: LayerShape) -> int:
    """Non-zero MACs: ``Ho * Wo * Cout * Cin * K``."""
    ho, wo = shape.out_hw
    return ho * wo * shape.cout * shape.cin * shape.kept


def ideal_cycles(shape, params) -> float:
    """Useful MACs / P: the lower bound on the cycles of a layer or of several (a network).

    Parameters
    ----------
    shape : LayerShape or iterable of LayerShape
        The layer, or the layers whose MACs add up.
    params : EngineParams or int
        The engine, or just its P.
    """
    shapes = [shape] if isinstance(shape, LayerShape) else shape
    pes = params if isinstance(params, int) else params.pes
    return sum(useful_macs(s) for s in shapes) / pes


def reuses_columns(shape: LayerShape, params: EngineParams) -> bool:
    """Whether the window fetcher reuses columns in this layer: ``Px > 1``, 3x3, one channel
    word (``Cin <= G``); every block of a row but the first then reads 2 columns (stride 1)
    or 1 column (stride 2) fewer per window row."""
    return params.px > 1 and shape.k == 3 and shape.cin <= params.lanes


def fetch_cycles(shape: LayerShape, params: EngineParams) -> int:
    """Reads of one block window (one channel word), every column: ``3 * ((Px-1)*stride + 3)``
    for 3x3, ``Px`` for 1x1. A short block (the end of a row) reads as many: its extra
    columns lie outside the image, so they read as zeros without a memory access."""
    if shape.k == 3:
        return 3 * ((params.px - 1) * shape.stride + 3)
    return params.px


def block_cycles(shape: LayerShape, params: EngineParams, nv: int, *,
                 handover: bool = True) -> float:
    """Cycles of one block of ``nv`` output pixels (MAC-, fetch- or requantization-bound; a
    mean, so it may be fractional), every column read (a layer with column reuse,
    :func:`reuses_columns`, is modelled row by row instead). ``handover=False``: the MACs
    and the fetch alone, without the bound of the shadow register's hand-over."""
    G = params.lanes
    keff = max(shape.kept, 1)
    # every block reads a whole block's window (a short block's extra columns lie outside
    # the image: zeros, without a memory access), so its columns land where the engine reads
    fetch = fetch_cycles(shape, params)
    cyc = 0
    left = shape.cin
    while left > 0:
        nch = min(G, left)
        # a window buffer is free again only after the MACs of the window before the last
        # one; the window's data lands READ_LATENCY + 1 cycles after its last read
        cyc += max(nch * keff, fetch, (fetch + nch * keff + _FIFO_LOOP) / 2)
        left -= nch
    return max(cyc, _handover_cycles(params, nv)) if handover else cyc


def _handover_cycles(params: EngineParams, nv: int) -> int:
    """Cycles from a block's last MAC to the next block's, when the shadow register's
    hand-over or the requantization bounds them: the MAC pipeline to the shadow register, the
    requantization unit's decision and its LEAD stages to the first R0 (which frees the shadow
    register), or the unit's ``nv * Po/L`` issues, whichever is longer."""
    return max(nv * (params.po // params.rq_lanes),
               LEAD + 1 + _RQ_EXTRA + _extra_stages(params))


def _reuse_row_cycles(shape: LayerShape, params: EngineParams) -> float:
    """Cycles of one output row of a layer with column reuse (:func:`reuses_columns`: one
    window per block), from the window FIFO's timing: window ``i``'s reads start once window
    ``i - 2`` is popped (two windows owned at most) and its own reads before it are issued;
    it becomes the head the cycle after window ``i - 1``'s pop and 3 cycles after its last
    read; its MACs take ``nch * K`` cycles. A row's first block reads every column but its
    left padding column (when ``pad = 1``), the others 2 (stride 1) or 1 (stride 2) fewer per
    window row, so a row's first block is late by the reads its predecessor could not
    overlap. The cost of the third of three rows in a row."""
    PX = params.px
    ho, wo = shape.out_hw
    full, rest = divmod(wo, PX)
    nvs = [PX] * full + ([rest] if rest else [])
    macs = min(shape.cin, params.lanes) * max(shape.kept, 1)
    ov = 2 if shape.stride == 1 else 1
    lead = 1 if shape.pad else 0     # a row's first block skips its padding column
    e_prev, p_prev, p_prev2 = 0, 0, -10 ** 6
    row_end = []
    for _ in range(3):
        for b, nv in enumerate(nvs):
            reads = 3 * ((PX - 1) * shape.stride + 3 - (ov if b else lead))
            start = max(e_prev, p_prev2 + 1)
            e_prev = start + reads
            head = max(p_prev + 1, e_prev + 3)
            pop = max(head + macs - 1, p_prev + _handover_cycles(params, nv))
            p_prev2, p_prev = p_prev, pop
        row_end.append(p_prev)
    return row_end[2] - row_end[1]


def layer_cycles(shape: LayerShape, params: EngineParams) -> int:
    """Predicted cycles from ``start`` to the last output transfer (LayerTop ``cycles``).

    Parameters
    ----------
    shape : LayerShape
        The layer.
    params : EngineParams
        The engine.

    Returns
    -------
    int
        Predicted cycle count.
    """
    PO, PX = params.po, params.px
    ho, wo = shape.out_hw
    groups = math.ceil(shape.cout / PO)
    full, rest = divmod(wo, PX)
    if reuses_columns(shape, params):
        row = _reuse_row_cycles(shape, params)
    else:
        row = full * block_cycles(shape, params, PX)
        if rest:
            row += block_cycles(shape, params, rest)
    load = PO + _LOAD_EXTRA
    rq_last = (rest or PX) * (PO // params.rq_lanes)  # requant issue of a row's last block
    # the first window arrives k * ncols + 5 cycles after start; the first MAC waits for it
    first_fetch = fetch_cycles(shape, params)
    if reuses_columns(shape, params) and shape.pad:
        first_fetch -= 3                   # the padding column is not read
    first = max(_START + load, first_fetch + _FETCH_EXTRA)
    # the next group's parameters load into the other bank while a group runs, once the
    # previous group's last block has left the shadow register: a group shorter than that
    # waits for them
    ready = _RQ_EXTRA + _extra_stages(params) + rq_last + LEAD + load + _BANK_EXTRA
    stall = max(0, ready - ho * row)
    end = _END + _extra_stages(params)
    # a layer bound by the hand-over: the layer's first block costs its MACs only (the
    # hand-over interval is counted from one block's last MAC to the next one's)
    nv0 = min(PX, wo)
    if reuses_columns(shape, params):
        # a fetch-bound layer: its last window costs its MACs only (no window after it to
        # read); the row model counts its reads
        ov = (2 if shape.stride == 1 else 1) if full + bool(rest) > 1 else int(shape.pad != 0)
        over = max(0, fetch_cycles(shape, params) - 3 * ov
                   - min(shape.cin, params.lanes) * max(shape.kept, 1))
    else:
        over = max(0, _handover_cycles(params, nv0)
                   - block_cycles(shape, params, nv0, handover=False))
    return round(first + groups * ho * row + (groups - 1) * stall + end + rq_last - over)
