# SPDX-License-Identifier: Apache-2.0
"""The pipelined multipliers: exact products, two cycles after the operands, every shape the
engine and the requantization unit use, extremes included."""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import signed, unsigned
from amaranth.sim import Simulator

from kep_hw.gateware.mul import LATENCY, Multiplier


def _products(mul, pairs):
    got = []

    async def bench(ctx):
        for n in range(len(pairs) + LATENCY):
            if n < len(pairs):
                ctx.set(mul.a, pairs[n][0])
                ctx.set(mul.b, pairs[n][1])
            await ctx.tick()
            if n + 1 >= LATENCY:
                got.append(ctx.get(mul.p))

    sim = Simulator(mul)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got[:len(pairs)]


def _extremes(shape):
    lo, hi = (-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed \
        else (0, (1 << shape.width) - 1)
    return [lo, hi, 0, 1, -1 if shape.signed else 2, lo + 1, hi - 1]


@pytest.mark.parametrize("impl", ["dsp", "lut"])
@pytest.mark.parametrize("ash,bsh", [(signed(8), signed(8)), (signed(8), unsigned(7)),
                                      (signed(17), unsigned(16)), (unsigned(16), unsigned(16)),
                                      (signed(8), unsigned(24)), (signed(3), signed(5))])
def test_multiplier_exact(impl, ash, bsh):
    if impl == "dsp" and (ash.width + (not ash.signed) > 18 or bsh.width + (not bsh.signed) > 18):
        pytest.skip("wider than one DSP")
    rng = random.Random(ash.width * 100 + bsh.width)
    ea, eb = _extremes(ash), _extremes(bsh)
    pairs = [(x, y) for x in ea for y in eb]
    for _ in range(200):
        pairs.append((rng.choice(range(ea[0], ea[1] + 1)), rng.choice(range(eb[0], eb[1] + 1))))
    got = _products(Multiplier(ash, bsh, impl=impl), pairs)
    assert got == [x * y for x, y in pairs]


def test_multiplier_rejects_bad_options():
    with pytest.raises(ValueError, match="impl"):
        Multiplier(signed(8), signed(8), impl="fast")
    with pytest.raises(ValueError, match="18 bits"):
        Multiplier(signed(8), unsigned(18), impl="dsp")


def test_multiplier_on_ecp5_is_a_registered_mult18x18d():
    from amaranth.back import rtlil
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    text = rtlil.convert(Multiplier(signed(8), signed(8), impl="dsp"),
                         platform=ULX3S_85F_Platform())
    assert "MULT18X18D" in text
    for reg in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_OUTPUT_CLK"):
        assert f'parameter \\{reg} "CLK0"' in text
    lut = rtlil.convert(Multiplier(signed(8), signed(8), impl="lut"),
                        platform=ULX3S_85F_Platform())
    assert "MULT18X18D" not in lut and "$mul" not in lut


def test_multiplier_site_is_the_bel_attribute_of_its_mult18x18d():
    from amaranth.back import rtlil
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    text = rtlil.convert(Multiplier(signed(8), signed(8), site="X4/Y10/MULT18_0"),
                         platform=ULX3S_85F_Platform())
    assert 'attribute \\BEL "X4/Y10/MULT18_0"' in text
    plain = rtlil.convert(Multiplier(signed(8), signed(8)), platform=ULX3S_85F_Platform())
    assert "BEL" not in plain
    # in simulation (no platform) the site changes nothing
    assert "BEL" not in rtlil.convert(Multiplier(signed(8), signed(8), site="X4/Y10/MULT18_0"))
