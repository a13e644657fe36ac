# SPDX-License-Identifier: Apache-2.0
"""Window fetcher: reads activation words and supplies the input windows of Px output pixels.

For every (group, block of Px horizontally adjacent output pixels, input channel word) in the
engine's loop order it reads the activation words of the block's window (one read per cycle;
out-of-image positions read as 0 without a memory access) into one of two window buffers. A
block of ``nv`` valid pixels (``nv = Px`` except at the end of a row) needs ``k`` input rows of
``(nv-1)*stride + 3`` columns (3x3) or ``nv`` positions (1x1, every ``stride``-th column), so
``k*ncols`` reads: 9 for ``Px = 1`` 3x3, 18 / 27 for ``Px = 4`` 3x3 at stride 1 / 2. The buffers
form a two-entry FIFO whose head is the ``o`` stream, so the next window is assembled while the
MAC array works on the current one.

Buffer slot of the position (row ``r``, column ``c``) of a block: ``r * cols + c`` with
``cols = window_cols(Px) = 2*Px + 1`` (3 for ``Px = 1``, so the ``Px = 1`` buffer is the plain
3x3 window, slot ``r*3 + c``). Output pixel ``q`` of the block reads columns ``q*stride + 0..2``
(3x3) or column ``q`` (1x1).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from kep_hw.gateware.fanout import copies
from kep_hw.gateware.layouts import act_word, window_cols, window_word
from kep_hw.gateware.params import EngineParams, check_params

__all__ = ["WindowFetcher"]


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
        Activation read port (data two cycles after addr:
        :data:`kep_hw.gateware.engine.READ_LATENCY`).
    o : Out(stream.Signature(window_word))
        Windows in loop order.
    """

    def __init__(self, params: EngineParams):
        self.params = check_params(params)
        super().__init__({
            "cfg": In(params.config_layout),
            "start": In(1),
            "busy": Out(1),
            "act": In(ReadPort.Signature(addr_width=params.act_bits,
                                         shape=act_word(params.lanes))),
            "o": Out(stream.Signature(window_word(params.lanes, params.px))),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        cfg = self.cfg
        G, PX = p.lanes, p.px
        NC = window_cols(PX)
        aw = p.act_bits + p.dim_bits + 8   # signed address arithmetic (may go negative)
        dw = p.dim_bits + 6                # signed image coordinates

        # loop counters
        run = Signal()
        g = Signal(p.group_bits)
        oy = Signal(p.dim_bits)
        ox = Signal(p.dim_bits)                   # first output column of the block
        iw = Signal(p.chan_bits)
        ch_left = Signal(p.chan_bits + 1)
        r = Signal(2)
        c = Signal(range(NC))
        cx = Signal(range(2 * NC))               # input column offset of position c
        iy0 = Signal(signed(dw))                  # oy*stride - pad
        ix0 = Signal(signed(dw))                  # ox*stride - pad
        prow = Signal(signed(aw))                 # address of (iy0, -pad), channel word 0
        pa = Signal(signed(aw))                   # address of (iy0, ix0), channel word 0
        ra = Signal(signed(aw))                   # address of (iy0 + r, ix0), word iw
        ca = Signal(signed(aw))                   # address of (iy0 + r, ix0 + cx), word iw

        # two window buffers (a two-entry FIFO) and their flags
        wl = window_word(G, PX)
        bufs = [Signal(wl, name=f"buf{b}", reset_less=True) for b in range(2)]
        full = Signal(2)
        wr = Signal()
        rd = Signal()

        # derived from the (stable) configuration, registered; a layer's first cycle after
        # ``start`` (``init``) waits for them
        k3 = Signal()
        s2 = Signal()
        wrow = Signal(p.act_bits)                 # words per input row
        cstep = Signal(signed(aw))                # words between fetched columns
        bstep = Signal(signed(aw))                # words between blocks
        bstep_x = Signal(range(2 * PX + 1))       # input columns between blocks
        init = Signal()
        m.d.comb += [k3.eq(cfg.k == 3), s2.eq(cfg.stride == 2)]
        m.d.sync += [
            wrow.eq(cfg.w * cfg.cwi),
            cstep.eq(Mux(~k3 & s2, cfg.cwi << 1, cfg.cwi)),
            bstep.eq(Mux(s2, cfg.cwi * (2 * PX), cfg.cwi * PX)),
            bstep_x.eq(Mux(s2, 2 * PX, PX)),
        ]
        m.d.comb += self.busy.eq(run | init)
        base = Signal(signed(aw))     # address of input position (-pad, -pad)

        # stream head; the window bytes through one copy of ``rd`` per (lane, row) of the
        # window (kep_hw.gateware.fanout: the select does not span the G x 3 x NC bytes)
        pop = Signal()
        rd_d = Signal()                           # rd's next value
        m.d.comb += [
            self.o.valid.eq(full.bit_select(rd, 1)),
            pop.eq(self.o.valid & self.o.ready),
            rd_d.eq(rd ^ pop),
        ]
        m.d.sync += rd.eq(rd_d)
        rd_cp = copies(m, platform, rd_d, 3 * G, name="rd", reset_less=True)
        with m.If(rd):
            m.d.comb += self.o.payload.eq(bufs[1])
        with m.Else():
            m.d.comb += self.o.payload.eq(bufs[0])
        for lane in range(G):
            for row in range(3):
                bits = slice(row * NC * 8, (row + 1) * NC * 8)
                m.d.comb += self.o.payload.win[lane].as_value()[bits].eq(
                    Mux(rd_cp[3 * lane + row], bufs[1].win[lane].as_value()[bits],
                        bufs[0].win[lane].as_value()[bits]))

        # block size: nv valid pixels, ncols window columns; registers updated with ox from
        # their next values (no subtraction or comparison of ox on the address path)
        left = Signal(range(p.max_hw + 1))       # wo - ox
        last_blk = Signal()                      # left <= Px
        ncols_m1 = Signal(range(NC + 1))         # ncols - 1

        def cols_m1(nv):
            return Mux(k3, Mux(s2, nv << 1, nv + 1), nv - 1)

        wo_short = Signal()
        m.d.comb += wo_short.eq(cfg.wo <= PX)

        def row_start():
            return [ox.eq(0), left.eq(cfg.wo), last_blk.eq(wo_short),
                    ncols_m1.eq(cols_m1(Mux(wo_short, cfg.wo, PX)))]

        # issue stage: one window position per cycle
        iy = Signal(signed(dw))
        ix = Signal(signed(dw))
        inb = Signal()
        slot = Signal(range(3 * NC))
        end_r = Signal()
        end_c = Signal()
        m.d.comb += [
            iy.eq(iy0 + r),
            ix.eq(ix0 + cx),
            inb.eq((iy >= 0) & (iy < cfg.h) & (ix >= 0) & (ix < cfg.w)),
            slot.eq(r * NC + c),
            end_c.eq(c == ncols_m1),
            end_r.eq(~k3 | (r == 2)),
        ]
        issue = Signal()
        # a buffer whose last read is issued but not yet written back is taken too (a 1x1
        # window is one read: the next one must not reuse the buffer in the read latency)
        inflight = Signal(2)
        m.d.comb += [
            issue.eq(run & ~(full | inflight).bit_select(wr, 1)),
            self.act.en.eq(1),
            self.act.addr.eq(ca),
        ]

        # read data stage: the word arrives READ_LATENCY = 2 cycles after issue (f1) through
        # the buffers' multiplexer and is registered (f2, zero outside the image) before it is
        # written into the window buffer
        f0_valid = Signal()
        f0_inb = Signal()
        f0_slot = Signal(range(3 * NC))
        f0_buf = Signal()
        f0_end = Signal()
        f1_valid = Signal()
        f1_inb = Signal()
        f1_slot = Signal(range(3 * NC))
        f1_buf = Signal()
        f1_end = Signal()
        f2_valid = Signal()
        f2_slot = Signal(range(3 * NC))
        f2_buf = Signal()
        f2_end = Signal()
        f2_data = Signal(act_word(G), reset_less=True)
        m.d.sync += [
            f0_valid.eq(issue),
            f0_inb.eq(inb),
            f0_slot.eq(slot),
            f0_buf.eq(wr),
            f0_end.eq(end_r & end_c),
            f1_valid.eq(f0_valid),
            f1_inb.eq(f0_inb),
            f1_slot.eq(f0_slot),
            f1_buf.eq(f0_buf),
            f1_end.eq(f0_end),
            f2_valid.eq(f1_valid),
            f2_slot.eq(f1_slot),
            f2_buf.eq(f1_buf),
            f2_end.eq(f1_end),
            f2_data.eq(Mux(f1_inb, self.act.data, 0)),
        ]
        for b in range(2):
            with m.If(f2_valid & (f2_buf == b)):
                for lane in range(G):
                    m.d.sync += bufs[b].win[lane].as_value().word_select(f2_slot, 8).eq(
                        f2_data[lane])
        set_full = Signal(2)
        clr_full = Signal(2)
        m.d.comb += [
            set_full.eq((f2_valid & f2_end) << f2_buf),
            clr_full.eq(pop << rd),
        ]
        m.d.sync += [full.eq((full | set_full) & ~clr_full),
                     inflight.eq((inflight | ((issue & end_r & end_c) << wr)) & ~set_full)]

        # loop advance
        nch = Signal(range(G + 1))
        m.d.comb += nch.eq(Mux(ch_left >= G, G, ch_left))
        step_y = Signal(signed(aw))
        m.d.comb += step_y.eq(Mux(s2, wrow << 1, wrow))
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
                m.d.sync += [c.eq(c + 1), cx.eq(cx + Mux(~k3 & s2, 2, 1)),
                             ca.eq(ca + cstep)]
            with m.Else():
                m.d.sync += [c.eq(0), cx.eq(0)]
                with m.If(~end_r):
                    m.d.sync += [r.eq(r + 1), ra.eq(ra + wrow), ca.eq(ra + wrow)]
                with m.Else():
                    # window done: next channel word / block / row / group
                    m.d.sync += [r.eq(0), wr.eq(~wr)]
                    with m.If(iw != cfg.cwi - 1):
                        m.d.sync += [iw.eq(iw + 1), ch_left.eq(ch_left - G),
                                     ra.eq(pa + iw + 1), ca.eq(pa + iw + 1)]
                    with m.Else():
                        m.d.sync += [iw.eq(0), ch_left.eq(cfg.cin)]
                        with m.If(~last_blk):
                            nxt = Mux(left <= 2 * PX, left - PX, PX)
                            m.d.sync += [ox.eq(ox + PX), left.eq(left - PX),
                                         last_blk.eq(left <= 2 * PX),
                                         ncols_m1.eq(cols_m1(nxt)), ix0.eq(ix0 + bstep_x),
                                         pa.eq(pa + bstep), ra.eq(pa + bstep),
                                         ca.eq(pa + bstep)]
                        with m.Else():
                            m.d.sync += [*row_start(), ix0.eq(-cfg.pad)]
                            with m.If(oy != cfg.ho - 1):
                                m.d.sync += [oy.eq(oy + 1), iy0.eq(iy0 + cfg.stride),
                                             prow.eq(prow + step_y), pa.eq(prow + step_y),
                                             ra.eq(prow + step_y), ca.eq(prow + step_y)]
                            with m.Else():
                                m.d.sync += [oy.eq(0), iy0.eq(-cfg.pad), prow.eq(base),
                                             pa.eq(base), ra.eq(base), ca.eq(base)]
                                with m.If(g != cfg.groups - 1):
                                    m.d.sync += g.eq(g + 1)
                                with m.Else():
                                    m.d.sync += run.eq(0)

        m.d.comb += base.eq(cfg.act_base - Mux(cfg.pad != 0, wrow + cfg.cwi, 0))

        # start: counters now, addresses one cycle later (once ``wrow`` is valid)
        with m.If(self.start & ~run & ~init):
            m.d.comb += rd_d.eq(0)
            m.d.sync += [
                init.eq(1), g.eq(0), oy.eq(0), *row_start(), iw.eq(0), ch_left.eq(cfg.cin),
                r.eq(0), c.eq(0), cx.eq(0), iy0.eq(-cfg.pad), ix0.eq(-cfg.pad),
                full.eq(0), inflight.eq(0), wr.eq(0),
            ]
        with m.If(init):
            m.d.sync += [init.eq(0), run.eq(1), prow.eq(base), pa.eq(base), ra.eq(base),
                         ca.eq(base)]
        return m
