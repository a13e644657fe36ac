# SPDX-License-Identifier: Apache-2.0
"""cocotb 2 testbench of :class:`kep_hw.gateware.layer_top.LayerTop` (the generated Verilog).

Run by :mod:`kep_hw.bench.cosim` (never imported directly): it reads a job file (path in env
``KEP_JOB``) holding, per layer, the configuration bits, the load words, the expected output
lanes and the back-pressure probability; drives the loads, starts the layer, collects the
outputs with random ``ready`` stalls, compares them with the expected (golden) values and
writes the words, mismatch counts and cycle counts to ``KEP_RESULT``. The test fails on any
mismatch, missing or extra output. With ``KEP_PROGRESS`` set, one JSON line per layer (name,
cycles, outputs, mismatches, without the words) is appended to that file as soon as the layer
ends, so that the caller can report progress while the simulation runs.
"""

from __future__ import annotations

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, First, RisingEdge

from kep_common.fileio import atomic_write_json

from kep_hw.gateware.layouts import out_word, unpack

__all__ = ["TB", "run_job"]


class TB:
    """Clock, reset, load driver, output monitor and checker for one ``layer_top``."""

    def __init__(self, dut, po: int, seed: int):
        self.dut = dut
        self.po = po
        self.rng = random.Random(seed)
        self.layout = out_word(po)

    async def reset(self):
        dut = self.dut
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
        dut.rst.value = 1
        dut.start.value = 0
        dut.load__valid.value = 0
        dut.o__ready.value = 0
        await ClockCycles(dut.clk, 3)
        await FallingEdge(dut.clk)
        dut.rst.value = 0

    async def load(self, words: list[int]):
        """One load word per cycle (the loader is always ready)."""
        dut = self.dut
        for bits in words:
            await FallingEdge(dut.clk)
            dut.load__payload.value = bits
            dut.load__valid.value = 1
        await FallingEdge(dut.clk)
        dut.load__valid.value = 0

    async def run_layer(self, cfg: int, n_words: int, stall: float) -> tuple[list[int], int]:
        """Start a layer and collect its output transfers (raw payload bits)."""
        dut = self.dut
        await FallingEdge(dut.clk)
        dut.cfg.value = cfg
        dut.start.value = 1
        await FallingEdge(dut.clk)
        dut.start.value = 0
        words = []
        if stall <= 0:
            # always ready: one transfer per valid pulse (valid drops after every transfer)
            dut.o__ready.value = 1
            while int(dut.busy.value):
                if int(dut.o__valid.value):
                    words.append(int(dut.o__payload.value))
                    await RisingEdge(dut.clk)
                    await FallingEdge(dut.clk)
                    continue
                await First(RisingEdge(dut.o__valid), FallingEdge(dut.busy))
                await FallingEdge(dut.clk)
        else:
            while int(dut.busy.value):
                ready = self.rng.random() >= stall
                dut.o__ready.value = int(ready)
                if ready and int(dut.o__valid.value):
                    words.append(int(dut.o__payload.value))
                await FallingEdge(dut.clk)
        dut.o__ready.value = 0
        return words, int(dut.cycles.value)

    def lanes(self, bits: int) -> tuple[list[int], int]:
        word = unpack(self.layout, bits)
        return word["data"], word["last"]


def _append_line(path: str, record: dict) -> None:
    """Append one JSON line to ``path`` (written whole, then flushed)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


async def run_job(dut, job: dict, progress: str | None = None) -> dict:
    """Run every layer of ``job``; return the result record.

    ``progress``: file to append each layer's record (without its words) to as it ends.
    """
    tb = TB(dut, job["po"], job.get("seed", 0))
    await tb.reset()
    out = []
    for layer in job["layers"]:
        await tb.load(layer["loads"])
        raw, cycles = await tb.run_layer(layer["cfg"], len(layer["expected"]), layer["stall"])
        got = []
        bad_last = 0
        for t, bits in enumerate(raw):
            data, last = tb.lanes(bits)
            got.append(data[:len(layer["expected"][min(t, len(layer["expected"]) - 1)])])
            bad_last += int(last != (t == len(layer["expected"]) - 1))
        mismatches = sum(int(a != b) for e, g in zip(layer["expected"], got)
                         for a, b in zip(e, g))
        mismatches += abs(len(got) - len(layer["expected"])) * job["po"]
        out.append({"name": layer["name"], "cycles": cycles, "outputs": len(got),
                    "expected_outputs": len(layer["expected"]), "mismatches": mismatches,
                    "bad_last": bad_last, "words": got})
        if progress:
            _append_line(progress, {k: v for k, v in out[-1].items() if k != "words"})
    return {"layers": out}


@cocotb.test()
async def test_layers(dut):
    """Every layer of the job bit-exact, no lost or duplicated output."""
    with open(os.environ["KEP_JOB"]) as f:
        job = json.load(f)
    result = await run_job(dut, job, os.environ.get("KEP_PROGRESS"))
    atomic_write_json(os.environ["KEP_RESULT"], result)
    for layer in result["layers"]:
        assert layer["outputs"] == layer["expected_outputs"], layer["name"]
        assert layer["mismatches"] == 0, layer["name"]
        assert layer["bad_last"] == 0, layer["name"]
