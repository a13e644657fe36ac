# SPDX-License-Identifier: Apache-2.0
"""Pipelined requantization unit: Px x Po int32 accumulators -> Px int8 output transfers.

Per lane (``docs/arithmetic.md``)::

    z = (acc * mult + res * res_mult + 2**(shift-1)) >> shift;  relu;  saturate to int8

The input holds the accumulators of a block of ``nv <= Px`` output pixels; pixel ``q`` owns
accumulators ``q*Po .. q*Po + Po-1`` and its residual word is ``res_addr + q*res_step``.
Pipeline, one lane group (G output channels of one pixel) issued per cycle:

- R0: residual word address ``res_addr + q*res_step + c`` presented; accumulators and
  parameters of the lane group selected into registers.
- R1: residual data arrives (read latency 1); ``acc*mult`` (32x16) and ``res*res_mult`` (8x24)
  registered.
- R2: sum plus rounding term registered.
- R3: arithmetic shift, ReLU, saturation written into an output queue slot.

A pixel takes ``Po/G`` issue cycles; pixels issue back to back while the output queue (``D``
slots, ``D = max(2, ceil((Po/G + 4) / (Po/G)))``, enough for a ready consumer) has a free slot,
reserved when the pixel's first lane group issues. A pixel is written to the queue ``Po/G + 2``
cycles after its first issue and offered on ``o`` in the next cycle.
"""

from __future__ import annotations

import math

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from kep_hw.gateware.layouts import ParamWord, acc_word, act_word, out_word
from kep_hw.gateware.params import EngineParams, check_params

__all__ = ["queue_depth", "Requant"]


def queue_depth(params: EngineParams) -> int:
    """Output queue slots of :class:`Requant`."""
    ng = params.po // params.lanes
    return max(2, math.ceil((ng + 4) / ng))


class Requant(wiring.Component):
    """Requantization of a block's accumulators, G lanes per cycle, one transfer per pixel.

    Parameters
    ----------
    params : EngineParams
        Engine size.

    Attributes
    ----------
    i : In(stream.Signature(acc_word))
        Accumulators; the payload is read in place and ``ready`` is raised with the block's last
        lane group (the producer's shadow register is freed then).
    prm : In(ArrayLayout(ParamWord, Po))
        Parameters of the current output-channel group (stable while busy).
    relu, residual : In(1)
        Layer flags.
    res_step : In(chan_bits)
        Residual words between horizontally adjacent pixels (``cwo``).
    res : In(ReadPort.Signature)
        Residual read port, data one cycle after addr.
    o : Out(stream.Signature(out_word(Po)))
        int8 outputs, one transfer per pixel.
    busy : Out(1)
        A block is being issued or a lane group is in the pipeline (parameters in use).
    """

    def __init__(self, params: EngineParams):
        self.params = check_params(params)
        super().__init__({
            "i": In(stream.Signature(acc_word(params))),
            "prm": In(data.ArrayLayout(ParamWord, params.po)),
            "relu": In(1),
            "residual": In(1),
            "res_step": In(params.chan_bits),
            "res": In(ReadPort.Signature(addr_width=params.act_bits,
                                         shape=act_word(params.lanes))),
            "o": Out(stream.Signature(out_word(params.po))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        PO, PX, G = p.po, p.px, p.lanes
        NG = PO // G
        D = queue_depth(p)

        c = Signal(range(NG))            # lane group
        q = Signal(range(PX))            # pixel of the block
        qoff = Signal(p.act_bits)        # q * res_step
        credits = Signal(range(D + 1), init=D)
        issuing = Signal()
        pix_start = Signal()
        end_pix = Signal()
        end_blk = Signal()
        r1_valid = Signal()
        r2_valid = Signal()
        r3_valid = Signal()
        m.d.comb += [
            issuing.eq(self.i.valid & ((c != 0) | (credits != 0))),
            pix_start.eq(issuing & (c == 0)),
            end_pix.eq(c == NG - 1),
            end_blk.eq(end_pix & (q == self.i.payload.nv - 1)),
            self.busy.eq((c != 0) | (q != 0) | r1_valid | r2_valid | r3_valid),
            self.res.en.eq(1),
            self.res.addr.eq(self.i.payload.res_addr + qoff + c),
            self.i.ready.eq(issuing & end_blk),
        ]

        # R0 -> R1
        r1_c = Signal(range(NG))
        r1_end = Signal()
        r1_last = Signal()
        r1_acc = Signal(data.ArrayLayout(signed(32), G))
        r1_prm = Signal(data.ArrayLayout(ParamWord, G))
        m.d.sync += [r1_valid.eq(issuing), r1_c.eq(c), r1_end.eq(end_pix),
                     r1_last.eq(self.i.payload.last & end_blk)]
        with m.Switch(c):
            for grp in range(NG):
                with m.Case(grp):
                    for lane in range(G):
                        m.d.sync += r1_prm[lane].eq(self.prm[grp * G + lane])
        sel = Signal(range(PX * NG))
        m.d.comb += sel.eq(q * NG + c)
        with m.Switch(sel):
            for n in range(PX * NG):
                with m.Case(n):
                    for lane in range(G):
                        m.d.sync += r1_acc[lane].eq(self.i.payload.acc[n * G + lane])
        with m.If(issuing):
            with m.If(~end_pix):
                m.d.sync += c.eq(c + 1)
            with m.Else():
                m.d.sync += c.eq(0)
                with m.If(end_blk):
                    m.d.sync += [q.eq(0), qoff.eq(0)]
                with m.Else():
                    m.d.sync += [q.eq(q + 1), qoff.eq(qoff + self.res_step)]

        # R1 -> R2: products
        r2_c = Signal(range(NG))
        r2_end = Signal()
        r2_last = Signal()
        r2_pm = [Signal(signed(49), name=f"r2_pm{lane}") for lane in range(G)]
        r2_pr = [Signal(signed(33), name=f"r2_pr{lane}") for lane in range(G)]
        r2_shift = [Signal(6, name=f"r2_shift{lane}") for lane in range(G)]
        m.d.sync += [r2_valid.eq(r1_valid), r2_c.eq(r1_c), r2_end.eq(r1_end),
                     r2_last.eq(r1_last)]
        for lane in range(G):
            res = Signal(signed(8), name=f"res{lane}")
            m.d.comb += res.eq(Mux(self.residual, self.res.data[lane], 0))
            m.d.sync += [
                r2_pm[lane].eq(r1_acc[lane] * r1_prm[lane].mult),
                r2_pr[lane].eq(res * r1_prm[lane].res_mult),
                r2_shift[lane].eq(r1_prm[lane].shift),
            ]

        # R2 -> R3: sum and rounding
        r3_c = Signal(range(NG))
        r3_end = Signal()
        r3_last = Signal()
        r3_sum = [Signal(signed(52), name=f"r3_sum{lane}") for lane in range(G)]
        r3_shift = [Signal(6, name=f"r3_shift{lane}") for lane in range(G)]
        m.d.sync += [r3_valid.eq(r2_valid), r3_c.eq(r2_c), r3_end.eq(r2_end),
                     r3_last.eq(r2_last)]
        for lane in range(G):
            rnd = Signal(48, name=f"rnd{lane}")
            m.d.comb += rnd.eq((Const(1, 48) << r2_shift[lane]) >> 1)
            m.d.sync += [r3_sum[lane].eq(r2_pm[lane] + r2_pr[lane] + rnd),
                         r3_shift[lane].eq(r2_shift[lane])]

        # R3: shift, ReLU, saturation into the output queue slot ``wp``
        ow = out_word(PO)
        queue = Signal(data.ArrayLayout(ow, D))
        wp = Signal(range(D))
        rp = Signal(range(D))
        count = Signal(range(D + 1))
        push = Signal()
        pop = Signal()
        m.d.comb += [
            push.eq(r3_valid & r3_end),
            pop.eq(self.o.valid & self.o.ready),
            self.o.valid.eq(count != 0),
            self.o.payload.as_value().eq(queue.as_value().word_select(rp, ow.size)),
        ]
        with m.If(r3_valid):
            for lane in range(G):
                z = Signal(signed(52), name=f"z{lane}")
                y = Signal(signed(8), name=f"y{lane}")
                m.d.comb += [
                    z.eq(r3_sum[lane] >> r3_shift[lane]),
                    y.eq(Mux(self.relu & (z < 0), 0,
                             Mux(z > 127, 127, Mux(z < -128, -128, z)))),
                ]
                for d in range(D):
                    with m.If(wp == d):
                        with m.Switch(r3_c):
                            for grp in range(NG):
                                with m.Case(grp):
                                    m.d.sync += queue[d].data[grp * G + lane].eq(y)
            with m.If(r3_end):
                for d in range(D):
                    with m.If(wp == d):
                        m.d.sync += queue[d].last.eq(r3_last)
        with m.If(push):
            m.d.sync += wp.eq(Mux(wp == D - 1, 0, wp + 1))
        with m.If(pop):
            m.d.sync += rp.eq(Mux(rp == D - 1, 0, rp + 1))
        m.d.sync += [count.eq(count + push - pop),
                     credits.eq(credits - pix_start + pop)]
        return m
