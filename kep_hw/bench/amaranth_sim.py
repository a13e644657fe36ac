# SPDX-License-Identifier: Apache-2.0
"""amaranth.sim helpers: stream put/get with random gaps and back-pressure, layer runs.

Used by the unit tests (``tests/test_hw_*.py``); the cocotb regression has its own drivers
(:mod:`kep_hw.bench.layer_tb`) but the same host-side :mod:`kep_hw.host.driver`.
"""

from __future__ import annotations

import math
import os
import random

from amaranth.sim import Simulator

from kep_hw.host.driver import LayerJob, layer_program
from kep_hw.gateware.layer_top import LayerTop
from kep_hw.gateware.layouts import load_layout, out_word, pack, unpack
from kep_hw.gateware.params import EngineParams
from kep_hw.gateware.perf import layer_cycles

__all__ = ["stream_put", "stream_get", "run_layers"]


async def stream_put(ctx, port, bits: int, *, rng: random.Random | None = None,
                     gap: float = 0.0) -> None:
    """Send one payload (its integer bits) on a stream, after a random number of idle cycles
    (probability ``gap`` per cycle)."""
    while rng is not None and rng.random() < gap:
        await ctx.tick()
    ctx.set(port.payload.as_value(), bits)
    ctx.set(port.valid, 1)
    await ctx.tick().until(port.ready)
    ctx.set(port.valid, 0)


async def stream_get(ctx, port, *, rng: random.Random | None = None,
                     stall: float = 0.0) -> int:
    """Receive one payload (its integer bits), holding ``ready`` low with probability
    ``stall`` per cycle."""
    while True:
        ready = not (rng is not None and rng.random() < stall)
        ctx.set(port.ready, int(ready))
        valid = ctx.get(port.valid)
        bits = ctx.get(port.payload.as_value())
        await ctx.tick()
        if ready and valid:
            ctx.set(port.ready, 0)
            return bits


def run_layers(params: EngineParams, jobs: list[LayerJob], *, seed: int = 0,
               stall: float = 0.0, gap: float = 0.0, vcd: str | None = None) -> list[dict]:
    """Run layers one after another on :class:`LayerTop` in ``amaranth.sim``.

    Returns per layer ``{"words": [[lanes...], ...], "cycles": int, "last_ok": bool}`` (words
    in stream order, only the valid lanes of each transfer; ``last_ok``: the ``last`` flag was
    set on the final transfer only). A waveform file is written when ``vcd`` or the env
    variable ``KEP_VCD`` names one.
    """
    vcd = vcd or os.environ.get("KEP_VCD")
    dut = LayerTop(params)
    rng = random.Random(seed)
    ow = out_word(params.po)
    ll = load_layout(params)
    fmt = params.format_params      # memory images and output stream do not depend on Px
    results = []

    async def bench(ctx):
        for job in jobs:
            cfg, loads = layer_program(fmt, job)
            for target, addr, word in loads:
                await stream_put(ctx, dut.load, pack(ll, {"target": target, "addr": addr,
                                                          "data": word}), rng=rng, gap=gap)
            ctx.set(dut.cfg.as_value(), pack(params.config_layout, cfg))
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            ho, wo = job.out_hw
            n_words = math.ceil(job.cout / params.po) * ho * wo
            words = []
            lasts = []
            limit = 4 * layer_cycles(job.shape, params) + 1000
            spent = 0
            while ctx.get(dut.busy):
                spent += 1
                if spent > limit:
                    raise AssertionError(f"{job.name}: still busy after {limit} cycles, "
                                         f"{len(words)} of {n_words} outputs")
                ready = not (rng.random() < stall)
                ctx.set(dut.o.ready, int(ready))
                valid = ctx.get(dut.o.valid)
                bits = ctx.get(dut.o.payload.as_value())
                await ctx.tick()
                if ready and valid:
                    word = unpack(ow, bits)
                    words.append(word["data"])
                    lasts.append(word["last"])
                    if len(words) > n_words:
                        raise AssertionError("more outputs than expected")
            ctx.set(dut.o.ready, 0)
            # keep only the valid lanes of each transfer
            per_group = job.out_hw[0] * job.out_hw[1]
            trimmed = []
            for t, wd in enumerate(words):
                g = t // per_group
                trimmed.append(wd[:min(params.po, job.cout - g * params.po)])
            results.append({"words": trimmed, "cycles": ctx.get(dut.cycles),
                            "last_ok": lasts == [0] * (n_words - 1) + [1]})

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return results

