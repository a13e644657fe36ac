# SPDX-License-Identifier: Apache-2.0
"""Window fetcher: reads activation words and supplies k x k input windows of G channels.

For every (group, output pixel, input channel word) in the engine's loop order it reads the
``k*k`` activation words of the window (one read per cycle; out-of-image positions read as 0
without a memory access) into one of two window buffers. The buffers form a two-entry FIFO
whose head is the ``o`` stream, so the next window is assembled while the MAC array works on
the current one. Throughput: one window per ``k*k`` cycles.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from .layouts import act_word
from .params import EngineParams

__all__ = ["window_word", "WindowFetcher"]


def window_word(lanes: int) -> data.StructLayout:
    """One window: ``lanes`` channels x 9 positions, valid channel count and pixel flags."""
    return data.StructLayout({
        "win": data.ArrayLayout(data.ArrayLayout(signed(8), 9), lanes),
        "nch": range(lanes + 1),
        "first": 1,       # first channel word of the output pixel
        "last": 1,        # last channel word of the output pixel
    })


class WindowFetcher(wiring.Component):
    """Reads activation windows for the engine's loop order.

    Parameters
    ----------
    params : EngineParams
        Engine size.

    Attributes
    ----------
    cfg : In(LayerConfig)
        Layer configuration, stable while busy.
    start : In(1)
        Starts a layer.
    act : In(ReadPort.Signature)
        Activation read port (data one cycle after addr).
    o : Out(stream.Signature(window_word))
        Windows in loop order.
    """

    def __init__(self, params: EngineParams):
        if not isinstance(params, EngineParams):
            raise TypeError(f"params must be EngineParams, got {params!r}")
        self.params = params
        super().__init__({
            "cfg": In(params.config_layout),
            "start": In(1),
            "busy": Out(1),
            "act": In(ReadPort.Signature(addr_width=params.act_bits,
                                         shape=act_word(params.lanes))),
            "o": Out(stream.Signature(window_word(params.lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        cfg = self.cfg
        G = p.lanes
        aw = p.act_bits + p.dim_bits + 4   # signed address arithmetic (may go negative)

        # loop counters
        run = Signal()
        g = Signal(p.group_bits)
        oy = Signal(p.dim_bits)
        ox = Signal(p.dim_bits)
        iw = Signal(p.chan_bits)
        ch_left = Signal(p.chan_bits + 1)
        r = Signal(2)
        c = Signal(2)
        iy0 = Signal(signed(p.dim_bits + 3))      # oy*stride - pad
        ix0 = Signal(signed(p.dim_bits + 3))      # ox*stride - pad
        prow = Signal(signed(aw))                 # address of (iy0, -pad), channel word 0
        pa = Signal(signed(aw))                   # address of (iy0, ix0), channel word 0
        ra = Signal(signed(aw))                   # address of (iy0 + r, ix0), word iw

        # two window buffers (a two-entry FIFO) and their flags
        wl = window_word(G)
        bufs = [Signal(wl, name=f"buf{b}") for b in range(2)]
        full = Signal(2)
        wr = Signal()
        rd = Signal()

        # activation words per input row, registered from the (stable) configuration; a
        # layer's first cycle after ``start`` (``init``) waits for it
        wrow = Signal(p.act_bits)
        init = Signal()
        m.d.sync += wrow.eq(cfg.w * cfg.cwi)
        m.d.comb += self.busy.eq(run | init)
        base = Signal(signed(aw))     # address of input position (-pad, -pad)

        # stream head
        m.d.comb += [
            self.o.valid.eq(full.bit_select(rd, 1)),
        ]
        with m.If(rd):
            m.d.comb += self.o.payload.eq(bufs[1])
        with m.Else():
            m.d.comb += self.o.payload.eq(bufs[0])
        pop = Signal()
        m.d.comb += pop.eq(self.o.valid & self.o.ready)
        with m.If(pop):
            m.d.sync += rd.eq(~rd)

        # issue stage: one window position per cycle
        iy = Signal(signed(p.dim_bits + 4))
        ix = Signal(signed(p.dim_bits + 4))
        inb = Signal()
        coff = Signal(signed(aw))
        slot = Signal(4)
        k3 = Signal()
        end_r = Signal()
        end_c = Signal()
        m.d.comb += [
            k3.eq(cfg.k == 3),
            iy.eq(iy0 + r),
            ix.eq(ix0 + c),
            inb.eq((iy >= 0) & (iy < cfg.h) & (ix >= 0) & (ix < cfg.w)),
            coff.eq(Mux(c == 2, cfg.cwi << 1, Mux(c == 1, cfg.cwi, 0))),
            slot.eq(r * 3 + c),
            end_c.eq(~k3 | (c == 2)),
            end_r.eq(~k3 | (r == 2)),
        ]
        issue = Signal()
        m.d.comb += [
            issue.eq(run & ~full.bit_select(wr, 1)),
            self.act.en.eq(1),
            self.act.addr.eq(ra + coff),
        ]

        # read data stage (one cycle after issue)
        f1_valid = Signal()
        f1_inb = Signal()
        f1_slot = Signal(4)
        f1_buf = Signal()
        f1_end = Signal()
        m.d.sync += [
            f1_valid.eq(issue),
            f1_inb.eq(inb),
            f1_slot.eq(slot),
            f1_buf.eq(wr),
            f1_end.eq(end_r & end_c),
        ]
        for b in range(2):
            with m.If(f1_valid & (f1_buf == b)):
                for lane in range(G):
                    val = Signal(signed(8), name=f"rdval{b}_{lane}")
                    m.d.comb += val.eq(Mux(f1_inb, self.act.data[lane], 0))
                    m.d.sync += bufs[b].win[lane].as_value().word_select(f1_slot, 8).eq(val)
        set_full = Signal(2)
        clr_full = Signal(2)
        m.d.comb += [
            set_full.eq((f1_valid & f1_end) << f1_buf),
            clr_full.eq(pop << rd),
        ]
        m.d.sync += full.eq((full | set_full) & ~clr_full)

        # loop advance
        nch = Signal(range(G + 1))
        m.d.comb += nch.eq(Mux(ch_left >= G, G, ch_left))
        step_x = Signal(signed(aw))
        m.d.comb += step_x.eq(Mux(cfg.stride == 2, cfg.cwi << 1, cfg.cwi))
        step_y = Signal(signed(aw))
        m.d.comb += step_y.eq(Mux(cfg.stride == 2, wrow << 1, wrow))
        with m.If(issue):
            with m.If((r == 0) & (c == 0)):
                for b in range(2):
                    with m.If(wr == b):
                        m.d.sync += [
                            bufs[b].nch.eq(nch),
                            bufs[b].first.eq(iw == 0),
                            bufs[b].last.eq(iw == cfg.cwi - 1),
                        ]
            with m.If(~end_c):
                m.d.sync += c.eq(c + 1)
            with m.Else():
                m.d.sync += c.eq(0)
                with m.If(~end_r):
                    m.d.sync += [r.eq(r + 1), ra.eq(ra + wrow)]
                with m.Else():
                    # window done: next channel word / pixel / row / group
                    m.d.sync += [r.eq(0), wr.eq(~wr)]
                    with m.If(iw != cfg.cwi - 1):
                        m.d.sync += [iw.eq(iw + 1), ch_left.eq(ch_left - G),
                                     ra.eq(pa + iw + 1)]
                    with m.Else():
                        m.d.sync += [iw.eq(0), ch_left.eq(cfg.cin)]
                        with m.If(ox != cfg.wo - 1):
                            m.d.sync += [ox.eq(ox + 1), ix0.eq(ix0 + cfg.stride),
                                         pa.eq(pa + step_x), ra.eq(pa + step_x)]
                        with m.Else():
                            m.d.sync += [ox.eq(0), ix0.eq(-cfg.pad)]
                            with m.If(oy != cfg.ho - 1):
                                m.d.sync += [oy.eq(oy + 1), iy0.eq(iy0 + cfg.stride),
                                             prow.eq(prow + step_y), pa.eq(prow + step_y),
                                             ra.eq(prow + step_y)]
                            with m.Else():
                                m.d.sync += [oy.eq(0), iy0.eq(-cfg.pad), prow.eq(base),
                                             pa.eq(base), ra.eq(base)]
                                with m.If(g != cfg.groups - 1):
                                    m.d.sync += g.eq(g + 1)
                                with m.Else():
                                    m.d.sync += run.eq(0)

        m.d.comb += base.eq(cfg.act_base - Mux(cfg.pad != 0, wrow + cfg.cwi, 0))

        # start: counters now, addresses one cycle later (once ``wrow`` is valid)
        with m.If(self.start & ~run & ~init):
            m.d.sync += [
                init.eq(1), g.eq(0), oy.eq(0), ox.eq(0), iw.eq(0), ch_left.eq(cfg.cin),
                r.eq(0), c.eq(0), iy0.eq(-cfg.pad), ix0.eq(-cfg.pad),
                full.eq(0), wr.eq(0), rd.eq(0),
            ]
        with m.If(init):
            m.d.sync += [init.eq(0), run.eq(1), prow.eq(base), pa.eq(base), ra.eq(base)]
        return m
