# SPDX-License-Identifier: Apache-2.0
"""Register copies: one register per group of loads, so that no control net spans the chip.

A pipeline flag such as "the MAC stage holds a valid element" drives the clock enables of all
P x 32 accumulator bits (4,096 loads at P = 128); the window fetcher's buffer moves
drive several thousand flip-flops. A net like that spreads over the whole die and costs more
routing delay than any logic on the path. :func:`copies` registers the same next value ``n``
times, so each copy drives only its own group of loads and the placer can put it beside them.

On a Lattice ECP5 platform (``match platform``) every copy is a ``TRELLIS_FF`` primitive: Yosys
merges identical flip-flops (``opt_merge``: same D, same clock, same reset), a ``keep`` on the
wire does not stop it, but it leaves instantiated primitives alone. Elsewhere, and in
simulation, a single register is returned ``n`` times: the same value with the same latency,
one cycle after ``d``, so the simulated design is the built one up to the duplication.

The engine's copies are ``reset_less``: each loads its next value in every cycle, and that value
is computed from registers that are reset, so a copy holds the reset value one cycle into the
reset (and 0 from configuration on); leaving them off the reset net keeps its fanout down.
"""

from __future__ import annotations

from amaranth.hdl import ClockSignal, Const, Instance, Module, ResetSignal, Signal, Value

from kep_hw.gateware.mul import _is_ecp5

__all__ = ["copies", "spans"]


def copies(m: Module, platform, d, n: int, *, name: str, reset_less: bool = False) -> list:
    """``n`` registers that all load ``d`` every cycle (latency 1, reset to 0 unless
    ``reset_less``); the caller connects each one to its own group of loads."""
    d = Value.cast(d)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not _is_ecp5(platform) or n == 1:
        q = Signal(d.shape(), name=name, reset_less=reset_less)
        m.d.sync += q.eq(d)
        return [q] * n
    dd = Signal(d.shape(), name=f"{name}_d")
    m.d.comb += dd.eq(d)
    lsr = Const(0, 1) if reset_less else ResetSignal("sync")
    out = []
    for k in range(n):
        q = Signal(d.shape(), name=f"{name}_cp{k}")
        for b in range(len(dd)):
            m.submodules[f"{name}_cp{k}_ff{b}"] = Instance(
                "TRELLIS_FF", p_GSR="DISABLED", p_CEMUX="1", p_CLKMUX="CLK", p_LSRMUX="LSR",
                p_REGSET="RESET", p_SRMODE="LSR_OVER_CE",
                i_CLK=ClockSignal("sync"), i_LSR=lsr, i_CE=Const(1, 1), i_DI=dd[b],
                o_Q=q[b])
        out.append(q)
    return out


def spans(n: int, span: int) -> list[int]:
    """The sizes of ``n`` loads cut into groups of ``span`` (the last one shorter): how many
    loads each copy of a first register level serves. ``spans(8, 4) == [4, 4]``,
    ``spans(6, 4) == [4, 2]``."""
    return [min(n, k + span) - k for k in range(0, n, span)]
