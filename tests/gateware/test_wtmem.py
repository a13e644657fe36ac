# SPDX-License-Identifier: Apache-2.0
"""The weight memory as column memories (kep_hw.gateware.wtmem): each column holds its lanes of
every word, and the columns read at their own addresses give the whole word one cycle later."""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import data
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import Signature, Out
from amaranth.sim import Simulator

from kep_hw.gateware.layouts import WEIGHT_ELEM_BITS, WT_COLUMN_CHANNELS, weight_word, wt_columns
from kep_hw.gateware.wtmem import WeightColumns


@pytest.mark.parametrize("po,expect", [(1, [[0]]), (3, [[0, 1, 2]]),
                                       (5, [[0, 1, 2], [3, 4]]),
                                       (16, [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11],
                                             [12, 13, 14], [15]])])
def test_columns_cover_every_lane_once(po, expect):
    assert [list(c) for c in wt_columns(po)] == expect
    assert all(len(c) <= WT_COLUMN_CHANNELS for c in wt_columns(po))


@pytest.mark.parametrize("po", [1, 5, 16])
def test_columns_read_the_whole_word(po):
    rng = random.Random(po)
    depth, bits = 16, WEIGHT_ELEM_BITS * po
    words = [rng.getrandbits(bits) for _ in range(depth)]
    ncol = len(wt_columns(po))
    m = Module()
    cols = WeightColumns(m, po=po, depth=depth, init=words)
    port = Signature({"wt": Out(ReadPort.Signature(addr_width=4, shape=weight_word(po)))}) \
        .flip().create().wt
    addr = Signal(data.ArrayLayout(unsigned(4), ncol))
    cols.connect_engine(m, port, addr)
    m.d.comb += port.en.eq(1)
    seen = []

    async def bench(ctx):
        for a in [3, 0, 15, 7, 7, 1]:
            ctx.set(addr, [a] * ncol)
            await ctx.tick()
            seen.append((a, ctx.get(port.data.as_value())))
        # columns read at different addresses: each column's lanes come from its own word
        ctx.set(addr, list(range(ncol)))
        await ctx.tick()
        got = ctx.get(port.data.as_value())
        for c, lanes in enumerate(wt_columns(po)):
            lo, w = lanes.start * WEIGHT_ELEM_BITS, len(lanes) * WEIGHT_ELEM_BITS
            assert (got >> lo) & ((1 << w) - 1) == (words[c] >> lo) & ((1 << w) - 1)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [(a, words[a]) for a in [3, 0, 15, 7, 7, 1]]
