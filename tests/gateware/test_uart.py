# SPDX-License-Identifier: Apache-2.0
"""UART receiver and transmitter: loopback with random bytes and gaps, line-level timing,
framing errors, divisor checks."""

from __future__ import annotations

import random

import pytest
from amaranth import Module
from amaranth.sim import Simulator

from kep_hw.gateware.uart import UARTRx, UARTTx, uart_divisor


def test_divisor():
    assert uart_divisor(50e6, 1_000_000) == 50
    assert uart_divisor(25e6, 115200) == 217
    with pytest.raises(ValueError):
        uart_divisor(1e6, 1_000_000)


@pytest.mark.parametrize("divisor", [4, 7, 16])
def test_loopback_with_gaps_and_backpressure(divisor):
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor)
    m.submodules.rx = rx = UARTRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    rng = random.Random(divisor)
    data = [0x00, 0xFF, 0x55, 0xAA] + [rng.randrange(256) for _ in range(20)]
    got = []

    async def producer(ctx):
        for b in data:
            for _ in range(rng.randrange(3) * divisor):
                await ctx.tick()
            ctx.set(tx.i.valid, 1)
            ctx.set(tx.i.payload, b)
            while True:
                accepted = ctx.get(tx.i.ready)
                await ctx.tick()
                if accepted:
                    break
            ctx.set(tx.i.valid, 0)

    async def consumer(ctx):
        while len(got) < len(data):
            ready = rng.random() < 0.7
            ctx.set(rx.o.ready, ready)
            if ready and ctx.get(rx.o.valid):
                got.append(ctx.get(rx.o.payload))
            await ctx.tick()
        assert ctx.get(rx.framing_errors) == 0

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run_until(1e-8 * divisor * 12 * len(data) * 4)
    assert got == data


def test_tx_line_waveform():
    tx = UARTTx(4)
    bits = []

    async def bench(ctx):
        ctx.set(tx.i.valid, 1)
        ctx.set(tx.i.payload, 0b1010_0011)
        await ctx.tick()
        ctx.set(tx.i.valid, 0)
        for _ in range(10 * 4):
            bits.append(ctx.get(tx.tx))
            await ctx.tick()

    sim = Simulator(tx)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    sampled = bits[1::4]           # one sample per bit
    assert sampled == [0, 1, 1, 0, 0, 0, 1, 0, 1, 1]


def test_rx_framing_error_dropped():
    rx = UARTRx(4)
    got = []

    async def bench(ctx):
        ctx.set(rx.o.ready, 1)
        # start bit, 8 data bits 0x0F, stop bit LOW (framing error), then idle, then good byte
        for level in [0] + [1, 1, 1, 1, 0, 0, 0, 0] + [0] + [1] * 3 + \
                [0] + [0, 1, 0, 0, 0, 0, 1, 0] + [1, 1]:
            ctx.set(rx.rx, level)
            for _ in range(4):
                await ctx.tick()
                if ctx.get(rx.o.valid):
                    got.append(ctx.get(rx.o.payload))
        for _ in range(8):
            await ctx.tick()
        assert ctx.get(rx.framing_errors) == 1

    sim = Simulator(rx)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == [0x42]
