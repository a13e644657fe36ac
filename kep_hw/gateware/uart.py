# SPDX-License-Identifier: Apache-2.0
"""8N1 UART receiver and transmitter with ``lib.stream`` byte ports.

Both take ``divisor`` = clock cycles per bit (``round(f_clk / baud)``). The receiver
synchronizes ``rx`` with :class:`amaranth.lib.cdc.FFSynchronizer` (two flip-flops, initial value
1 for an idle line: 2 cycles of latency), detects the start bit's falling edge, samples every bit
in its middle and checks the stop bit; a byte with a bad stop bit is dropped and counted in
``framing_errors``. Its ``o`` stream has no back-pressure on the line side: ``o.valid`` rises
for one byte and a byte that arrives while the previous one is still unaccepted overwrites it
(``overruns`` counts it). The transmitter sends ``i.payload`` LSB first after a start bit and
before one stop bit; ``i.ready`` is high while idle. Line idle level is 1.
"""

from __future__ import annotations

from amaranth import Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UARTRx", "UARTTx", "uart_divisor"]


def uart_divisor(clk_hz: float, baud: int, *, max_error: float = 0.02) -> int:
    """Cycles per bit for ``baud`` at ``clk_hz``.

    Raises
    ------
    ValueError
        If the divisor is below 4 or the baud-rate error exceeds ``max_error``.
    """
    div = round(clk_hz / baud)
    if div < 4:
        raise ValueError(f"clock {clk_hz!r} Hz too slow for {baud!r} baud (divisor {div})")
    err = abs(clk_hz / div - baud) / baud
    if err > max_error:
        raise ValueError(f"baud {baud!r} at {clk_hz!r} Hz is off by {err:.1%}")
    return div


class UARTRx(wiring.Component):
    """UART receiver.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (>= 4).

    Attributes
    ----------
    rx : In(1)
        Serial input (asynchronous; synchronized inside).
    o : Out(stream.Signature(8))
        Received bytes.
    framing_errors, overruns : Out(8)
        Saturating-free wrap-around counters of dropped bytes.
    """

    def __init__(self, divisor: int):
        if not isinstance(divisor, int) or divisor < 4:
            raise ValueError(f"divisor must be an integer >= 4, got {divisor!r}")
        self.divisor = divisor
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(unsigned(8))),
            "framing_errors": Out(8),
            "overruns": Out(8),
        })

    def elaborate(self, platform):
        m = Module()
        div = self.divisor
        # synchronizer: 2 cycles of latency, idle (1) from power-up
        s2 = Signal(init=1)
        m.submodules.rx_sync = FFSynchronizer(self.rx, s2, init=1, stages=2)
        timer = Signal(range(div * 2))
        bit = Signal(range(10))
        shreg = Signal(8)

        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~s2):
                    # first sample in the middle of the start bit
                    m.d.sync += [timer.eq(div // 2 - 1), bit.eq(0)]
                    m.next = "BITS"
            with m.State("BITS"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [timer.eq(div - 1), bit.eq(bit + 1)]
                    with m.If(bit == 0):
                        with m.If(s2):           # glitch, not a start bit
                            m.next = "IDLE"
                    with m.Elif(bit <= 8):
                        m.d.sync += shreg.eq((shreg >> 1) | (s2 << 7))
                    with m.Else():               # stop bit
                        with m.If(s2):
                            m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(1)]
                            with m.If(self.o.valid & ~self.o.ready):
                                m.d.sync += self.overruns.eq(self.overruns + 1)
                            m.next = "IDLE"
                        with m.Else():
                            m.d.sync += self.framing_errors.eq(self.framing_errors + 1)
                            m.next = "BREAK"
            with m.State("BREAK"):               # wait for the line to return to idle
                with m.If(s2):
                    m.next = "IDLE"
        return m


class UARTTx(wiring.Component):
    """UART transmitter.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (>= 4).

    Attributes
    ----------
    i : In(stream.Signature(8))
        Bytes to send.
    tx : Out(1)
        Serial output, idle high.
    """

    def __init__(self, divisor: int):
        if not isinstance(divisor, int) or divisor < 4:
            raise ValueError(f"divisor must be an integer >= 4, got {divisor!r}")
        self.divisor = divisor
        super().__init__({
            "i": In(stream.Signature(unsigned(8))),
            "tx": Out(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()
        div = self.divisor
        timer = Signal(range(div))
        bits = Signal(4)
        shreg = Signal(10, init=0x3FF)
        m.d.comb += self.i.ready.eq(bits == 0)
        m.d.comb += self.tx.eq(shreg[0])
        with m.If(bits == 0):
            with m.If(self.i.valid):
                # stop bit (1), data LSB first, start bit (0)
                m.d.sync += [shreg.eq((1 << 9) | (self.i.payload << 1)), bits.eq(10),
                             timer.eq(div - 1)]
        with m.Else():
            with m.If(timer != 0):
                m.d.sync += timer.eq(timer - 1)
            with m.Else():
                m.d.sync += [timer.eq(div - 1), bits.eq(bits - 1),
                             shreg.eq((shreg >> 1) | (1 << 9))]
        return m
