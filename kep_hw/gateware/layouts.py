# SPDX-License-Identifier: Apache-2.0
"""Data layouts of the engine's words and registers (one place, shared by RTL and testbenches).

See ``docs/accelerator.md`` for the meaning of every field. Layouts that depend on the engine's
size take its :class:`~kep_hw.gateware.params.EngineParams` (only its attributes are read).
:func:`pack` / :func:`unpack` convert between Python values and the integer bits of a layout;
host code and testbenches use them instead of shifting bits by hand.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import TYPE_CHECKING

from amaranth.hdl import Shape, signed, unsigned
from amaranth.lib import data, enum

if TYPE_CHECKING:
    from kep_hw.gateware.params import EngineParams

__all__ = ["WeightElem", "ParamWord", "WEIGHT_ELEM_BITS", "PARAM_WORD_BITS", "Target",
           "act_word", "weight_word", "WT_COLUMN_CHANNELS", "wt_columns", "out_word", "layer_config", "load_word", "load_layout",
           "window_cols", "window_word", "plane_word", "acc_word", "ErrorReport", "pack", "unpack"]

#: One kept kernel element: int8 value and its position ``r*k + c`` in the 3x3 plane.
WeightElem = data.StructLayout({"value": signed(8), "index": unsigned(4)})

#: Per-output-channel requantization parameters (``docs/arithmetic.md``).
ParamWord = data.StructLayout({
    "bias": signed(32),
    "mult": unsigned(16),
    "shift": unsigned(6),
    "res_mult": unsigned(24),
})

#: An error the system reports in an ``ERROR`` frame: error code and the offending frame type
#: (``docs/boards.md``, the protocol).
ErrorReport = data.StructLayout({"code": unsigned(8), "type": unsigned(8)})

#: Bits of one :data:`WeightElem` (a weight word of Po lanes has ``Po * WEIGHT_ELEM_BITS``).
WEIGHT_ELEM_BITS = WeightElem.size
#: Bits of one :data:`ParamWord`.
PARAM_WORD_BITS = ParamWord.size


class Target(enum.Enum, shape=2):
    """Which memory a load word of :class:`kep_hw.gateware.layer_top.LayerTop` writes."""
    ACT = 0
    WT = 1
    PRM = 2


def act_word(lanes: int) -> data.ArrayLayout:
    """Activation / residual word: ``lanes`` int8 channels of one pixel."""
    return data.ArrayLayout(signed(8), lanes)


def weight_word(pes: int) -> data.ArrayLayout:
    """Weight word: one :data:`WeightElem` per PE."""
    return data.ArrayLayout(WeightElem, pes)


#: Output channels per weight column memory: a weight memory is split into columns of this many
#: :data:`WeightElem` (3 x 12 = 36 bits, two 18-bit block RAMs side by side), each read at its own
#: copy of the weight address (the engine's ``wt_addr``), so that no address register drives
#: every weight block RAM of the die.
WT_COLUMN_CHANNELS = 3


def wt_columns(po: int) -> list[range]:
    """The weight column memories of a ``po``-channel weight word: the channels (word lanes)
    each one holds, in order."""
    return [range(lo, min(lo + WT_COLUMN_CHANNELS, po)) for lo in range(0, po, WT_COLUMN_CHANNELS)]


def out_word(pes: int) -> data.StructLayout:
    """Output transfer: ``pes`` int8 output channels of one pixel, ``last`` on the final one."""
    return data.StructLayout({"data": data.ArrayLayout(signed(8), pes), "last": 1})


def layer_config(*, chan_bits: int, dim_bits: int, group_bits: int, act_bits: int,
                 wt_bits: int, prm_bits: int) -> data.StructLayout:
    """Layer configuration registers (field widths from the engine parameters)."""
    return data.StructLayout({
        "cin": chan_bits, "cout": chan_bits,
        "h": dim_bits, "w": dim_bits, "ho": dim_bits, "wo": dim_bits,
        "cwi": chan_bits, "cwo": chan_bits, "groups": group_bits,
        "k": 2, "kk": 4, "stride": 2, "pad": 2,
        "relu": 1, "residual": 1, "dense": 1,
        "act_base": act_bits, "res_base": act_bits, "wt_base": wt_bits, "prm_base": prm_bits,
    })


def load_word(*, addr_bits: int, data_bits: int) -> data.StructLayout:
    """Load-stream payload of :class:`kep_hw.gateware.layer_top.LayerTop`."""
    return data.StructLayout({"target": Target, "addr": addr_bits, "data": data_bits})


def load_layout(params: EngineParams) -> data.StructLayout:
    """Payload of the ``load`` stream of :class:`kep_hw.gateware.layer_top.LayerTop`: a word of
    any of its memories (the widest decides ``data``) and its address."""
    width = max(act_word(params.lanes).size, weight_word(params.po).size, ParamWord.size)
    addr = max(params.act_bits, params.wt_bits, params.prm_bits)
    return load_word(addr_bits=addr, data_bits=width)


def window_cols(px: int) -> int:
    """Columns of a block's window buffer: ``(px-1)*2 + 3`` (stride 2, the widest)."""
    return 2 * px + 1


def window_word(lanes: int, px: int = 1) -> data.StructLayout:
    """One block window of :class:`kep_hw.gateware.fetch.WindowFetcher`: ``lanes`` channels x
    ``3 * window_cols(px)`` positions, valid channel count and pixel flags."""
    return data.StructLayout({
        "win": data.ArrayLayout(data.ArrayLayout(signed(8), 3 * window_cols(px)), lanes),
        "nch": range(lanes + 1),
        "first": 1,       # first channel word of the output block
        "last": 1,        # last channel word of the output block
    })


def plane_word(lanes: int, px: int = 1) -> data.StructLayout:
    """The head of :class:`kep_hw.gateware.fetch.WindowFetcher`'s window stream: one channel
    (plane) of a block window, ``3 * window_cols(px)`` positions, with the window's valid
    channel count and pixel flags."""
    return data.StructLayout({
        "win": data.ArrayLayout(signed(8), 3 * window_cols(px)),
        "nch": range(lanes + 1),
        "first": 1,       # first channel word of the output block
        "last": 1,        # last channel word of the output block
    })


def acc_word(params: EngineParams) -> data.StructLayout:
    """Input of :class:`kep_hw.gateware.requant.Requant`: accumulators of one block of output
    pixels, the residual word address of its first pixel, its valid pixel count and the
    layer-end flag."""
    return data.StructLayout({
        "acc": data.ArrayLayout(signed(32), params.pes),
        "res_addr": params.act_bits,
        "nv": range(params.px + 1),
        "last": 1,
    })


def pack(layout, obj) -> int:
    """Pack a Python value into the integer bits of ``layout``.

    The same bits as ``Layout.cast(layout).const(obj)``: a struct takes a mapping (missing
    fields 0), an array a sequence (missing elements 0), a field an integer, bool or enum
    member, truncated to the field's width.

    Raises
    ------
    ValueError
        For a field or element the layout does not have.
    TypeError
        For a value of the wrong kind (e.g. a float).
    """
    layout = data.Layout.cast(layout)
    bits = 0
    if isinstance(layout, data.ArrayLayout):
        if isinstance(obj, Mapping) or len(obj) > layout.length:
            raise ValueError(f"{layout!r} has {layout.length} elements, got {obj!r}")
        size = _size(layout.elem_shape)
        for i, value in enumerate(obj):
            bits |= _pack_field(layout.elem_shape, value) << (i * size)
        return bits
    if not isinstance(obj, Mapping):
        raise TypeError(f"{layout!r} needs a mapping, got {obj!r}")
    for name, value in obj.items():
        try:
            f = layout[name]
        except KeyError:
            raise ValueError(f"{layout!r} has no field {name!r}") from None
        bits |= _pack_field(f.shape, value) << f.offset
    return bits


def unpack(layout, bits: int):
    """Unpack integer ``bits`` into nested Python ints / lists / dicts following ``layout``."""
    layout = data.Layout.cast(layout)
    if isinstance(layout, data.ArrayLayout):
        size = _size(layout.elem_shape)
        return [_field(layout.elem_shape, bits >> (i * size)) for i in range(layout.length)]
    return {name: _field(f.shape, bits >> f.offset) for name, f in layout}


def _size(shape) -> int:
    if isinstance(shape, data.Layout):
        return shape.size
    return Shape.cast(shape).width


def _pack_field(shape, value) -> int:
    if isinstance(shape, data.Layout):
        return pack(shape, value)
    if isinstance(value, enum.Enum):
        value = value.value
    return operator.index(value) & ((1 << _size(shape)) - 1)


def _field(shape, bits: int):
    if isinstance(shape, data.Layout):
        return unpack(shape, bits & ((1 << shape.size) - 1))
    s = Shape.cast(shape)
    v = bits & ((1 << s.width) - 1)
    if s.signed and v >> (s.width - 1):
        v -= 1 << s.width
    if isinstance(shape, type) and issubclass(shape, enum.Enum):
        return shape(v)
    return v
