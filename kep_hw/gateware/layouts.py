# SPDX-License-Identifier: Apache-2.0
"""Data layouts of the engine's words and registers (one place, shared by RTL and testbenches).

See ``docs/accelerator.md`` for the meaning of every field.
"""

from __future__ import annotations

from amaranth.hdl import Shape, signed, unsigned
from amaranth.lib import data, enum

__all__ = ["WeightElem", "ParamWord", "Target", "act_word", "weight_word", "out_word",
           "layer_config", "load_word", "pack", "unpack"]

#: One kept kernel element: int8 value and its position ``r*k + c`` in the 3x3 plane.
WeightElem = data.StructLayout({"value": signed(8), "index": unsigned(4)})

#: Per-output-channel requantization parameters (``docs/arithmetic.md``).
ParamWord = data.StructLayout({
    "bias": signed(32),
    "mult": unsigned(16),
    "shift": unsigned(6),
    "res_mult": unsigned(24),
})


class Target(enum.Enum, shape=2):
    """Which memory a load word of :class:`kep_hw.layer_top.LayerTop` writes."""
    ACT = 0
    WT = 1
    PRM = 2


def act_word(lanes: int) -> data.ArrayLayout:
    """Activation / residual word: ``lanes`` int8 channels of one pixel."""
    return data.ArrayLayout(signed(8), lanes)


def weight_word(pes: int) -> data.ArrayLayout:
    """Weight word: one :data:`WeightElem` per PE."""
    return data.ArrayLayout(WeightElem, pes)


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
    """Load-stream payload of :class:`kep_hw.layer_top.LayerTop`."""
    return data.StructLayout({"target": Target, "addr": addr_bits, "data": data_bits})


def pack(layout, obj) -> int:
    """Pack a Python value (dict / list / int) into the integer bits of ``layout``."""
    return data.Layout.cast(layout).const(obj).as_value().value


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
