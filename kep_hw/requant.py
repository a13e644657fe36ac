# SPDX-License-Identifier: Apache-2.0
"""Pipelined requantization unit: P int32 accumulators -> P int8 outputs, G lanes per cycle.

Per lane (``docs/arithmetic.md``)::

    z = (acc * mult + res * res_mult + 2**(shift-1)) >> shift;  relu;  saturate to int8

Pipeline, one lane group (G output channels) issued per cycle:

- R0: residual word address ``res_addr + c`` presented; accumulators and parameters of the
  group selected into registers.
- R1: residual data arrives (read latency 1); ``acc*mult`` (32x16) and ``res*res_mult`` (8x24)
  registered.
- R2: sum plus rounding term registered.
- R3: arithmetic shift, ReLU, saturation written into the output register.

A pixel takes ``P/G`` issue cycles; the output register is handed to ``o`` after the last group
(latency ``P/G + 3`` cycles from the first issue) and the next pixel starts once it has been
transferred.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from .layouts import ParamWord, act_word, out_word
from .params import EngineParams

__all__ = ["acc_word", "Requant"]


def acc_word(params: EngineParams) -> data.StructLayout:
    """Accumulators of one output pixel, its residual word address and the layer-end flag."""
    return data.StructLayout({
        "acc": data.ArrayLayout(signed(32), params.pes),
        "res_addr": params.act_bits,
        "last": 1,
    })


class Requant(wiring.Component):
    """Requantization of one pixel's P accumulators, G lanes per cycle.

    Parameters
    ----------
    params : EngineParams
        Engine size.

    Attributes
    ----------
    i : In(stream.Signature(acc_word))
        Accumulators; the payload is read in place and ``ready`` is raised with the last lane
        group (the producer's shadow register is freed then).
    prm : In(ArrayLayout(ParamWord, P))
        Parameters of the current output-channel group (stable while busy).
    relu, residual : In(1)
        Layer flags.
    res : In(ReadPort.Signature)
        Residual read port, data one cycle after addr.
    o : Out(stream.Signature(out_word))
        int8 outputs, one transfer per pixel.
    busy : Out(1)
        A pixel is being requantized (its output not yet in the output register).
    """

    def __init__(self, params: EngineParams):
        if not isinstance(params, EngineParams):
            raise TypeError(f"params must be EngineParams, got {params!r}")
        self.params = params
        super().__init__({
            "i": In(stream.Signature(acc_word(params))),
            "prm": In(data.ArrayLayout(ParamWord, params.pes)),
            "relu": In(1),
            "residual": In(1),
            "res": In(ReadPort.Signature(addr_width=params.act_bits,
                                         shape=act_word(params.lanes))),
            "o": Out(stream.Signature(out_word(params.pes))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        P, G = self.params.pes, self.params.lanes
        NG = P // G

        active = Signal()          # issuing or pipeline in flight for one pixel
        c = Signal(range(NG))
        issuing = Signal()
        # ``active`` with c == 0: the pixel's groups are all issued and still in flight
        m.d.comb += [
            issuing.eq(self.i.valid & ~self.o.valid & (~active | (c != 0))),
            self.busy.eq(active),
            self.res.en.eq(1),
            self.res.addr.eq(self.i.payload.res_addr + c),
            self.i.ready.eq(issuing & (c == NG - 1)),
        ]

        # R0 -> R1
        r1_valid = Signal()
        r1_c = Signal(range(NG))
        r1_end = Signal()
        r1_last = Signal()
        r1_acc = Signal(data.ArrayLayout(signed(32), G))
        r1_prm = Signal(data.ArrayLayout(ParamWord, G))
        m.d.sync += [r1_valid.eq(issuing), r1_c.eq(c), r1_end.eq(c == NG - 1),
                     r1_last.eq(self.i.payload.last)]
        with m.Switch(c):
            for grp in range(NG):
                with m.Case(grp):
                    for lane in range(G):
                        m.d.sync += [r1_acc[lane].eq(self.i.payload.acc[grp * G + lane]),
                                     r1_prm[lane].eq(self.prm[grp * G + lane])]
        with m.If(issuing):
            m.d.sync += active.eq(1)
            with m.If(c == NG - 1):
                m.d.sync += c.eq(0)
            with m.Else():
                m.d.sync += c.eq(c + 1)

        # R1 -> R2: products
        r2_valid = Signal()
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
        r3_valid = Signal()
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

        # R3: shift, ReLU, saturation into the output register
        with m.If(r3_valid):
            for lane in range(G):
                z = Signal(signed(52), name=f"z{lane}")
                y = Signal(signed(8), name=f"y{lane}")
                m.d.comb += [
                    z.eq(r3_sum[lane] >> r3_shift[lane]),
                    y.eq(Mux(self.relu & (z < 0), 0,
                             Mux(z > 127, 127, Mux(z < -128, -128, z)))),
                ]
                with m.Switch(r3_c):
                    for grp in range(NG):
                        with m.Case(grp):
                            m.d.sync += self.o.payload.data[grp * G + lane].eq(y)
            with m.If(r3_end):
                m.d.sync += [self.o.valid.eq(1), self.o.payload.last.eq(r3_last),
                             active.eq(0)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        return m
