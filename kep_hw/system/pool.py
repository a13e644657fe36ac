# SPDX-License-Identifier: Apache-2.0
"""Max pooling on chip: 2x2 windows, stride 2, no padding, between conv layers.

The arithmetic is exact (``docs/arithmetic.md``: the maximum of int8 values). The unit reads the
source activation buffer and writes the destination buffer in the layout of
``docs/accelerator.md`` (words of ``lanes`` int8 channels of one pixel, ``cw = ceil(C / lanes)``
words per pixel, pixels row-major). For every output pixel ``(y, x)`` and channel word ``g`` it
reads the four words of the input pixels ``(2y + a, 2x + b)``, ``a, b in {0, 1}``, one per
cycle, and writes their lane-wise maximum to output word ``(y * Wo + x) * cw + g``; an odd last
row or column of the input is not read (``Ho = H // 2``, ``Wo = W // 2``).

First the length of an input row in words, ``W * cw``, is summed in ``W`` cycles (no
multiplier). Pipeline: read address (cycle ``i``), registered read data (``i + 1``), running
maximum (``i + 2``), write (``i + 3``, after the fourth word); each one cycle later with
``latency=2``. :func:`pool_cycles` is the count from
``start`` to ``busy`` low.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from kep_hw.system.head import drain_states

__all__ = ["MaxPool", "pool_cycles"]


def pool_cycles(words: int, w: int, ho: int, wo: int, latency: int = 1) -> int:
    """Cycles of one :class:`MaxPool` run (``start`` cycle included) for ``words`` channel
    words per pixel, an input ``w`` pixels wide and a ``ho x wo`` output, with reads of
    ``latency`` cycles."""
    return 1 + w + 4 * words * ho * wo + 2 + latency


class MaxPool(wiring.Component):
    """2x2 stride-2 max pooling of one activation buffer into another.

    Parameters
    ----------
    lanes : int
        G, int8 channels per word.
    addr_width : int
        Address bits of ``rd`` and ``wr``.
    cfg_layout : data.Layout
        The engine's configuration layout: ``cwi`` (channel words per pixel), ``w`` (input
        width), ``ho``, ``wo`` (output size) are used.
    latency : int
        Read latency of ``rd`` in cycles (1: a memory's read port; 2: the engine's
        registered port, :data:`kep_hw.gateware.engine.READ_LATENCY`).

    Attributes
    ----------
    start : In(1)
        Start (``cfg`` valid from this cycle on).
    busy : Out(1)
        High from the cycle after ``start`` until the last word is written.
    cfg : In(cfg_layout)
    rd : In(ReadPort.Signature)
        Reads of the source buffer (``latency`` cycles).
    wr : In(WritePort.Signature)
        Writes of the destination buffer.
    """

    def __init__(self, *, lanes: int, addr_width: int, cfg_layout, latency: int = 1):
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, got {lanes!r}")
        if latency not in (1, 2):
            raise ValueError(f"latency must be 1 or 2, got {latency!r}")
        self.lanes, self.latency = lanes, latency
        word = unsigned(8 * lanes)
        super().__init__({
            "start": In(1),
            "busy": Out(1),
            "cfg": In(cfg_layout),
            "rd": In(ReadPort.Signature(addr_width=addr_width, shape=word)),
            "wr": In(WritePort.Signature(addr_width=addr_width, shape=word)),
        })

    def elaborate(self, platform):
        m = Module()
        G = self.lanes
        cfg = self.cfg
        aw = len(self.rd.addr)

        # counters: output pixel (y, x), channel word g, window element t (a = t[1], b = t[0])
        y = Signal.like(cfg.ho)
        x = Signal.like(cfg.wo)
        g = Signal.like(cfg.cwi)
        t = Signal(2)
        row = Signal(aw)          # (2y * W) * cw: first word of the window's top row
        col = Signal(aw)          # 2x * cw
        line = Signal(aw)         # W * cw: one input row
        count = Signal.like(cfg.w)
        issue = Signal()
        off = Mux(t[1], line, 0) + Mux(t[0], cfg.cwi, 0)
        m.d.comb += self.rd.addr.eq(row + col + g + off)

        # pipeline: data register (v1), running maximum (v2), write (last3)
        v1, v2 = Signal(), Signal()
        first1, last1, first2, last2, last3 = (Signal(name=n) for n in
                                               ("first1", "last1", "first2", "last2", "last3"))
        d_q = Signal(8 * G)
        mx = Signal(8 * G)
        oaddr = Signal(aw)
        v0, first0, last0 = issue, issue & (t == 0), issue & (t == 3)
        if self.latency == 2:      # one more cycle to the read data
            v0d, first0d, last0d = Signal(), Signal(), Signal()
            m.d.sync += [v0d.eq(v0), first0d.eq(first0), last0d.eq(last0)]
            v0, first0, last0 = v0d, first0d, last0d
        m.d.sync += [v1.eq(v0), first1.eq(first0), last1.eq(last0),
                     v2.eq(v1), first2.eq(first1), last2.eq(last1), last3.eq(last2)]
        with m.If(v1):
            m.d.sync += d_q.eq(self.rd.data)
        with m.If(v2):
            lanes = []
            for lane in range(G):
                a = mx.word_select(lane, 8).as_signed()
                b = d_q.word_select(lane, 8).as_signed()
                lanes.append(Mux(first2 | (b > a), b, a))
            m.d.sync += mx.eq(Cat(*lanes))
        m.d.comb += [self.wr.addr.eq(oaddr), self.wr.data.eq(mx), self.wr.en.eq(last3)]
        with m.If(last3):
            m.d.sync += oaddr.eq(oaddr + 1)

        with m.FSM(name="pool"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [y.eq(0), x.eq(0), g.eq(0), t.eq(0), row.eq(0), col.eq(0),
                                 oaddr.eq(0), line.eq(0), count.eq(0)]
                    m.next = "LINE"
            with m.State("LINE"):
                # line = W * cw by W additions
                m.d.comb += self.busy.eq(1)
                m.d.sync += [line.eq(line + cfg.cwi), count.eq(count + 1)]
                with m.If(count == cfg.w - 1):
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [self.busy.eq(1), issue.eq(1)]
                m.d.sync += t.eq(t + 1)
                with m.If(t == 3):
                    m.d.sync += g.eq(g + 1)
                    with m.If(g == cfg.cwi - 1):
                        m.d.sync += [g.eq(0), x.eq(x + 1), col.eq(col + 2 * cfg.cwi)]
                        with m.If(x == cfg.wo - 1):
                            m.d.sync += [x.eq(0), col.eq(0), y.eq(y + 1),
                                         row.eq(row + 2 * line)]
                            with m.If(y == cfg.ho - 1):
                                m.next = "DRAIN0"
            drain_states(m, self.busy, ["DRAIN0", "DRAIN1", "DRAIN2", "DRAIN3"][:2 + self.latency],
                         "IDLE")
        return m
