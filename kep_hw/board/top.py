# SPDX-License-Identifier: Apache-2.0
"""The system on a board: clock from the PLL, reset until it locks, UART pins.

:class:`BoardTop` defines the ``sync`` domain of :class:`kep_hw.system.top.KepSystem`: on a
platform, a PLL (:func:`kep_hw.board.pll.ecp5_pll_params`) from the board's oscillator to the
core clock behind ``match platform``, reset held until the PLL locks, the UART pins of the board
profile; with ``platform is None`` (simulation) no PLL and a plain ``sync`` domain driven by the
testbench.
"""

from __future__ import annotations

from amaranth import ClockDomain, ClockSignal, Instance, Module, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer

from kep_hw.board.pll import ecp5_pll_params
from kep_hw.system.top import KepSystem

__all__ = ["BoardTop"]


class BoardTop(wiring.Component):
    """The system on a board: PLL, reset until lock, UART pins.

    Parameters
    ----------
    system : KepSystem
    board : kep_hw.board.profiles.BoardProfile
    freq_mhz : float
        Core clock; the PLL's achieved value is ``self.pll["fout"]``.

    Raises
    ------
    ValueError
        If the PLL cannot reach ``freq_mhz`` from the board's oscillator.
    """

    def __init__(self, system: KepSystem, board, freq_mhz: float):
        self.system, self.board, self.freq_mhz = system, board, freq_mhz
        self.pll = ecp5_pll_params(board.clk_mhz, freq_mhz)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain("sync")
        match platform:
            case None:
                pass      # simulation: the sync domain is driven by the testbench
            case _:
                m.submodules.clk_buf = clkin = io.Buffer(
                    "i", platform.request(self.board.clk_resource, 0, dir="-"))
                clkop = Signal()
                lock = Signal()
                p = self.pll
                m.submodules.pll = Instance(
                    "EHXPLLL",
                    a_FREQUENCY_PIN_CLKI=str(self.board.clk_mhz),
                    a_FREQUENCY_PIN_CLKOP=f"{p['fout']:.4f}",
                    a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
                    a_MFG_GMCREF_SEL="2",
                    p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                    p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
                    p_OUTDIVIDER_MUXB="DIVB", p_OUTDIVIDER_MUXC="DIVC",
                    p_OUTDIVIDER_MUXD="DIVD",
                    p_CLKI_DIV=p["refdiv"], p_CLKFB_DIV=p["fbdiv"], p_CLKOP_DIV=p["opdiv"],
                    p_CLKOP_ENABLE="ENABLED", p_CLKOP_CPHASE=p["opdiv"] - 1, p_CLKOP_FPHASE=0,
                    p_FEEDBK_PATH="CLKOP",
                    i_CLKI=clkin.i, i_CLKFB=clkop, i_RST=0, i_STDBY=0, i_PHASESEL0=0,
                    i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
                    i_PLLWAKESYNC=0, i_ENCLKOP=0,
                    o_CLKOP=clkop, o_LOCK=lock)
                m.d.comb += ClockSignal("sync").eq(clkop)
                # nextpnr derives the PLL output's constraint from the oscillator's one
                m.submodules.rst_sync = ResetSynchronizer(~lock, domain="sync")
                uart = platform.request(self.board.uart["resource"], 0, dir="-")
                m.submodules.rx_buf = rx_buf = io.Buffer("i", uart.rx)
                m.submodules.tx_buf = tx_buf = io.Buffer("o", uart.tx)
                m.d.comb += [self.system.rx.eq(rx_buf.i), tx_buf.o.eq(self.system.tx)]
                if "tx_enable" in self.board.uart:
                    m.submodules.txen_buf = en = io.Buffer(
                        "o", platform.request(self.board.uart["tx_enable"], 0, dir="-"))
                    m.d.comb += en.o.eq(1)
        m.submodules.system = self.system
        return m
