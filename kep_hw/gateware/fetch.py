# SPDX-License-Identifier: Apache-2.0
"""Window fetcher: reads activation words and supplies the input windows of Px output pixels.

For every (group, block of Px horizontally adjacent output pixels, input channel word) in the
engine's loop order it reads the activation words of the block's window (one read per cycle;
out-of-image positions read as 0 without a memory access) into the fill buffer. Every block,
a short one at the end of a row too, reads a whole block's window: ``k`` input rows of
``ncols = (Px-1)*stride + 3`` columns (3x3) or ``Px`` positions (1x1, every ``stride``-th
column), so ``k*ncols`` reads: 9 for ``Px = 1`` 3x3, 18 / 27 for ``Px = 4`` 3x3 at stride 1 /
2 (a short block's extra columns lie outside the image).

Two window buffers form a two-entry FIFO: the fill buffer receives the next window while the
drain buffer holds the head window, whose channels the engine consumes one after the other.
The stream ``o`` presents one channel (plane) of the head window: channel 0 when the window
becomes the head, the next one in the cycle after each cycle in which the engine moves on to
the next channel (``next_ch``, announced a cycle before in ``ahead``), until the engine pops the
window (``o.ready``; ``next_ch`` and ``o.ready`` are never high together). The drain buffer
moves its planes down by one per ``next_ch`` (plane ``i`` takes plane ``i + 1``), so the
engine's operands come from plane 0 alone: no multiplexer selects a channel out of the
``G x 3 x NC`` bytes. Each buffer move (fill -> drain when a window becomes the head, drain
plane ``i + 1`` -> ``i``) is decided a cycle ahead, from the consumer's ``ahead`` (its
``o.ready`` and ``next_ch`` of the next cycle), and done in the cycle after it through
registered selects, two register levels from the decision: one copy per :data:`MOVE_SPAN`
lanes and per row of the stream's plane, then one per lane and row of the drain buffer and one
per byte (row, column) of the stream's plane (:func:`kep_hw.gateware.fanout.copies`); in
that cycle the stream presents the plane the move will bring (fill plane 0, or drain plane 1).
``head_next`` tells the consumer what the head will be in the next cycle.
The timing is that of two symmetric buffers: the head window is valid the cycle after its last
write lands or after the window before it is popped, and the fill buffer takes the next window's
first read while the head is still in flight (its writes land after the move).

The fill buffer's rows are shift registers: a read of window row ``r`` lands in column
``NC - 1`` of row ``r`` of every lane and moves that row's other columns down by one (column
``j`` takes column ``j + 1``). A window row of ``ncols`` reads therefore ends in columns
``NC - ncols .. NC - 1``: buffer slot of the position (row ``r``, column ``c``) of a block is
``r * NC + NC - ncols + c`` with ``NC = window_cols(Px) = 2*Px + 1`` (so at stride 2 and for
``Px = 1`` 3x3 the slot is ``r * NC + c``). Output pixel ``q`` of the block reads columns
``q*stride + 0..2`` (3x3) or column ``q`` (1x1, row 0). One register per lane and row takes the
read word, where a buffer written slot by slot fans it out to all ``3 * NC`` slots.

Column reuse (``Px > 1``, 3x3, one channel word per pixel: ``cwi = 1``): the block after
another one of its row shares its first ``ov`` columns (2 at stride 1, 1 at stride 2) with it,
so its reads start at column ``ov``; the shared columns are the last ``ov`` of the window
before it, which the new reads move down to where the block's columns ``0 .. ov-1`` belong:
no copy. With ``pad = 1`` a row's first block does not read its left padding column (column 0,
outside the image) either: its reads start at column 1, and the first read of each window row
also shifts a 0 into column ``NC - 2`` (which its other reads move down to column 0). conv1 of
ResNet-20 at ``Px = 8``: 27 reads instead of 30 for a row's first block.
"""

from __future__ import annotations

from amaranth.hdl import C, Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from kep_hw.gateware.fanout import copies, spans
from kep_hw.gateware.layouts import act_word, plane_word, window_cols, window_word
from kep_hw.gateware.params import EngineParams, check_params

__all__ = ["MOVE_SPAN", "WindowFetcher"]

#: lanes whose buffer-move selects are registered from one first-level copy of the decision
MOVE_SPAN = 4


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
    o : Out(stream.Signature(plane_word))
        Windows in loop order, one channel of the head window at a time; ``o.ready`` pops
        the window.
    ahead : In(StructLayout({"ready": 1, "next_ch": 1}))
        ``o.ready`` and the move to the head's next channel (``next_ch``; never with
        ``o.ready``) as they will be in the next cycle: the consumer decides them a cycle ahead
        (the engine's issue is a register), and the fetcher decides its buffer moves from
        them. An ``ahead.ready`` that the next cycle's ``o.ready`` does not repeat corrupts the
        windows.
    head_next : Out(StructLayout({"valid": 1, "new": 1, "nch": ..., "last": 1}))
        The head as it will be in the next cycle: ``valid`` (``o.valid``), ``new`` (a window
        becomes the head: the fill buffer moves now), its channel count and ``last`` flag
        (when ``new``): what a consumer that decides a cycle ahead needs.
    """

    def __init__(self, params: EngineParams):
        self.params = check_params(params)
        super().__init__({
            "cfg": In(params.config_layout),
            "start": In(1),
            "busy": Out(1),
            "act": In(ReadPort.Signature(addr_width=params.act_bits,
                                         shape=act_word(params.lanes))),
            "o": Out(stream.Signature(plane_word(params.lanes, params.px))),
            "ahead": In(data.StructLayout({"ready": 1, "next_ch": 1})),
            "head_next": Out(data.StructLayout({"valid": 1, "new": 1,
                                                "nch": range(params.lanes + 1), "last": 1})),
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
        oy_last = Signal()                        # oy == ho - 1 (a register, updated with oy)
        iw_last = Signal()                        # iw == cwi - 1 (a register, updated with iw)
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

        # the fill and the drain buffer (a two-entry FIFO) and their flags
        wl = data.StructLayout({"win": window_word(G, PX).members["win"]})
        fill = Signal(wl, name="fill", reset_less=True)
        drain = Signal(wl, name="drain", reset_less=True)
        f_full = Signal()            # the fill buffer holds a complete window, not yet moved
        d_valid = Signal()           # the head window is valid (in the drain buffer, or moving)
        owned = Signal(range(3))     # windows whose last read is issued and that are not popped
        # the read pipeline's flags that the buffer moves look at (the read stage, below)
        meta = data.StructLayout({"nch": range(G + 1), "first": 1, "last": 1})
        f1_valid = Signal()
        f1_end = Signal()
        f2_valid = Signal()
        f2_end = Signal()
        f2_meta = Signal(meta)
        fill_meta = Signal(meta)     # the flags of the window in the fill buffer

        # derived from the (stable) configuration, registered; a layer's first two cycles
        # after ``start`` (``init``, ``init2``) wait for them
        k3 = Signal()
        s2 = Signal()
        wrow = Signal(p.act_bits)                 # words per input row
        cstep = Signal(signed(aw))                # words between fetched columns
        bstep = Signal(signed(aw))                # words between blocks
        bstep_x = Signal(range(2 * PX + 1))       # input columns between blocks
        init = Signal()
        init2 = Signal()
        # (w + 1) * cwi, the words of an input row and one position: the one product of the
        # configuration here, a register (valid in ``init``); wrow and base are registered
        # from it (valid in ``init2``)
        row1 = Signal(p.act_bits + 1)
        m.d.sync += row1.eq((cfg.w + 1) * cfg.cwi)
        # column reuse (Px > 1, 3x3, one channel word: cwi = 1): a block after the first of its
        # row takes its first ``ov`` columns (2 at stride 1, 1 at stride 2) from the block
        # before it instead of reading them again (copied inside the fill buffer when the
        # window before it moves to the drain buffer)
        reuse = Signal()
        ov = Signal(2)
        wrow_ov = Signal(signed(aw))              # wrow + ov
        # padding skip (reuse mode with pad = 1): a row's first block does not spend read
        # cycles on its left padding column (column 0, all zeros); each window row's first
        # read (column 1) also clears column 0 of that row in the fill buffer
        skip = Signal()
        wrow_1 = Signal(signed(aw))               # wrow + 1
        bstep_ov = Signal(signed(aw))             # bstep + ov (reuse) or bstep
        m.d.comb += [k3.eq(cfg.k == 3), s2.eq(cfg.stride == 2), ov.eq(Mux(s2, 1, 2))]
        bstep_d = Mux(s2, cfg.cwi * (2 * PX), cfg.cwi * PX)
        m.d.sync += [
            wrow.eq(row1 - cfg.cwi),
            cstep.eq(Mux(~k3 & s2, cfg.cwi << 1, cfg.cwi)),
            bstep.eq(bstep_d),
            bstep_x.eq(Mux(s2, 2 * PX, PX)),
            wrow_ov.eq(cfg.w + ov),
        ]
        if PX > 1:
            reuse_d = k3 & (cfg.cwi == 1)
            m.d.sync += [
                reuse.eq(reuse_d),
                skip.eq(reuse_d & (cfg.pad != 0)),
                wrow_1.eq(cfg.w + 1),
                bstep_ov.eq(Mux(reuse_d, Mux(s2, 2 * PX + 1, PX + 2), bstep_d)),
            ]
        else:
            m.d.sync += bstep_ov.eq(bstep_d)
        m.d.comb += self.busy.eq(run | init | init2)
        # the address of input position (-pad, -pad) (``base``), and that + ``skip`` (a row's
        # first read with the padding skip), registers loaded from the configuration and
        # ``row1`` in every cycle (valid in ``init2``); the step between output rows and that
        # + ``skip`` too
        base = Signal(signed(aw))
        base_s = Signal(signed(aw))
        step_y = Signal(signed(aw))
        step_y_s = Signal(signed(aw))

        # stream head and buffer moves, decided a cycle ahead (``ahead``: the consumer's
        # ``o.ready`` and ``next_ch`` of the next cycle): ``load`` (a register: the fill
        # buffer becomes the head now), ``shift`` (the head's next channel now). Each move is
        # done in the cycle after it through registered selects (below)
        pop = Signal()
        load = Signal()
        valid_n = Signal()                        # d_valid's next value
        full_n = Signal()                         # f_full's next value
        load_n = Signal()                         # load's next value
        fdone = Signal()                          # the fill buffer's last write lands now
        f1_done = Signal()                        # ... lands in the next cycle
        src = Signal(meta)                        # the flags of the window a load moves
        m.d.comb += [
            self.o.valid.eq(d_valid),
            pop.eq(d_valid & self.o.ready),
            valid_n.eq(load | (d_valid & ~pop)),
            full_n.eq((f_full | fdone) & ~load),
            load_n.eq((full_n | f1_done) & (~valid_n | self.ahead.ready)),
            # a window that completes now has its flags in f2 only
            src.eq(Mux(f_full, fill_meta, f2_meta)),
            self.head_next.valid.eq(valid_n),
            self.head_next.new.eq(load),
            self.head_next.nch.eq(src.nch),
            self.head_next.last.eq(src.last),
        ]
        m.d.sync += [load.eq(load_n), d_valid.eq(valid_n), f_full.eq(full_n)]
        # the selects, registered twice from the decision: one copy per group of
        # MOVE_SPAN lanes and one per row of the stream's plane, then one per (lane, row) of
        # the drain buffer and per (row, column) of the stream's plane from its group's copy:
        # no net carries a decision of this cycle to 3 * G + 3 * NC flip-flops spread over
        # the buffers, and each stream copy selects one byte
        sizes = [3 * n for n in spans(G, MOVE_SPAN)] + [NC] * 3

        def move_selects(d, name):
            grp = copies(m, platform, d, len(sizes), name=f"{name}_g", reset_less=True)
            out = []
            for k, n in enumerate(sizes):
                out += copies(m, platform, grp[k], n, name=f"{name}{k}", reset_less=True)
            return out
        ld_cp = move_selects(load_n, "mv_load")
        sh_cp = move_selects(self.ahead.next_ch, "mv_shift")
        for row in range(3):
            for col in range(NC):
                bits = slice((row * NC + col) * 8, (row * NC + col + 1) * 8)
                k = 3 * G + row * NC + col
                m.d.comb += self.o.payload.win.as_value()[bits].eq(
                    Mux(ld_cp[k], fill.win[0].as_value()[bits],
                        Mux(sh_cp[k], drain.win[min(1, G - 1)].as_value()[bits],
                            drain.win[0].as_value()[bits])))
            bits = slice(row * NC * 8, (row + 1) * NC * 8)
            for lane in range(G):
                dst = drain.win[lane].as_value()[bits]
                with m.If(ld_cp[3 * lane + row]):
                    m.d.sync += dst.eq(fill.win[lane].as_value()[bits])
                if lane + 1 < G:
                    with m.Elif(sh_cp[3 * lane + row]):
                        m.d.sync += dst.eq(drain.win[lane + 1].as_value()[bits])
        # the head window's channel count and flags: registers, loaded with the window
        head_nch = Signal(range(G + 1))
        head_first = Signal()
        head_last = Signal()
        m.d.comb += [self.o.payload.nch.eq(head_nch), self.o.payload.first.eq(head_first),
                     self.o.payload.last.eq(head_last)]

        # block size: nv valid pixels, ncols window columns; registers updated with ox from
        # their next values (no subtraction or comparison of ox on the address path)
        left = Signal(range(p.max_hw + 1))       # wo - ox
        last_blk = Signal()                      # left <= Px
        ncols_m1 = Signal(range(NC + 1))         # ncols - 1

        def cols_m1(nv):
            return Mux(k3, Mux(s2, nv << 1, nv + 1), nv - 1)

        wo_short = Signal()
        m.d.comb += wo_short.eq(cfg.wo <= PX)

        cont = Signal()                          # the block reuses ov columns (reuse mode)

        def row_start():
            return [ox.eq(0), left.eq(cfg.wo), last_blk.eq(wo_short),
                    ncols_m1.eq(cols_m1(PX)), cont.eq(0)]

        # issue stage: one window position per cycle
        iy = Signal(signed(dw))
        ix = Signal(signed(dw))
        inb = Signal()
        end_r = Signal()
        end_c = Signal()
        m.d.comb += [
            iy.eq(iy0 + r),
            ix.eq(ix0 + cx),
            inb.eq((iy >= 0) & (iy < cfg.h) & (ix >= 0) & (ix < cfg.w)),
            end_c.eq(c == ncols_m1),
            end_r.eq(~k3 | (r == 2)),
        ]
        issue = Signal()
        # at most two windows between their last read and their pop: the fill buffer takes
        # the next window once the window before the head is popped. Its first write lands
        # READ_LATENCY + 1 cycles after its read, by then the head has left the fill buffer (it
        # moves the cycle after its last write at the latest: the drain buffer is empty)
        m.d.comb += [
            issue.eq(run & (owned != 2)),
            self.act.en.eq(1),
            self.act.addr.eq(ca),
        ]

        # read data stage: the word arrives READ_LATENCY = 2 cycles after issue (f1) and is
        # registered (f2, zero outside the image) before it is written into the fill buffer;
        # the window's channel count and flags travel with every read
        nch = Signal(range(G + 1))
        f0_valid = Signal()
        f0_inb = Signal()
        f0_row = Signal(2)
        f0_end = Signal()
        f0_zl = Signal()                          # clear column 0 of this read's row (skip)
        f0_meta = Signal(meta)
        f1_inb = Signal()
        f1_row = Signal(2)
        f1_zl = Signal()
        f1_meta = Signal(meta)
        f2_data = Signal(act_word(G), reset_less=True)
        m.d.sync += [
            f0_valid.eq(issue),
            f0_inb.eq(inb),
            f0_row.eq(r),
            f0_end.eq(end_r & end_c),
            f0_zl.eq(skip & ~cont & (c == 1)),
            f0_meta.nch.eq(nch),
            f0_meta.first.eq(iw == 0),
            f0_meta.last.eq(iw_last),
            f1_valid.eq(f0_valid),
            f1_inb.eq(f0_inb),
            f1_row.eq(f0_row),
            f1_end.eq(f0_end),
            f1_zl.eq(f0_zl),
            f1_meta.eq(f0_meta),
            f2_valid.eq(f1_valid),
            f2_end.eq(f1_end),
            f2_meta.eq(f1_meta),
            f2_data.eq(Mux(f1_inb, self.act.data, 0)),
        ]
        with m.If(f2_valid):
            m.d.sync += fill_meta.eq(f2_meta)
        # the fill buffer's rows are shift registers: a read of window row ``row`` lands at
        # column NC - 1 of every lane's row and moves the row's other columns down by one
        # (column j takes column j + 1), so a window row of ``ncols`` reads ends at columns
        # NC - ncols .. NC - 1, and the columns a block shares with the block before it (column
        # reuse) are already where they belong. The shift enables are registered one cycle
        # ahead, one copy per lane and row (each drives that row's NC x 8 clock enables); the
        # padding skip's clear (the row's first read also writes 0 to column NC - 2) one copy
        # per lane
        sh_en = [copies(m, platform, f1_valid & (f1_row == row), G, name=f"fill_sh{row}",
                        reset_less=True) for row in range(3)]
        zl_cp = (copies(m, platform, f1_zl, G, name="fill_zl", reset_less=True) if PX > 1
                 else [C(0, 1)] * G)
        for row in range(3):
            for lane in range(G):
                w = fill.win[lane]
                with m.If(sh_en[row][lane]):
                    for j in range(NC - 1):
                        nxt = w[row * NC + j + 1]
                        if j == NC - 2 and PX > 1:
                            nxt = Mux(zl_cp[lane], 0, nxt)
                        m.d.sync += w[row * NC + j].eq(nxt)
                    m.d.sync += w[row * NC + NC - 1].eq(f2_data[lane])
        m.d.comb += [fdone.eq(f2_valid & f2_end), f1_done.eq(f1_valid & f1_end)]
        with m.If(load):
            m.d.sync += Cat(head_nch, head_first, head_last).eq(src)
        m.d.sync += owned.eq(owned + (issue & end_r & end_c) - pop)

        # loop advance
        m.d.comb += nch.eq(Mux(ch_left >= G, G, ch_left))
        m.d.sync += [step_y.eq(Mux(s2, wrow << 1, wrow)),
                     step_y_s.eq(Mux(s2, wrow << 1, wrow) + skip)]
        with m.If(issue):
            with m.If(~end_c):
                m.d.sync += [c.eq(c + 1), cx.eq(cx + Mux(~k3 & s2, 2, 1)),
                             ca.eq(ca + cstep)]
            with m.Else():
                m.d.sync += [c.eq(0), cx.eq(0)]
                with m.If(~end_r):
                    m.d.sync += [r.eq(r + 1), ra.eq(ra + wrow)]
                    with m.If(cont):
                        m.d.sync += [c.eq(ov), cx.eq(ov), ca.eq(ra + wrow_ov)]
                    with m.Elif(skip):
                        m.d.sync += [c.eq(1), cx.eq(1), ca.eq(ra + wrow_1)]
                    with m.Else():
                        m.d.sync += ca.eq(ra + wrow)
                with m.Else():
                    # window done: next channel word / block / row / group
                    m.d.sync += r.eq(0)
                    with m.If(~iw_last):
                        m.d.sync += [iw.eq(iw + 1), iw_last.eq(iw + 2 == cfg.cwi),
                                     ch_left.eq(ch_left - G),
                                     ra.eq(pa + iw + 1), ca.eq(pa + iw + 1)]
                    with m.Else():
                        m.d.sync += [iw.eq(0), iw_last.eq(cfg.cwi == 1), ch_left.eq(cfg.cin)]
                        with m.If(~last_blk):
                            m.d.sync += [ox.eq(ox + PX), left.eq(left - PX),
                                         last_blk.eq(left <= 2 * PX), ix0.eq(ix0 + bstep_x),
                                         pa.eq(pa + bstep), ra.eq(pa + bstep),
                                         ca.eq(pa + bstep_ov), cont.eq(reuse)]
                            with m.If(reuse):
                                m.d.sync += [c.eq(ov), cx.eq(ov)]
                        with m.Else():
                            m.d.sync += [*row_start(), ix0.eq(-cfg.pad), c.eq(skip),
                                         cx.eq(skip)]
                            with m.If(~oy_last):
                                m.d.sync += [oy.eq(oy + 1), oy_last.eq(oy + 2 == cfg.ho),
                                             iy0.eq(iy0 + cfg.stride),
                                             prow.eq(prow + step_y), pa.eq(prow + step_y),
                                             ra.eq(prow + step_y),
                                             ca.eq(prow + step_y_s)]
                            with m.Else():
                                m.d.sync += [oy.eq(0), oy_last.eq(cfg.ho == 1),
                                             iy0.eq(-cfg.pad), prow.eq(base),
                                             pa.eq(base), ra.eq(base), ca.eq(base_s)]
                                with m.If(g != cfg.groups - 1):
                                    m.d.sync += g.eq(g + 1)
                                with m.Else():
                                    m.d.sync += run.eq(0)

        # (with the skip, cwi = 1 and pad = 1: base + 1 = act_base - w)
        base_d = cfg.act_base - Mux(cfg.pad != 0, row1, 0)
        skip_d = (k3 & (cfg.cwi == 1) & (cfg.pad != 0)) if PX > 1 else C(0, 1)
        m.d.sync += [base.eq(base_d), base_s.eq(Mux(skip_d, cfg.act_base - cfg.w, base_d))]

        # start: counters now, addresses two cycles later (once ``base`` and ``wrow`` are
        # valid)
        with m.If(self.start & ~run & ~init & ~init2):
            m.d.sync += [
                init.eq(1), g.eq(0), oy.eq(0), oy_last.eq(cfg.ho == 1), *row_start(), iw.eq(0),
                iw_last.eq(cfg.cwi == 1), ch_left.eq(cfg.cin),
                r.eq(0), c.eq(0), cx.eq(0), iy0.eq(-cfg.pad), ix0.eq(-cfg.pad),
                f_full.eq(0), d_valid.eq(0), owned.eq(0), load.eq(0),
            ]
        with m.If(init):
            m.d.sync += [init.eq(0), init2.eq(1)]
        with m.If(init2):
            m.d.sync += [init2.eq(0), run.eq(1), prow.eq(base), pa.eq(base), ra.eq(base),
                         ca.eq(base_s), c.eq(skip), cx.eq(skip)]
        return m
