# SPDX-License-Identifier: Apache-2.0
"""Pipelined signed multipliers with a fixed latency of two cycles, on a DSP block or in LUTs.

``p = a * b``: ``a`` and ``b`` presented in cycle ``t`` give ``p`` in cycle ``t + 2``
(:data:`LATENCY`), whatever the implementation, so a design can mix them freely:

- ``"dsp"``: on a Lattice ECP5 platform the ``MULT18X18D`` primitive with its input registers
  (A, B) and its output register switched on, so nextpnr sees (and credits) a registered
  multiplier: setup 0.25 ns and clock-to-P 0.74 ns instead of 3.9 ns through an unregistered
  one (Yosys' own ECP5 DSP mapping uses none of the three registers). Operands up to 18 bits.
  On any other platform, and in simulation (``platform is None``), the same two registers
  around a plain ``*`` (Yosys maps that onto whatever the target has).
- ``"lut"``: shift-and-add in logic (carry chains), for more multipliers than the chip has
  DSP blocks: the first stage adds the partial products in pairs, the second sums the pairs;
  both registered. Synthesizes the same on every platform and simulates as it is built.

Both compute the exact two's complement product (``docs/arithmetic.md``); the testbench of
``tests/gateware/test_mul.py`` checks every implementation against Python's ``*``.
"""

from __future__ import annotations

from amaranth.hdl import ClockSignal, Const, Instance, Module, Mux, Shape, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.vendor import LatticePlatform

__all__ = ["LATENCY", "IMPLEMENTATIONS", "Multiplier"]

#: cycles from the operands to the product
LATENCY = 2
#: the ``impl`` values of :class:`Multiplier`
IMPLEMENTATIONS = ("dsp", "lut")


def _is_ecp5(platform) -> bool:
    match platform:
        case LatticePlatform() if getattr(platform, "family", None) == "ecp5":
            return True
        case _:
            return False


class Multiplier(wiring.Component):
    """``p = a * b`` two cycles after ``a`` and ``b`` (see the module docstring).

    Parameters
    ----------
    a_shape, b_shape : Shape-castable
        Operand shapes (signed or unsigned); at most 18 bits each (17 unsigned) for ``"dsp"``.
    impl : str
        ``"dsp"`` or ``"lut"``.
    site : str, optional
        For ``"dsp"`` on an ECP5: the ``MULT18X18D`` site to place it on (nextpnr's ``BEL``
        attribute, e.g. ``"X4/Y10/MULT18_0"``; :mod:`kep_hw.board.floorplan`). Ignored
        elsewhere.

    Attributes
    ----------
    a : In(a_shape)
    b : In(b_shape)
    p : Out(signed(a_width + b_width + 1))
        The product, ``LATENCY`` cycles later.
    """

    def __init__(self, a_shape, b_shape, *, impl: str = "dsp", site: str | None = None):
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
        self.a_shape, self.b_shape = Shape.cast(a_shape), Shape.cast(b_shape)
        if impl == "dsp":
            for s in (self.a_shape, self.b_shape):
                if s.width + (0 if s.signed else 1) > 18:
                    raise ValueError(f"a DSP operand has at most 18 bits (17 unsigned), "
                                     f"got {s!r}")
        self.impl, self.site = impl, site
        super().__init__({
            "a": In(self.a_shape),
            "b": In(self.b_shape),
            "p": Out(signed(self.a_shape.width + self.b_shape.width + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        if self.impl == "lut":
            self._lut(m)
        elif _is_ecp5(platform):
            self._mult18(m)
        else:
            ra = Signal(self.a_shape, reset_less=True)
            rb = Signal(self.b_shape, reset_less=True)
            rp = Signal.like(self.p, reset_less=True)
            m.d.sync += [ra.eq(self.a), rb.eq(self.b), rp.eq(ra * rb)]
            m.d.comb += self.p.eq(rp)
        return m

    def _mult18(self, m):
        a18 = Signal(signed(18))
        b18 = Signal(signed(18))
        p36 = Signal(signed(36))
        m.d.comb += [a18.eq(self.a), b18.eq(self.b)]      # sign / zero extension to 18 bits
        ports = {}
        for i in range(18):
            ports[f"i_A{i}"] = a18[i]
            ports[f"i_B{i}"] = b18[i]
            ports[f"i_C{i}"] = Const(0, 1)
        for i in range(36):
            ports[f"o_P{i}"] = p36[i]
        for i in range(4):
            ports[f"i_CLK{i}"] = ClockSignal("sync") if i == 0 else Const(0, 1)
            ports[f"i_CE{i}"] = Const(1 if i == 0 else 0, 1)
            ports[f"i_RST{i}"] = Const(0, 1)
        attrs = {"a_BEL": self.site} if self.site else {}
        m.submodules.mult18 = Instance(
            "MULT18X18D", **attrs,
            p_REG_INPUTA_CLK="CLK0", p_REG_INPUTA_CE="CE0", p_REG_INPUTA_RST="RST0",
            p_REG_INPUTB_CLK="CLK0", p_REG_INPUTB_CE="CE0", p_REG_INPUTB_RST="RST0",
            p_REG_INPUTC_CLK="NONE", p_REG_PIPELINE_CLK="NONE",
            p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0", p_REG_OUTPUT_RST="RST0",
            p_GSR="DISABLED", p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED",
            p_RESETMODE="SYNC",
            i_SIGNEDA=Const(1, 1), i_SIGNEDB=Const(1, 1), i_SOURCEA=Const(0, 1),
            i_SOURCEB=Const(0, 1),
            **ports)
        m.d.comb += self.p.eq(p36)

    def _lut(self, m):
        a, b = self.a, self.b
        wa, wb = self.a_shape.width, self.b_shape.width
        pw = wa + wb + 1
        # partial products: row i = a * b[i] * 2**i; b's top bit weighs -2**(wb-1) if signed
        rows = []
        for i in range(wb):
            row = Signal(signed(pw), name=f"row{i}")
            m.d.comb += row.eq(Mux(b[i], a, 0) << i)
            rows.append((row, self.b_shape.signed and i == wb - 1))
        # stage 1: pairs
        pairs = []
        for k in range(0, len(rows), 2):
            s = Signal(signed(pw), name=f"pair{k // 2}", reset_less=True)
            (r0, n0), *rest = rows[k:k + 2]
            v = -r0 if n0 else r0
            if rest:
                r1, n1 = rest[0]
                v = (v - r1) if n1 else (v + r1)
            m.d.sync += s.eq(v)
            pairs.append(s)
        # stage 2: the sum of the pairs
        total = pairs[0]
        for s in pairs[1:]:
            total = total + s
        rp = Signal.like(self.p, reset_less=True)
        m.d.sync += rp.eq(total)
        m.d.comb += self.p.eq(rp)
