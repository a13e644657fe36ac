# SPDX-License-Identifier: Apache-2.0
"""The weight memory as column memories (kep_hw.gateware.wtmem): each column holds its lanes of
every word in banks, and the columns read at their own addresses give the whole word
WT_PORT_LATENCY = 2 cycles later, across bank boundaries and in back-to-back reads."""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import data
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import Signature, Out
from amaranth.sim import Simulator

from kep_hw.gateware.layouts import WEIGHT_ELEM_BITS, WT_COLUMN_CHANNELS, weight_word, wt_columns
from kep_hw.gateware.engine import WT_PORT_LATENCY
from kep_hw.gateware.wtmem import WeightColumns, weight_banks


@pytest.mark.parametrize("po,expect", [(1, [[0]]), (3, [[0, 1, 2]]),
                                       (5, [[0, 1, 2], [3, 4]]),
                                       (16, [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11],
                                             [12, 13, 14], [15]])])
def test_columns_cover_every_lane_once(po, expect):
    assert [list(c) for c in wt_columns(po)] == expect
    assert all(len(c) <= WT_COLUMN_CHANNELS for c in wt_columns(po))


def test_banks():
    assert weight_banks(7611) == [1024] * 7 + [443]
    assert weight_banks(1024) == [1024] and weight_banks(5) == [5]
    assert weight_banks(20, 8) == [8, 8, 4]


@pytest.mark.parametrize("po,depth,bank_words", [(1, 16, 1024), (5, 16, 4), (16, 21, 8)])
def test_columns_read_the_whole_word(po, depth, bank_words):
    rng = random.Random(po)
    bits = WEIGHT_ELEM_BITS * po
    words = [rng.getrandbits(bits) for _ in range(depth)]
    ncol = len(wt_columns(po))
    m = Module()
    cols = WeightColumns(m, po=po, depth=depth, init=words, bank_words=bank_words)
    port = Signature({"wt": Out(ReadPort.Signature(addr_width=5, shape=weight_word(po)))}) \
        .flip().create().wt
    addr = Signal(data.ArrayLayout(unsigned(5), ncol))
    cols.connect_engine(m, port, addr)
    m.d.comb += port.en.eq(1)
    seq = [3, 0, 15, 7, 7, 1, depth - 1, 9 % depth, 2]
    seen = []

    async def bench(ctx):
        # a new address every cycle; the word of the address presented WT_PORT_LATENCY
        # cycles before is on the port
        for k in range(len(seq) + WT_PORT_LATENCY):
            if k < len(seq):
                ctx.set(addr, [seq[k]] * ncol)
            await ctx.tick()
            if k + 1 >= WT_PORT_LATENCY:
                seen.append(ctx.get(port.data.as_value()))
        # columns read at different addresses: each column's lanes come from its own word
        ctx.set(addr, [(5 * c) % depth for c in range(ncol)])
        for _ in range(WT_PORT_LATENCY):
            await ctx.tick()
        got = ctx.get(port.data.as_value())
        for c, lanes in enumerate(wt_columns(po)):
            lo, w = lanes.start * WEIGHT_ELEM_BITS, len(lanes) * WEIGHT_ELEM_BITS
            assert (got >> lo) & ((1 << w) - 1) == (words[(5 * c) % depth] >> lo) & ((1 << w) - 1)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen[:len(seq)] == [words[a] for a in seq]
