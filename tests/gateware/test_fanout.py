# SPDX-License-Identifier: Apache-2.0
"""Register copies (kep_hw.gateware.fanout): every copy is ``d`` one cycle later, reset to 0;
on the ECP5 they are distinct TRELLIS_FF primitives that Yosys does not merge back into one."""

from __future__ import annotations

import re
import subprocess

from amaranth.back import rtlil
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from kep_hw.board.toolchain import find_tool
from kep_hw.gateware.fanout import copies


def _design(platform, n=4, reset_less=False):
    m = Module()
    d = Signal(3)
    en = Signal(n)
    outs = []
    cps = copies(m, platform, d, n, name="x", reset_less=reset_less)
    for k, q in enumerate(cps):
        o = Signal(3, name=f"o{k}")
        with m.If(en[k]):
            m.d.sync += o.eq(q + k)
        outs.append(o)
    return m, d, en, cps, outs


def test_copies_are_d_one_cycle_later():
    m, d, _, cps, _ = _design(None)
    seq = [5, 1, 7, 0, 3, 6]
    seen = []

    async def bench(ctx):
        for v in seq:
            ctx.set(d, v)
            await ctx.tick()
            seen.append([ctx.get(q) for q in cps])

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [[v] * 4 for v in seq]


def test_copies_on_ecp5_are_trellis_ffs():
    m, d, en, _, outs = _design(ULX3S_85F_Platform())
    text = rtlil.convert(m, ports=[d, en, *outs], platform=ULX3S_85F_Platform())
    assert len(re.findall(r"cell \\TRELLIS_FF ", text)) == 4 * 3
    assert 'parameter \\SRMODE "LSR_OVER_CE"' in text
    assert "connect \\LSR 1'0" not in text
    m, d, en, _, outs = _design(ULX3S_85F_Platform(), reset_less=True)
    text = rtlil.convert(m, ports=[d, en, *outs], platform=ULX3S_85F_Platform())
    assert len(re.findall(r"cell \\TRELLIS_FF ", text)) == 4 * 3
    assert text.count("connect \\LSR 1'0") == 4 * 3


def test_yosys_keeps_the_copies(tmp_path):
    m, d, en, _, outs = _design(ULX3S_85F_Platform())
    (tmp_path / "t.il").write_text(
        rtlil.convert(m, ports=[d, en, *outs], platform=ULX3S_85F_Platform()))
    yosys, _ = find_tool("yosys")
    log = subprocess.run([yosys, "-p", "read_rtlil t.il; synth_ecp5 -top top; stat"],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    ffs = int(re.findall(r"(\d+)\s+TRELLIS_FF", log)[-1])
    # 4 copies x 3 bits, and the 4 x 3 output registers
    assert ffs == 4 * 3 + 4 * 3, log[-2000:]
