# SPDX-License-Identifier: Apache-2.0
"""The weight memory as column memories, each read at its own copy of the weight address.

A weight word holds one :data:`~kep_hw.gateware.layouts.WeightElem` (12 bits) per output
channel of the engine: 192 bits at Po = 16. The network's weight words of ResNet-20 fill 124
block RAMs of the ULX3S 85F, spread over the die; one address register driving all of them
was the 85F's worst path (17.25 ns of routing and no logic). Here the memory is split into
columns of :data:`~kep_hw.gateware.layouts.WT_COLUMN_CHANNELS` channels
(:func:`~kep_hw.gateware.layouts.wt_columns`), and column ``c`` reads at the engine's
``wt_addr[c]``: a register of its own (:func:`kep_hw.gateware.fanout.copies`), with the same
value in the same cycle as ``wt.addr``. Read latency, contents and word layout are those of one
memory of the whole word (:data:`kep_hw.gateware.engine.WT_PORT_LATENCY`).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, unsigned
from amaranth.lib.memory import Memory

from kep_hw.gateware.layouts import WEIGHT_ELEM_BITS, wt_columns

__all__ = ["WeightColumns"]


class WeightColumns:
    """The column memories of a weight memory of ``depth`` words of ``po`` channels.

    Parameters
    ----------
    m : Module
        The module the memories are added to (as ``{name}{c}``).
    po : int
        Channels (elements) per weight word.
    depth : int
        Words.
    init : sequence of int
        Initial words (whole-word integers, lane ``o`` at bits ``12*o``), or empty.
    name : str
    """

    def __init__(self, m: Module, *, po: int, depth: int, init=(), name: str = "wt_col"):
        self.cols = wt_columns(po)
        self.mems = []
        for c, lanes in enumerate(self.cols):
            lo, width = lanes.start * WEIGHT_ELEM_BITS, len(lanes) * WEIGHT_ELEM_BITS
            mask = (1 << width) - 1
            mem = Memory(shape=unsigned(width), depth=depth,
                         init=[(int(w) >> lo) & mask for w in init])
            m.submodules[f"{name}{c}"] = mem
            self.mems.append(mem)

    def connect_engine(self, m: Module, wt, wt_addr) -> None:
        """Read ports for an engine's ``wt`` port (enable and data) and ``wt_addr`` (one
        address per column); the ``wt`` port's own address is not used."""
        data = []
        for c, mem in enumerate(self.mems):
            rp = mem.read_port()
            m.d.comb += [rp.addr.eq(wt_addr[c]), rp.en.eq(wt.en)]
            data.append(rp.data)
        m.d.comb += wt.data.eq(Cat(*data))

    def connect_write(self, m: Module, addr, data, en) -> None:
        """One write port per column: word ``data`` (whole-word bits) at ``addr`` when ``en``."""
        for lanes, mem in zip(self.cols, self.mems):
            wp = mem.write_port()
            lo, width = lanes.start * WEIGHT_ELEM_BITS, len(lanes) * WEIGHT_ELEM_BITS
            m.d.comb += [wp.addr.eq(addr), wp.data.eq(data[lo:lo + width]), wp.en.eq(en)]
