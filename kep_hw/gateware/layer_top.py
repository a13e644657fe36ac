# SPDX-License-Identifier: Apache-2.0
"""Standalone wrapper around the engine: on-chip memories loaded by a stream, a cycle counter.

This is the top level the cocotb regression drives (``docs/accelerator.md``): load words into
the activation (+ residual), weight and parameter memories through ``load``, set ``cfg``, pulse
``start``, collect outputs from ``o`` (with back-pressure) and read ``cycles``.
"""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from kep_hw.gateware.engine import Engine, connect_read
from kep_hw.gateware.layouts import ParamWord, Target, act_word, load_layout, out_word
from kep_hw.gateware.wtmem import WeightColumns
from kep_hw.gateware.params import EngineParams, check_params

__all__ = ["LayerTop"]


class LayerTop(wiring.Component):
    """Engine + memories + loader + cycle counter.

    Parameters
    ----------
    params : EngineParams
        Engine size (also the memory depths).

    Attributes
    ----------
    load : In(stream.Signature(load_layout))
        Memory writes, always ready.
    cfg : In(LayerConfig)
        Layer configuration.
    start : In(1)
        Start pulse.
    busy : Out(1)
        Engine busy.
    cycles : Out(32)
        Cycles from ``start`` to the end of the layer (counts while busy).
    o : Out(stream.Signature(out_word(Po)))
        Output stream (one transfer per output pixel and group).
    """

    def __init__(self, params: EngineParams):
        self.params = check_params(params)
        super().__init__({
            "load": In(stream.Signature(load_layout(params))),
            "cfg": In(params.config_layout),
            "start": In(1),
            "busy": Out(1),
            "cycles": Out(32),
            "o": Out(stream.Signature(out_word(params.po))),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        m.submodules.engine = eng = Engine(p)
        m.submodules.act_mem = act_mem = Memory(shape=act_word(p.lanes), depth=p.act_depth,
                                                init=[])
        wt_cols = WeightColumns(m, po=p.po, depth=p.wt_depth)
        m.submodules.prm_mem = prm_mem = Memory(shape=ParamWord, depth=p.prm_depth, init=[])

        # loader
        m.d.comb += self.load.ready.eq(1)
        ld = self.load.payload
        wt_cols.connect_write(m, ld.addr, ld.data, self.load.valid & (ld.target == Target.WT))
        for mem, target, shape in ((act_mem, Target.ACT, act_word(p.lanes)),
                                   (prm_mem, Target.PRM, ParamWord)):
            wp = mem.write_port()
            m.d.comb += [
                wp.addr.eq(ld.addr),
                wp.data.eq(ld.data[:shape.size]),
                wp.en.eq(self.load.valid & (ld.target == target)),
            ]

        # engine
        for port, mem in ((eng.act, act_mem), (eng.res, act_mem), (eng.prm, prm_mem)):
            connect_read(m, mem.read_port(), port)
        wt_cols.connect_engine(m, eng.wt, eng.wt_addr)
        wiring.connect(m, eng.o, wiring.flipped(self.o))
        m.d.comb += [eng.cfg.eq(self.cfg), eng.start.eq(self.start), self.busy.eq(eng.busy)]

        # cycle counter: reset by start, counts while busy
        with m.If(self.start & ~eng.busy):
            m.d.sync += self.cycles.eq(1)
        with m.Elif(eng.busy):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        return m
