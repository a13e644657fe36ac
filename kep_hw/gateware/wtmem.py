# SPDX-License-Identifier: Apache-2.0
"""The weight memory as column memories, each read at its own copy of the weight address, with
a register right after every block RAM.

A weight word holds one :data:`~kep_hw.gateware.layouts.WeightElem` (12 bits) per output
channel of the engine: 192 bits at Po = 16. The network's weight words of ResNet-20 fill about
120 block RAMs of the ULX3S 85F, spread over the die. Two paths of that memory limited the
85F's clock: one address register driving all of them (17.25 ns of routing, no logic), then,
once the address had copies, a block RAM's output (5.83 ns clock-to-data: Yosys does not use
the DP16KD's output register) through the multiplexer of its block RAMs into the engine's index
registers (13.47 ns). Here:

- the memory is split into columns of :data:`~kep_hw.gateware.layouts.WT_COLUMN_CHANNELS`
  channels (:func:`~kep_hw.gateware.layouts.wt_columns`), and column ``c`` reads at the
  engine's ``wt_addr[c]``: a register of its own (:func:`kep_hw.gateware.fanout.copies`), with
  the same value in the same cycle as ``wt.addr``;
- each column is split into banks of at most :data:`BANK_WORDS` words (one block RAM deep in
  its x18 shape), each bank's read data goes into a register of its own, and the bank
  multiplexer (selected by the address's high bits, registered twice) comes after those
  registers.

Read latency: :data:`kep_hw.gateware.engine.WT_PORT_LATENCY` = 2 cycles from address to data
(the block RAM's read and the bank's register); contents and word layout are those of one
memory of the whole word.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Signal, unsigned
from amaranth.lib.memory import Memory

from kep_hw.gateware.layouts import WEIGHT_ELEM_BITS, wt_columns

__all__ = ["BANK_WORDS", "WeightColumns", "weight_banks"]

#: Words per bank of a weight column: one DP16KD deep in its x18 shape (1,024 x 18).
BANK_WORDS = 1024


def weight_banks(depth: int, bank_words: int = BANK_WORDS) -> list[int]:
    """The depths of the banks of a weight memory of ``depth`` words."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    return [min(bank_words, depth - lo) for lo in range(0, depth, bank_words)]


class WeightColumns:
    """The column memories of a weight memory of ``depth`` words of ``po`` channels.

    Parameters
    ----------
    m : Module
        The module the memories are added to (as ``{name}{c}_{b}``: column ``c``, bank ``b``).
    po : int
        Channels (elements) per weight word.
    depth : int
        Words.
    init : sequence of int
        Initial words (whole-word integers, lane ``o`` at bits ``12*o``), or empty.
    name : str
    bank_words : int
        Words per bank (:data:`BANK_WORDS`; smaller in tests).
    """

    def __init__(self, m: Module, *, po: int, depth: int, init=(), name: str = "wt_col",
                 bank_words: int = BANK_WORDS):
        if bank_words < 1 or bank_words & (bank_words - 1):
            raise ValueError(f"bank_words must be a power of two, got {bank_words}")
        #: (first bit, width) of each column's lanes in a whole weight word
        self.slices = [(c.start * WEIGHT_ELEM_BITS, len(c) * WEIGHT_ELEM_BITS)
                       for c in wt_columns(po)]
        self.banks = weight_banks(depth, bank_words)
        self.bank_bits = bank_words.bit_length() - 1
        self.name = name
        init = [int(w) for w in init]
        self.mems = []                  # [column][bank]
        for c, (lo, width) in enumerate(self.slices):
            mask = (1 << width) - 1
            col = []
            for b, bdepth in enumerate(self.banks):
                words = init[b * bank_words:b * bank_words + bdepth]
                mem = Memory(shape=unsigned(width), depth=bdepth,
                             init=[(w >> lo) & mask for w in words])
                m.submodules[f"{name}{c}_{b}"] = mem
                col.append(mem)
            self.mems.append(col)

    def connect_engine(self, m: Module, wt, wt_addr) -> None:
        """Read ports for an engine's ``wt`` port (enable and data, latency
        :data:`~kep_hw.gateware.engine.WT_PORT_LATENCY`) and ``wt_addr`` (one address per
        column); the ``wt`` port's own address is not used."""
        data = []
        for c, col in enumerate(self.mems):
            addr = wt_addr[c]
            regs = []
            for b, mem in enumerate(col):
                rp = mem.read_port()
                m.d.comb += [rp.addr.eq(addr[:len(rp.addr)]), rp.en.eq(wt.en)]
                q = Signal.like(rp.data, name=f"{self.name}{c}_{b}_q", reset_less=True)
                m.d.sync += q.eq(rp.data)
                regs.append(q)
            if len(regs) == 1:
                data.append(regs[0])
                continue
            # the bank of the word now in the registers: the address's high bits, two cycles on
            sel1 = Signal(range(len(regs)), name=f"{self.name}{c}_sel1")
            sel2 = Signal(range(len(regs)), name=f"{self.name}{c}_sel2")
            m.d.sync += [sel1.eq(addr[self.bank_bits:]), sel2.eq(sel1)]
            data.append(Array(regs)[sel2])
        m.d.comb += wt.data.eq(Cat(*data))

    def connect_write(self, m: Module, addr, data, en) -> None:
        """One write port per bank: word ``data`` (whole-word bits) at ``addr`` when ``en``."""
        for (lo, width), col in zip(self.slices, self.mems):
            for b, mem in enumerate(col):
                wp = mem.write_port()
                hit = en if len(col) == 1 else en & (addr[self.bank_bits:] == b)
                m.d.comb += [wp.addr.eq(addr[:len(wp.addr)]), wp.data.eq(data[lo:lo + width]),
                             wp.en.eq(hit)]
