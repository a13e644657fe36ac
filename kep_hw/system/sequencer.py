# SPDX-License-Identifier: Apache-2.0
"""The layer sequencer: runs every conv layer of the network from a layer table.

The table is built from the :class:`~kep_hw.system.plan.NetworkPlan` at build time: per layer
the engine's configuration registers (weight and parameter base addresses included) and its
source, residual and destination buffers.
"""

from __future__ import annotations

from amaranth import Array, Const, Module, Shape, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from kep_hw.system.plan import NetworkPlan

__all__ = ["LayerSequencer"]


class LayerSequencer(wiring.Component):
    """One network run per image: every layer of the table in turn on the engine.

    Images and runs overlap: ``start`` (an image was received into the input buffer's copy
    ``img_sel``) sets ``pending``; in ``IDLE`` a pending image starts a run, which swaps the
    copies (``run_sel`` takes ``img_sel``, the receiver gets the other one) and clears
    ``pending``, so the next image can arrive while this one is computed. A run whose result
    carries the feature map (``result_fmap``) must be sent before the next run overwrites the
    buffers, so ``IDLE`` waits for ``result_busy`` to fall then; and the head, which overwrites
    the logits, waits in ``HWAIT`` until the previous ``RESULT`` is out. ``result_cycles`` and
    ``result_fmap`` hold the last finished run's cycle count and whether its ``RESULT`` carries
    the feature map (``fmap`` of its image, or a plan without a head) until the next one ends.

    Per layer: ``CFG`` (one cycle: the layer's registers are loaded from the table; in streamed
    mode ``need`` asks for its weights and the sequencer waits in ``WAITGO`` for ``go``), then
    ``START`` (one cycle: ``eng_start``), then ``RUN`` until ``eng_busy`` is low; a max pooling
    layer: ``CFG``, ``PSTART`` (one cycle: ``pool_start``), ``PRUN`` until ``pool_busy`` is low
    (no weights: no ``need``). A plan with a head then runs it: ``HEAD`` (one cycle: ``head_start``), then ``HEADRUN`` until
    ``head_busy`` is low. ``done`` is strobed in the cycle the last layer (or the head) is seen
    finished; ``running`` falls in the next one.

    ``cycles`` counts the cycles of the run spent in every state but ``IDLE``, ``WAITGO`` and
    ``HWAIT`` (waits for the host): zeroed when a run starts, it keeps its value after the run.

    Latencies: ``start`` in cycle ``c`` on an idle sequencer (``pending`` high from ``c + 1``)
    starts the run in ``c + 1`` and loads the first layer in cycle ``c + 2`` (``CFG``),
    whose registers (``cfg``, ``src_buf``, ``res_buf``, ``dst_buf``) are valid from ``c + 3``;
    ``eng_start`` is high in ``c + 3`` (embedded) or one cycle after ``go`` (streamed).

    Parameters
    ----------
    plan : NetworkPlan
        The network (layer table and buffers).
    streamed : bool
        Ask for each layer's weights (``need``) and wait for ``go`` before starting it.
    cfg_layout : data.Layout
        Layout of the engine's configuration registers (``EngineParams.config_layout``).

    Attributes
    ----------
    start : In(1)
        An image was received (into copy ``img_sel`` of the input buffer).
    fmap : In(1)
        The received image's ``RESULT`` is to carry the feature map (read when its run starts).
    pending : Out(1)
        An image waits for its run (copy ``img_sel`` is taken: no other image may arrive).
    run_sel, img_sel : Out(1)
        The input buffer's copy of the run, the copy the next image goes to.
    result_busy : In(1)
        The transmitter has a ``RESULT`` to send or is sending it.
    result_cycles : Out(32)
        The cycle count of the last finished run.
    result_fmap : Out(1)
        The last finished run's ``RESULT`` carries the feature map.
    go : In(1)
        The layer's weights are loaded (streamed mode).
    waiting_go : Out(1)
        Waiting for ``go``.
    running : Out(1)
        A run is in progress (the engine owns the buffers).
    cycles : Out(32)
        The hardware cycle counter.
    need : Out(stream.Signature(8, always_ready=True))
        Weights of the layer in the payload needed (streamed mode).
    done : Out(1)
        The run ended (strobe).
    cfg : Out(cfg_layout)
        The current layer's configuration registers.
    src_buf, res_buf, dst_buf : Out(range(max(buffers, 2)))
        The current layer's source, residual and destination buffers.
    src_sel, res_sel : Out(max(buffers, 2))
        One bit per buffer: ``running & (src_buf == b)`` and ``running & (res_buf == b)`` as
        registers of their own (loaded with the layer's configuration, cleared when the run
        ends; 0 in the run's first cycle, before its first layer's configuration), so that
        each buffer's read-address select is one flip-flop, not a comparison of
        ``src_buf`` fanned out to every buffer's block RAMs.
    eng_start : Out(1)
        Start the engine on the current layer.
    eng_busy : In(1)
        The engine is running a layer.
    head_start : Out(1)
        Start the head (plans with a head only).
    head_busy : In(1)
        The head is running (plans with a head only).
    pooling : Out(1)
        The current layer is a max pooling layer (valid with ``cfg``; plans with one only).
    pool_start : Out(1)
        Start the max pooling unit (plans with max pooling only).
    pool_busy : In(1)
        The max pooling unit is running.
    """

    def __init__(self, plan: NetworkPlan, *, streamed: bool, cfg_layout):
        if not isinstance(plan, NetworkPlan):
            raise TypeError(f"plan must be a NetworkPlan, got {plan!r}")
        if not plan.layers or len(plan.layers) > 256:
            raise ValueError(f"the plan must have 1 to 256 layers, got {len(plan.layers)!r}")
        self.plan, self.streamed = plan, bool(streamed)
        self.cfg_layout = cfg_layout
        buf = Shape.cast(range(max(len(plan.buffer_words), 2)))
        head = {"head_start": Out(1), "head_busy": In(1)} if plan.tail else {}
        self.has_pool = any(lp.kind == "maxpool" for lp in plan.layers)
        if self.has_pool:
            head.update(pooling=Out(1), pool_start=Out(1), pool_busy=In(1))
        super().__init__({
            **head,
            "start": In(1),
            "fmap": In(1),
            "pending": Out(1),
            "run_sel": Out(1),
            "img_sel": Out(1),
            "result_busy": In(1),
            "result_cycles": Out(32),
            "result_fmap": Out(1),
            "go": In(1),
            "waiting_go": Out(1),
            "running": Out(1),
            "cycles": Out(32),
            "need": Out(stream.Signature(unsigned(8), always_ready=True)),
            "done": Out(1),
            "cfg": Out(cfg_layout),
            "src_buf": Out(buf),
            "res_buf": Out(buf),
            "src_sel": Out(max(len(plan.buffer_words), 2)),
            "res_sel": Out(max(len(plan.buffer_words), 2)),
            "dst_buf": Out(buf),
            "eng_start": Out(1),
            "eng_busy": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        plan = self.plan
        nl = len(plan.layers)
        cfgs = plan.with_bases(self.streamed)

        # layer table
        layer = Signal(range(max(nl, 2)))
        m.d.comb += self.need.payload.eq(layer)
        load_cfg = Signal()
        with m.If(load_cfg):
            with m.Switch(layer):
                for n, (lp, c) in enumerate(zip(plan.layers, cfgs)):
                    with m.Case(n):
                        res = lp.res if lp.res is not None else lp.src
                        m.d.sync += [self.cfg.eq(self.cfg_layout.const(c)),
                                     self.src_buf.eq(lp.src), self.dst_buf.eq(lp.dst),
                                     self.res_buf.eq(res),
                                     self.src_sel.eq(1 << lp.src), self.res_sel.eq(1 << res)]
                        if self.has_pool:
                            m.d.sync += self.pooling.eq(lp.kind == "maxpool")
        is_pool = Signal()
        if self.has_pool:
            kinds = Array(Const(int(lp.kind == "maxpool"), 1) for lp in plan.layers)
            m.d.comb += is_pool.eq(kinds[layer])

        # images: one may wait while another runs
        with m.If(self.start):
            m.d.sync += self.pending.eq(1)
        run_fmap = Signal()
        has_head = bool(plan.tail)

        def finish():
            m.d.sync += [self.running.eq(0), self.src_sel.eq(0), self.res_sel.eq(0),
                         self.result_cycles.eq(cycles + 1),
                         self.result_fmap.eq(run_fmap | (not has_head))]
            m.d.comb += self.done.eq(1)
            m.next = "IDLE"

        # run: CFG [WAITGO] START RUN per layer
        cycles = self.cycles
        with m.FSM(name="seq"):
            with m.State("IDLE"):
                with m.If(self.pending & ~(self.result_busy & self.result_fmap)):
                    m.d.sync += [layer.eq(0), cycles.eq(0), self.running.eq(1),
                                 self.pending.eq(0), self.run_sel.eq(self.img_sel),
                                 self.img_sel.eq(~self.img_sel), run_fmap.eq(self.fmap)]
                    m.next = "CFG"
            with m.State("CFG"):
                m.d.comb += load_cfg.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                with m.If(is_pool):
                    if self.has_pool:
                        m.next = "PSTART"
                with m.Else():
                    if self.streamed:
                        m.d.comb += self.need.valid.eq(1)
                        m.next = "WAITGO"
                    else:
                        m.next = "START"
            with m.State("WAITGO"):
                m.d.comb += self.waiting_go.eq(1)
                with m.If(self.go):
                    m.next = "START"
            with m.State("START"):
                m.d.comb += self.eng_start.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                m.next = "RUN"
            def layer_done():
                with m.If(layer == nl - 1):
                    if has_head:
                        m.next = "HWAIT"
                    else:
                        finish()
                with m.Else():
                    m.d.sync += layer.eq(layer + 1)
                    m.next = "CFG"

            with m.State("RUN"):
                m.d.sync += cycles.eq(cycles + 1)
                with m.If(~self.eng_busy):
                    layer_done()
            if self.has_pool:
                with m.State("PSTART"):
                    m.d.comb += self.pool_start.eq(1)
                    m.d.sync += cycles.eq(cycles + 1)
                    m.next = "PRUN"
                with m.State("PRUN"):
                    m.d.sync += cycles.eq(cycles + 1)
                    with m.If(~self.pool_busy):
                        layer_done()
            if has_head:
                with m.State("HWAIT"):
                    # the previous RESULT reads the logits: let it go out first
                    with m.If(~self.result_busy):
                        m.next = "HEAD"
                with m.State("HEAD"):
                    m.d.comb += self.head_start.eq(1)
                    m.d.sync += cycles.eq(cycles + 1)
                    m.next = "HEADRUN"
                with m.State("HEADRUN"):
                    m.d.sync += cycles.eq(cycles + 1)
                    with m.If(~self.head_busy):
                        finish()
        return m
