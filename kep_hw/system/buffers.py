# SPDX-License-Identifier: Apache-2.0
"""The system's memories: activation buffers with their port multiplexing, the output writer,
the weight and parameter memories.

:class:`ActivationBuffers` holds one memory per buffer of the
:class:`~kep_hw.system.plan.NetworkPlan` (words of ``lanes`` int8 channels of one pixel) and
gives their ports to the engine while a run is in progress, to the host side otherwise.
:class:`OutputWriter` writes the engine's output transfers into the destination buffer.
:class:`WeightMemories` holds the weight and parameter words: all layers' embedded at build
time (``init=``), or one layer's written by the host before each layer (streamed mode).
"""

from __future__ import annotations

from amaranth import Array, Module, Mux, Shape, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from kep_hw.gateware.engine import connect_read
from kep_hw.gateware.layouts import (PARAM_WORD_BITS, WEIGHT_ELEM_BITS, ParamWord, act_word,
                                     out_word, weight_word, wt_columns)
from kep_hw.gateware.wtmem import WeightColumns
from kep_hw.system.plan import NetworkPlan

__all__ = ["addr_bits", "ActivationBuffers", "OutputWriter", "WeightMemories"]


def addr_bits(words: int) -> int:
    """Address bits of a memory of ``words`` words as the system sizes it (``words`` itself is
    representable: one bit more than needed when ``words`` is a power of two)."""
    return max(1, (max(words, 1)).bit_length())


def _check_plan(plan):
    if not isinstance(plan, NetworkPlan):
        raise TypeError(f"plan must be a NetworkPlan, got {plan!r}")


class ActivationBuffers(wiring.Component):
    """The activation buffers and who reads and writes them.

    While ``running``: the engine's ``act`` and ``res`` ports read the ``src_buf`` and
    ``res_buf`` buffers, ``wr`` (the output writer) writes the ``dst_buf`` buffer. Every buffer
    not read by the engine is read at ``out``'s address; ``out`` returns the output buffer's
    data. ``out`` reads have a latency of one cycle (the memories' synchronous read ports);
    the engine's ``act`` and ``res`` reads two (:data:`kep_hw.gateware.engine.READ_LATENCY`):
    every memory's read data is registered before the multiplexers that select the engine's
    buffers, so no path runs from a block RAM output through a multiplexer into the engine.

    The input buffer is double: two memories, copy ``run_sel`` is the buffer of the run in
    progress (the network reads its image there and may reuse it for later tensors), copy
    ``img_sel`` receives the next image through ``img`` at any time, also while a run is in
    progress (the sequencer swaps them when it starts a run).

    Parameters
    ----------
    plan : NetworkPlan
        Buffers (depths), input and output buffer, lanes.

    Attributes
    ----------
    act, res : Out(ReadPort.Signature)
        Engine reads of the source and residual buffers (``addr_bits`` address bits).
    out : Out(ReadPort.Signature)
        Host-side reads of the output buffer (``addr_bits + 1`` address bits).
    img : Out(WritePort.Signature)
        Host-side writes of the input buffer, while not running.
    wr : Out(WritePort.Signature)
        Writes of the destination buffer, while running.
    running : In(1)
    src_buf, res_buf, dst_buf : In(range(max(buffers, 2)))
    src_sel, res_sel : In(max(buffers, 2))
        ``running & (src_buf == b)``, ``running & (res_buf == b)`` per buffer ``b``, as the
        sequencer's registers (:class:`kep_hw.system.sequencer.LayerSequencer`): the select of
        each buffer's read address.
    run_sel, img_sel : In(1)
        The input buffer's copy of the run, the copy ``img`` writes.
    """

    def __init__(self, plan: NetworkPlan):
        _check_plan(plan)
        self.plan = plan
        G = plan.lanes
        #: address bits of the engine's ports
        self.addr_bits = addr_bits(max(plan.buffer_words))
        buf = Shape.cast(range(max(len(plan.buffer_words), 2)))
        word = unsigned(8 * G)
        super().__init__({
            "act": Out(ReadPort.Signature(addr_width=self.addr_bits, shape=act_word(G))),
            "res": Out(ReadPort.Signature(addr_width=self.addr_bits, shape=act_word(G))),
            "out": Out(ReadPort.Signature(addr_width=self.addr_bits + 1, shape=word)),
            "img": Out(WritePort.Signature(addr_width=self.addr_bits + 1, shape=word)),
            "wr": Out(WritePort.Signature(addr_width=self.addr_bits + 1, shape=word)),
            "running": In(1),
            "src_buf": In(buf),
            "res_buf": In(buf),
            "dst_buf": In(buf),
            "src_sel": In(max(len(plan.buffer_words), 2)),
            "res_sel": In(max(len(plan.buffer_words), 2)),
            "run_sel": In(1),
            "img_sel": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        plan = self.plan
        G = plan.lanes
        running, src, res, dst = self.running, self.src_buf, self.res_buf, self.dst_buf
        bufs = []
        for b, depth in enumerate(plan.buffer_words):
            copies = 2 if b == plan.input_buffer else 1
            ports = []
            for c in range(copies):
                mem = Memory(shape=unsigned(8 * G), depth=depth, init=[])
                m.submodules[f"act{b}" + ("ab"[c] if copies == 2 else "")] = mem
                ports.append((mem.read_port(), mem.write_port()))
            bufs.append(ports)

        data = []
        data_q = []             # the same, registered (the engine's ports)
        for b, ports in enumerate(bufs):
            for c, (rd, wr) in enumerate(ports):
                with m.If(self.src_sel[b]):
                    m.d.comb += rd.addr.eq(self.act.addr)
                with m.Elif(self.res_sel[b]):
                    m.d.comb += rd.addr.eq(self.res.addr)
                with m.Else():
                    m.d.comb += rd.addr.eq(self.out.addr)
                run_copy = (self.run_sel == c) if len(ports) == 2 else 1
                with m.If(running & run_copy):
                    m.d.comb += [wr.addr.eq(self.wr.addr), wr.data.eq(self.wr.data),
                                 wr.en.eq(self.wr.en & (dst == b))]
                if len(ports) == 2:
                    with m.Elif(self.img_sel == c):
                        m.d.comb += [wr.addr.eq(self.img.addr), wr.data.eq(self.img.data),
                                     wr.en.eq(self.img.en)]
            regs = []
            for c, (rd, _) in enumerate(ports):
                q = Signal.like(rd.data, name=f"act{b}_{c}_q", reset_less=True)
                m.d.sync += q.eq(rd.data)
                regs.append(q)
            if len(ports) == 2:
                data.append(Mux(self.run_sel, ports[1][0].data, ports[0][0].data))
                data_q.append(Mux(self.run_sel, regs[1], regs[0]))
            else:
                data.append(ports[0][0].data)
                data_q.append(regs[0])
        act_data = Array(data_q)
        m.d.comb += [self.act.data.eq(act_data[src]), self.res.data.eq(act_data[res]),
                     self.out.data.eq(data[plan.output_buffer])]
        return m


class OutputWriter(wiring.Component):
    """The engine's output transfers into the destination buffer.

    A transfer (P channels of one pixel) is written as ``P / lanes`` words, one per cycle,
    starting the cycle after it is offered; it is accepted (``i.ready``) in the cycle after
    the last word, so each transfer takes ``P / lanes + 2`` cycles. Words of channels
    ``>= cfg.cout`` are not written. Word ``k`` of group ``g`` of pixel ``n`` (row-major) goes
    to ``n * cfg.cwo + g * P / lanes + k``. ``start`` (the engine's) restarts at pixel 0,
    group 0.

    Parameters
    ----------
    po : int
        P of an output transfer (Po, channels per group).
    lanes : int
        G, channels per buffer word (``po % lanes == 0``).
    addr_width : int
        Address bits of ``o``.
    cfg_layout : data.Layout
        Layout of the engine's configuration registers.

    Attributes
    ----------
    i : In(stream.Signature(out_word(po)))
        The engine's outputs.
    start : In(1)
        The engine starts a layer.
    cfg : In(cfg_layout)
        The layer's configuration (``cout``, ``cwo``, ``ho``, ``wo``).
    o : In(WritePort.Signature)
        Writes of the destination buffer.
    """

    def __init__(self, *, po: int, lanes: int, addr_width: int, cfg_layout):
        if not isinstance(lanes, int) or lanes < 1 or not isinstance(po, int) or po < 1 \
                or po % lanes:
            raise ValueError(f"po {po!r} must be a positive multiple of lanes {lanes!r}")
        self.po, self.lanes = po, lanes
        super().__init__({
            "i": In(stream.Signature(out_word(po))),
            "start": In(1),
            "cfg": In(cfg_layout),
            "o": In(WritePort.Signature(addr_width=addr_width, shape=unsigned(8 * lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        P, G = self.po, self.lanes
        cfg = self.cfg
        wdata = Signal(8 * P)
        wk = Signal(range(P // G + 1))
        wpix = Signal.like(self.o.addr)
        wgoff = Signal.like(self.o.addr)
        wx = Signal.like(cfg.wo)
        wy = Signal.like(cfg.ho)
        wch = Signal(len(cfg.cout) + 2)
        m.d.comb += [self.o.addr.eq(wpix + wgoff + wk), self.o.data.eq(wdata[:8 * G])]
        with m.FSM(name="writer"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [wpix.eq(0), wgoff.eq(0), wx.eq(0), wy.eq(0), wch.eq(0)]
                with m.Elif(self.i.valid):
                    m.d.sync += [wdata.eq(self.i.payload.data.as_value()), wk.eq(0)]
                    m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += self.o.en.eq(wch + wk * G < cfg.cout)
                m.d.sync += [wk.eq(wk + 1), wdata.eq(wdata >> (8 * G))]
                with m.If(wk == P // G - 1):
                    m.next = "ACK"
            with m.State("ACK"):
                m.d.comb += self.i.ready.eq(1)
                m.d.sync += [wpix.eq(wpix + cfg.cwo), wx.eq(wx + 1)]
                with m.If(wx == cfg.wo - 1):
                    m.d.sync += [wx.eq(0), wy.eq(wy + 1)]
                    with m.If(wy == cfg.ho - 1):
                        m.d.sync += [wy.eq(0), wpix.eq(0), wgoff.eq(wgoff + P // G),
                                     wch.eq(wch + P)]
                m.next = "IDLE"
        return m


class WeightMemories(wiring.Component):
    """Weight and parameter memories.

    Embedded mode: all layers' words (``plan.layers[n].wt_words`` / ``prm_words`` in layer
    order) as the memories' initial contents. Streamed mode: room for the largest layer, written
    through ``wt_wr`` and ``prm_wr``. Parameter reads have a latency of two cycles (the read
    data is registered: :data:`kep_hw.gateware.engine.READ_LATENCY`), weight reads two (a
    register after each block RAM, then the bank multiplexer:
    :class:`kep_hw.gateware.wtmem.WeightColumns`, :data:`kep_hw.gateware.engine.WT_PORT_LATENCY`).

    Parameters
    ----------
    plan : NetworkPlan
    streamed : bool

    Attributes
    ----------
    wt : Out(ReadPort.Signature(addr_width=wt_bits, shape=weight_word(po)))
    wt_addr : In(ArrayLayout(unsigned(wt_bits), len(wt_columns(po))))
        The weight address once per column memory (the engine's ``wt_addr``; ``wt.addr`` is
        not used): :class:`kep_hw.gateware.wtmem.WeightColumns`.
    prm : Out(ReadPort.Signature(addr_width=prm_bits, shape=ParamWord))
        The engine's reads.
    wt_wr, prm_wr : Out(WritePort.Signature(addr_width=16))
        Writes (streamed mode only).
    """

    def __init__(self, plan: NetworkPlan, *, streamed: bool):
        _check_plan(plan)
        self.plan, self.streamed = plan, bool(streamed)
        if self.streamed:
            self.wt_depth = plan.max_layer_weight_words
            self.prm_depth = plan.max_layer_param_words
        else:
            self.wt_depth, self.prm_depth = plan.weight_words, plan.param_words
        #: address bits of the read ports
        self.wt_bits, self.prm_bits = addr_bits(self.wt_depth), addr_bits(self.prm_depth)
        P = plan.po
        ports = {
            "wt": Out(ReadPort.Signature(addr_width=self.wt_bits, shape=weight_word(P))),
            "wt_addr": In(data.ArrayLayout(unsigned(self.wt_bits), len(wt_columns(P)))),
            "prm": Out(ReadPort.Signature(addr_width=self.prm_bits, shape=ParamWord)),
        }
        if self.streamed:
            ports["wt_wr"] = Out(WritePort.Signature(addr_width=16,
                                                     shape=unsigned(WEIGHT_ELEM_BITS * P)))
            ports["prm_wr"] = Out(WritePort.Signature(addr_width=16,
                                                      shape=unsigned(PARAM_WORD_BITS)))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        plan = self.plan
        wt_init = [] if self.streamed else [w for lp in plan.layers for w in lp.wt_words]
        prm_init = [] if self.streamed else [w for lp in plan.layers for w in lp.prm_words]
        # the weight words in column memories, column c read at the engine's wt_addr[c]
        wt_cols = WeightColumns(m, po=plan.po, depth=self.wt_depth, init=wt_init)
        m.submodules.prm_mem = prm_mem = Memory(shape=unsigned(PARAM_WORD_BITS),
                                                depth=self.prm_depth, init=prm_init)
        wt_cols.connect_engine(m, self.wt, self.wt_addr)   # the engine registers the word
        connect_read(m, prm_mem.read_port(), self.prm)
        if self.streamed:
            wt_cols.connect_write(m, self.wt_wr.addr, self.wt_wr.data, self.wt_wr.en)
            prm_wr = prm_mem.write_port()
            m.d.comb += [prm_wr.addr.eq(self.prm_wr.addr), prm_wr.data.eq(self.prm_wr.data),
                         prm_wr.en.eq(self.prm_wr.en)]
        return m
