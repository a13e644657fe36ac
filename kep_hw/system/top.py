# SPDX-License-Identifier: Apache-2.0
"""The system on the FPGA: UART link, frame handling, layer sequencer, memories and the engine.

:class:`KepSystem` is the clock-agnostic core (``sync`` domain, ports ``rx``/``tx``); it is the
top level of the cocotb system simulation and is put on a board by
:class:`kep_hw.board.top.BoardTop`. It wires together:

- the UART receiver and transmitter (:mod:`kep_hw.gateware.uart`);
- :class:`~kep_hw.system.framing.FrameReceiver` (frames from the host: image loader, streamed
  weight writes, errors) and :class:`~kep_hw.system.framing.FrameTransmitter` (``INFO``,
  ``NEED``, ``RESULT`` and ``ERROR`` frames);
- :class:`~kep_hw.system.sequencer.LayerSequencer` (layer table, cycle counter);
- :class:`~kep_hw.system.buffers.ActivationBuffers`, :class:`~kep_hw.system.buffers.OutputWriter`
  and :class:`~kep_hw.system.buffers.WeightMemories`;
- the compute engine :class:`kep_hw.gateware.engine.Engine` (interface of
  ``docs/accelerator.md``).

Dataflow (``docs/boards.md``): the host sends the int8 image in an ``IMAGE`` frame, written into
the input activation buffer; the sequencer runs every conv layer from a layer table built from
the ``.kep`` at build time (config registers, source/residual/destination buffers, weight and
parameter base addresses), the engine's outputs are written back into the destination buffer;
then :class:`~kep_hw.system.head.Head` sums the last conv output over H x W and computes the
classifier; a ``RESULT`` frame carries the hardware cycle counter and the int32 logits (and the
last conv output after an ``IMAGE_FMAP`` frame, or for a network without a head).
In streamed mode the sequencer asks for each layer's weights (``NEED``) and waits for ``GO``.
"""

from __future__ import annotations

from amaranth import Module, Mux
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from kep_hw.gateware.engine import READ_LATENCY, Engine
from kep_hw.gateware.params import EngineParams
from kep_hw.gateware.uart import UARTRx, UARTTx
from kep_hw.system.buffers import ActivationBuffers, OutputWriter, WeightMemories
from kep_hw.system.framing import FrameReceiver, FrameTransmitter
from kep_hw.system.head import Head
from kep_hw.system.pool import MaxPool
from kep_hw.system.plan import NetworkPlan
from kep_hw.system.protocol import MAX_PAYLOAD, PROTOCOL_VERSION
from kep_hw.system.sequencer import LayerSequencer

__all__ = ["KepSystem", "info_payload", "SIM_DIVISOR", "SIM_BYTE_TIMEOUT"]

#: UART divisor (cycles per bit) of the simulation build: fast, sim-only.
SIM_DIVISOR = 8
#: Inter-byte timeout of the frame receiver in the simulation build (cycles).
SIM_BYTE_TIMEOUT = 20000


def info_payload(plan: NetworkPlan, *, streamed: bool, clk_hz: float, px: int = 1) -> bytes:
    """The ``INFO`` frame payload a system built for ``plan`` answers to ``PING`` (``plan.po``
    is Po, the output channels per group; ``px`` the engine's output pixels per block)."""
    return (bytes([PROTOCOL_VERSION, plan.po, plan.lanes, int(streamed), len(plan.layers), px])
            + int(round(clk_hz / 1000)).to_bytes(4, "little")
            + plan.model_id(streamed).to_bytes(4, "little")
            + plan.in_words.to_bytes(2, "little") + plan.out_words.to_bytes(2, "little")
            + plan.classes.to_bytes(2, "little"))


class KepSystem(wiring.Component):
    """The whole system in the ``sync`` domain: UART, frames, sequencer, memories, engine.

    Parameters
    ----------
    plan : NetworkPlan
        The network (layer table, buffers, weight and parameter words).
    streamed : bool
        ``False``: all weights and parameters embedded (``init=``); ``True``: memories for one
        layer, filled by the host before each layer.
    divisor : int
        UART cycles per bit.
    clk_hz : float
        Core clock (reported in ``INFO``).
    byte_timeout : int
        Cycles without a byte after which a partial frame is dropped and reported.
    px : int
        Output pixels per block of :class:`kep_hw.gateware.engine.Engine`: the engine has
        ``plan.po * px`` PEs, ``plan.po`` (Po) output channels per group. Memory images,
        configuration and output stream are those of ``px = 1``.
    rq_lanes : int, optional
        Requantization lanes L of the engine (default ``plan.lanes``).
    lut_pes : int
        PEs whose multiplier is built from logic (default 0).
    operand_reg : bool
        A register per PE between its operand multiplexer and its multiplier
        (:class:`kep_hw.gateware.params.EngineParams`, default False).
    chain : bool
        The engine's pixel groups in a chain (``EngineParams.chain``, default False).
    dist_reg : bool
        The engine's distribution register before the pixel groups (``EngineParams.dist_reg``,
        default False).
    pe_sites : sequence of str, optional
        The DSP site of each PE's multiplier (:class:`kep_hw.gateware.engine.Engine`,
        :mod:`kep_hw.board.floorplan`); default: the placer chooses.

    Attributes
    ----------
    rx : In(1)
    tx : Out(1)

    Raises
    ------
    ValueError
        If ``px`` is not a positive integer or the input or output tensor exceeds one frame.
    """

    def __init__(self, plan: NetworkPlan, *, streamed: bool, divisor: int, clk_hz: float,
                 byte_timeout: int, px: int = 1, rq_lanes: int | None = None,
                 lut_pes: int = 0, operand_reg: bool = False, chain: bool = False,
                 dist_reg: bool = False, pe_sites=None):
        if not isinstance(px, int) or px < 1:
            raise ValueError(f"px must be a positive integer, got {px!r}")
        self.px, self.rq_lanes, self.lut_pes = px, rq_lanes, lut_pes
        self.operand_reg, self.chain, self.pe_sites = operand_reg, chain, pe_sites
        self.dist_reg = dist_reg
        self.plan, self.streamed, self.divisor = plan, streamed, divisor
        self.clk_hz, self.byte_timeout = clk_hz, byte_timeout
        if plan.image_bytes > MAX_PAYLOAD or plan.result_bytes(True) > MAX_PAYLOAD:
            raise ValueError("input or output tensor exceeds one frame")
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        plan = self.plan
        P, G = plan.po, plan.lanes
        cfgs = plan.with_bases(self.streamed)

        # memories
        m.submodules.buffers = bufs = ActivationBuffers(plan)
        m.submodules.weights = wts = WeightMemories(plan, streamed=self.streamed)

        # engine (max pooling layers' shapes are in the same registers)
        maxc = max(max(c["cin"], c["cout"]) for c in cfgs)
        maxd = max(max(c["h"], c["w"]) for c in cfgs)
        m.submodules.engine = eng = Engine(EngineParams(
            pes=P * self.px, px=self.px, lanes=G, max_cin=maxc, max_cout=maxc, max_hw=maxd,
            act_depth=2**bufs.addr_bits, wt_depth=2**wts.wt_bits, prm_depth=2**wts.prm_bits,
            rq_lanes=self.rq_lanes, lut_pes=self.lut_pes, operand_reg=self.operand_reg,
            chain=self.chain, dist_reg=self.dist_reg), pe_sites=self.pe_sites)
        has_pool = any(lp.kind == "maxpool" for lp in plan.layers)
        if not has_pool:
            wiring.connect(m, act=bufs.act, engine=eng.act)
        wiring.connect(m, res=bufs.res, engine=eng.res)
        wiring.connect(m, wt=wts.wt, engine=eng.wt)
        m.d.comb += wts.wt_addr.eq(eng.wt_addr)
        wiring.connect(m, prm=wts.prm, engine=eng.prm)

        # sequencer
        m.submodules.sequencer = seq = LayerSequencer(plan, streamed=self.streamed,
                                                      cfg_layout=eng.cfg_layout)
        m.d.comb += [eng.cfg.eq(seq.cfg), eng.start.eq(seq.eng_start),
                     seq.eng_busy.eq(eng.busy),
                     bufs.running.eq(seq.running), bufs.src_buf.eq(seq.src_buf),
                     bufs.run_sel.eq(seq.run_sel), bufs.img_sel.eq(seq.img_sel),
                     bufs.res_buf.eq(seq.res_buf), bufs.dst_buf.eq(seq.dst_buf),
                     bufs.src_sel.eq(seq.src_sel), bufs.res_sel.eq(seq.res_sel)]

        # output writer: engine transfers -> destination buffer
        m.submodules.writer = writer = OutputWriter(po=P, lanes=G, addr_width=bufs.addr_bits + 1,
                                                    cfg_layout=eng.cfg_layout)
        m.d.comb += [writer.cfg.eq(seq.cfg), writer.start.eq(seq.eng_start)]
        wiring.connect(m, engine=eng.o, writer=writer.i)
        if has_pool:
            # max pooling layers: the pooling unit reads the source buffer through the
            # engine's port and writes the destination buffer instead of the output writer
            m.submodules.pool = pool = MaxPool(lanes=G, addr_width=bufs.addr_bits + 1,
                                               cfg_layout=eng.cfg_layout,
                                               latency=READ_LATENCY)
            pooling = seq.pooling
            m.d.comb += [pool.cfg.eq(seq.cfg), pool.start.eq(seq.pool_start),
                         seq.pool_busy.eq(pool.busy),
                         eng.act.data.eq(bufs.act.data),
                         pool.rd.data.eq(bufs.act.data.as_value()),
                         bufs.act.addr.eq(Mux(pooling, pool.rd.addr, eng.act.addr)),
                         bufs.wr.addr.eq(Mux(pooling, pool.wr.addr, writer.o.addr)),
                         bufs.wr.data.eq(Mux(pooling, pool.wr.data, writer.o.data)),
                         bufs.wr.en.eq(Mux(pooling, pool.wr.en, writer.o.en))]
        else:
            wiring.connect(m, writer=writer.o, buffers=bufs.wr)

        # UART
        m.submodules.urx = urx = UARTRx(self.divisor)
        m.submodules.utx = utx = UARTTx(self.divisor)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]

        # frame receiver
        m.submodules.receiver = rx = FrameReceiver(
            lanes=G, in_words=plan.in_words, in_channels=plan.in_shape[0],
            addr_width=bufs.addr_bits + 1,
            byte_timeout=self.byte_timeout, streamed=self.streamed, po=P)
        wiring.connect(m, uart=urx.o, receiver=rx.i)
        wiring.connect(m, receiver=rx.img, buffers=bufs.img)
        if self.streamed:
            wiring.connect(m, receiver=rx.wt_wr, weights=wts.wt_wr)
            wiring.connect(m, receiver=rx.prm_wr, weights=wts.prm_wr)
        m.d.comb += [seq.start.eq(rx.start), seq.go.eq(rx.go), seq.fmap.eq(rx.fmap),
                     rx.running.eq(seq.running), rx.waiting_go.eq(seq.waiting_go),
                     rx.pending.eq(seq.pending)]

        # frame transmitter
        info = info_payload(plan, streamed=self.streamed, clk_hz=self.clk_hz, px=self.px)
        m.submodules.transmitter = tx = FrameTransmitter(
            info=info, lanes=G, out_words=plan.out_words, addr_width=bufs.addr_bits + 1,
            classes=plan.classes)
        wiring.connect(m, transmitter=tx.o, uart=utx.i)
        wiring.connect(m, receiver=rx.err, transmitter=tx.err)
        wiring.connect(m, sequencer=seq.need, transmitter=tx.need)
        m.d.comb += [tx.ping.eq(rx.ping), tx.result.eq(seq.done),
                     tx.cycles.eq(seq.result_cycles), tx.fmap.eq(seq.result_fmap),
                     seq.result_busy.eq(tx.result_busy), tx.out.data.eq(bufs.out.data)]

        # head: reads the output buffer while the run is in progress, the transmitter after it
        if plan.tail:
            pool, fc = plan.tail
            m.submodules.head = head = Head(
                shape=plan.out_shape, lanes=G, weight=fc.weight, bias=fc.bias,
                addr_width=bufs.addr_bits + 1)
            m.d.comb += [head.start.eq(seq.head_start), seq.head_busy.eq(head.busy),
                         head.rd.data.eq(bufs.out.data)]
            wiring.connect(m, head=head.logits, transmitter=tx.logits)
            m.d.comb += bufs.out.addr.eq(Mux(seq.running, head.rd.addr, tx.out.addr))
        else:
            m.d.comb += bufs.out.addr.eq(tx.out.addr)
        return m
