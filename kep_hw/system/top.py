# SPDX-License-Identifier: Apache-2.0
"""The system on the FPGA: UART link, frame handler, layer sequencer, buffers and the engine.

:class:`KepSystem` is the clock-agnostic core (``sync`` domain, ports ``rx``/``tx``); it is the
top level of the cocotb system simulation. :class:`BoardTop` puts it on a board: PLL from the
oscillator to the core clock behind ``match platform`` (no PLL and a plain clock when
``platform is None``), reset held until the PLL locks, UART pins from the board profile.

Dataflow (``docs/boards.md``): the host sends the int8 image in an ``IMAGE`` frame, written into
the input activation buffer; the sequencer runs every conv layer from a layer table built from
the ``.kep`` at build time (config registers, source/residual/destination buffers, weight and
parameter base addresses), the engine's outputs are written back into the destination buffer;
at the end a ``RESULT`` frame carries the hardware cycle counter and the last conv output.
In streamed mode the sequencer asks for each layer's weights (``NEED``) and waits for ``GO``.

The compute engine follows the interface of ``docs/accelerator.md``. :class:`FallbackEngine` is
a small implementation of that interface (one window of ``k*k`` activations loaded per input
channel, then K MAC cycles for all P PEs, then a pipelined requantization of the P
accumulators), used when ``engine="fallback"``; ``engine="kep"`` (the default) uses
:class:`kep_hw.engine.Engine`.
"""

from __future__ import annotations


from amaranth import Array, Cat, ClockDomain, ClockSignal, Const, Instance, Module, Mux, Signal
from amaranth import signed, unsigned
from amaranth.lib import io, stream, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In, Out

from kep_hw.system.plan import PARAM_WORD_BITS, WEIGHT_ELEM_BITS, NetworkPlan
from kep_hw.gateware.layouts import ParamWord, act_word, layer_config, out_word, weight_word
from kep_hw.system.protocol import MAX_PAYLOAD, PROTOCOL_VERSION, SYNC, Crc16, ErrorCode, FrameType
from kep_hw.gateware.uart import UARTRx, UARTTx

__all__ = ["FallbackEngine", "KepSystem", "BoardTop", "ecp5_pll_params", "info_payload",
           "SIM_DIVISOR", "SIM_BYTE_TIMEOUT"]

#: UART divisor (cycles per bit) of the simulation build: fast, sim-only.
SIM_DIVISOR = 8
#: Inter-byte timeout of the frame receiver in the simulation build (cycles).
SIM_BYTE_TIMEOUT = 20000


def _bits(n: int) -> int:
    return max(1, (max(n, 1)).bit_length())


class FallbackEngine(wiring.Component):
    """A small engine with the interface of ``docs/accelerator.md``.

    Per output pixel and channel group: for each input channel, the ``k*k`` window is read
    (one word per cycle through a 3-stage address/read pipeline, ``k*k + 3`` cycles) then the
    P PEs multiply-accumulate K kept elements (``K + 1`` cycles); then the P accumulators are
    requantized in a 4-stage pipeline (``P + 5`` cycles) and sent as one output transfer.

    Parameters
    ----------
    pes, lanes : int
        P and G (``pes % lanes == 0``, ``lanes`` a power of two).
    chan_bits, dim_bits, group_bits, act_bits, wt_bits, prm_bits : int
        Field widths of the configuration registers and address widths.
    """

    def __init__(self, *, pes, lanes, chan_bits, dim_bits, group_bits, act_bits, wt_bits,
                 prm_bits):
        if pes % lanes or lanes & (lanes - 1):
            raise ValueError(f"pes {pes!r} must be a multiple of lanes {lanes!r}, "
                             "a power of two")
        self.pes, self.lanes = pes, lanes
        self.cfg_layout = layer_config(chan_bits=chan_bits, dim_bits=dim_bits,
                                       group_bits=group_bits, act_bits=act_bits,
                                       wt_bits=wt_bits, prm_bits=prm_bits)
        super().__init__({
            "cfg": In(self.cfg_layout),
            "start": In(1),
            "busy": Out(1),
            "act": In(ReadPort.Signature(addr_width=act_bits, shape=act_word(lanes))),
            "res": In(ReadPort.Signature(addr_width=act_bits, shape=act_word(lanes))),
            "wt": In(ReadPort.Signature(addr_width=wt_bits, shape=weight_word(pes))),
            "prm": In(ReadPort.Signature(addr_width=prm_bits, shape=ParamWord)),
            "o": Out(stream.Signature(out_word(pes))),
        })

    def elaborate(self, platform):
        m = Module()
        P, G = self.pes, self.lanes
        lg = G.bit_length() - 1
        cfg = self.cfg
        m.d.comb += [self.act.en.eq(1), self.res.en.eq(1), self.wt.en.eq(1), self.prm.en.eq(1)]

        g = Signal.like(cfg.groups)
        y = Signal.like(cfg.ho)
        x = Signal.like(cfg.wo)
        i = Signal.like(cfg.cin)
        r = Signal(2)
        c = Signal(2)
        t = Signal(4)
        j = Signal(4)
        win = Array(Signal(signed(8), name=f"win{n}") for n in range(9))
        acc = Array(Signal(signed(32), name=f"acc{p}") for p in range(P))
        outb = Array(Signal(signed(8), name=f"out{p}") for p in range(P))
        wt_addr = Signal.like(self.wt.addr)
        grp_wbase = Signal.like(self.wt.addr)
        grp_wstep = Signal.like(self.wt.addr)

        # window fetch: address of (i, y*s - pad + r, x*s - pad + c), two register stages
        # (row*W + col, then *cwi + word) before the memory, data one cycle later
        iy = Signal(signed(len(cfg.h) + 3))
        ix = Signal(signed(len(cfg.w) + 3))
        m.d.comb += [
            iy.eq(Mux(cfg.stride == 2, y << 1, y) - cfg.pad + r),
            ix.eq(Mux(cfg.stride == 2, x << 1, x) - cfg.pad + c),
        ]
        inb = Signal()
        m.d.comb += inb.eq((iy >= 0) & (iy < cfg.h) & (ix >= 0) & (ix < cfg.w))
        f0_valid, f1_valid, cap_valid = Signal(), Signal(), Signal()
        f0_t, f1_t, cap_t = Signal(4), Signal(4), Signal(4)
        f0_inb, f1_inb, cap_inb = Signal(), Signal(), Signal()
        f0_pix = Signal(len(self.act.addr) + 1)
        act_addr = Signal.like(self.act.addr)
        lane = Signal(range(G))
        m.d.comb += [lane.eq(i[:lg] if lg else 0), self.act.addr.eq(act_addr)]
        m.d.sync += [
            f0_valid.eq(0),
            f0_pix.eq(iy * cfg.w + ix),
            f1_valid.eq(f0_valid), f1_t.eq(f0_t), f1_inb.eq(f0_inb),
            act_addr.eq(cfg.act_base + f0_pix * cfg.cwi + (i >> lg)),
            cap_valid.eq(f1_valid), cap_t.eq(f1_t), cap_inb.eq(f1_inb),
        ]
        with m.If(cap_valid):
            m.d.sync += win[cap_t].eq(Mux(cap_inb, self.act.data[lane], 0))
        fetching = Signal()
        m.d.comb += fetching.eq(f0_valid | f1_valid | cap_valid)

        # MAC: weights arrive one cycle after their address
        m.d.comb += self.wt.addr.eq(wt_addr)
        mac_valid = Signal()
        mac_j = Signal(4)
        m.d.sync += mac_valid.eq(0)
        with m.If(mac_valid):
            for p in range(P):
                elem = self.wt.data[p]
                sel = Mux(cfg.dense, mac_j, elem.index)
                m.d.sync += acc[p].eq(acc[p] + elem.value * win[sel])

        # requantization pipeline: issue p, 4 stages
        rq_p = Signal(range(P + 1))
        res_pix = Signal.like(self.res.addr)      # res_base + (y*Wo + x)*cwo, set per pixel
        m.d.sync += res_pix.eq(cfg.res_base + (y * cfg.wo + x) * cfg.cwo)
        m.d.comb += [
            self.prm.addr.eq(cfg.prm_base + g * P + rq_p),
            self.res.addr.eq(res_pix + ((g * P + rq_p) >> lg)),
        ]
        v1 = Signal()
        p1 = Signal(range(P))
        v2, v3, v4 = Signal(), Signal(), Signal()
        p2, p3, p4 = Signal(range(P)), Signal(range(P)), Signal(range(P))
        a2 = Signal(signed(32))
        mult2 = Signal(unsigned(16))
        rm2 = Signal(unsigned(24))
        res2 = Signal(signed(8))
        sh2, sh3, sh4 = Signal(6), Signal(6), Signal(6)
        prod3 = Signal(signed(49))
        rprod3 = Signal(signed(33))
        sum4 = Signal(signed(51))
        m.d.sync += [v2.eq(v1), p2.eq(p1), v3.eq(v2), p3.eq(p2), v4.eq(v3), p4.eq(p3)]
        rq_lane = Signal(range(G))
        m.d.comb += rq_lane.eq(p1[:lg] if lg else 0)
        prm = self.prm.data
        with m.If(v1):
            m.d.sync += [a2.eq(acc[p1] + prm.bias), mult2.eq(prm.mult), rm2.eq(prm.res_mult),
                         sh2.eq(prm.shift),
                         res2.eq(Mux(cfg.residual, self.res.data[rq_lane], 0))]
        rnd3 = Signal(unsigned(47))
        m.d.sync += [prod3.eq(a2 * mult2), rprod3.eq(res2 * rm2), sh3.eq(sh2),
                     rnd3.eq(Const(1, unsigned(47)) << (sh2 - 1)[:6])]
        m.d.sync += [sum4.eq(prod3 + rprod3 + rnd3), sh4.eq(sh3)]
        z = Signal(signed(51))
        m.d.comb += z.eq(sum4 >> sh4)
        zr = Signal(signed(51))
        m.d.comb += zr.eq(Mux(cfg.relu & (z < 0), 0, z))
        with m.If(v4):
            m.d.sync += outb[p4].eq(Mux(zr > 127, 127, Mux(zr < -128, -128, zr[:8])))
        m.d.sync += v1.eq(0)

        last_pix = Signal()
        m.d.comb += last_pix.eq((x == cfg.wo - 1) & (y == cfg.ho - 1))
        m.d.comb += self.o.payload.last.eq(last_pix & (g == cfg.groups - 1))
        for p in range(P):
            m.d.comb += self.o.payload.data[p].eq(outb[p])

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [g.eq(0), y.eq(0), x.eq(0), self.busy.eq(1),
                                 grp_wbase.eq(cfg.wt_base), grp_wstep.eq(cfg.cin * cfg.kk)]
                    m.next = "PIXEL"
            with m.State("PIXEL"):
                m.d.sync += [i.eq(0), r.eq(0), c.eq(0), t.eq(0), wt_addr.eq(grp_wbase)]
                for p in range(P):
                    m.d.sync += acc[p].eq(0)
                m.next = "WIN"
            with m.State("WIN"):
                m.d.sync += [f0_valid.eq(1), f0_t.eq(t), f0_inb.eq(inb), t.eq(t + 1)]
                with m.If(c == cfg.k - 1):
                    m.d.sync += c.eq(0)
                    with m.If(r == cfg.k - 1):
                        m.d.sync += [r.eq(0), j.eq(0)]
                        m.next = "WIN_LAST"
                    with m.Else():
                        m.d.sync += r.eq(r + 1)
                with m.Else():
                    m.d.sync += c.eq(c + 1)
            with m.State("WIN_LAST"):       # wait until the last window word is in win[]
                with m.If(~fetching):
                    with m.If(cfg.kk == 0):
                        m.next = "NEXT_I"
                    with m.Else():
                        m.next = "MAC"
            with m.State("MAC"):
                m.d.sync += [mac_valid.eq(1), mac_j.eq(j), j.eq(j + 1), wt_addr.eq(wt_addr + 1)]
                with m.If(j == cfg.kk - 1):
                    m.next = "NEXT_I"
            with m.State("NEXT_I"):         # last MAC lands
                with m.If(~mac_valid):
                    with m.If(i == cfg.cin - 1):
                        m.d.sync += rq_p.eq(0)
                        m.next = "REQ"
                    with m.Else():
                        m.d.sync += [i.eq(i + 1), t.eq(0)]
                        m.next = "WIN"
            with m.State("REQ"):
                with m.If(rq_p < P):
                    m.d.sync += [v1.eq(1), p1.eq(rq_p), rq_p.eq(rq_p + 1)]
                with m.Elif(~(v1 | v2 | v3 | v4)):
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += self.o.valid.eq(1)
                with m.If(self.o.ready):
                    m.d.sync += x.eq(x + 1)
                    m.next = "PIXEL"
                    with m.If(x == cfg.wo - 1):
                        m.d.sync += [x.eq(0), y.eq(y + 1)]
                        with m.If(y == cfg.ho - 1):
                            m.d.sync += [y.eq(0), g.eq(g + 1),
                                         grp_wbase.eq(grp_wbase + grp_wstep)]
                            with m.If(g == cfg.groups - 1):
                                m.d.sync += self.busy.eq(0)
                                m.next = "IDLE"
        return m


def info_payload(plan: NetworkPlan, *, streamed: bool, clk_hz: float, px: int = 1) -> bytes:
    """The ``INFO`` frame payload a system built for ``plan`` answers to ``PING`` (``plan.po``
    is Po, the output channels per group; ``px`` the engine's output pixels per block)."""
    return (bytes([PROTOCOL_VERSION, plan.po, plan.lanes, int(streamed), len(plan.layers), px])
            + int(round(clk_hz / 1000)).to_bytes(4, "little")
            + plan.model_id(streamed).to_bytes(4, "little")
            + plan.in_words.to_bytes(2, "little") + plan.out_words.to_bytes(2, "little"))


class KepSystem(wiring.Component):
    """The whole system in the ``sync`` domain: UART, frames, sequencer, buffers, engine.

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
    engine : str
        ``"kep"`` (:class:`kep_hw.engine.Engine`, the zero-skipping engine, default) or
        ``"fallback"`` (:class:`FallbackEngine`).
    px : int
        Output pixels per block of :class:`kep_hw.engine.Engine` (``engine="kep"`` only): the
        engine has ``plan.po * px`` PEs, ``plan.po`` (Po) output channels per group. Memory
        images, configuration and output stream are those of ``px = 1``.

    Attributes
    ----------
    rx : In(1)
    tx : Out(1)
    """

    def __init__(self, plan: NetworkPlan, *, streamed: bool, divisor: int, clk_hz: float,
                 byte_timeout: int, engine: str = "kep", px: int = 1):
        if engine not in ("fallback", "kep"):
            raise ValueError(f"engine must be 'fallback' or 'kep', got {engine!r}")
        if not isinstance(px, int) or px < 1 or (px != 1 and engine != "kep"):
            raise ValueError(f"px must be a positive integer (1 with the fallback engine), "
                             f"got {px!r}")
        self.px = px
        self.plan, self.streamed, self.divisor = plan, streamed, divisor
        self.clk_hz, self.byte_timeout, self.engine_kind = clk_hz, byte_timeout, engine
        if plan.in_words * plan.lanes > MAX_PAYLOAD or plan.out_words * plan.lanes + 4 \
                > MAX_PAYLOAD:
            raise ValueError("input or output tensor exceeds one frame")
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        plan = self.plan
        P, G = plan.po, plan.lanes
        lg = G.bit_length() - 1
        nb = len(plan.buffer_words)
        nl = len(plan.layers)
        cfgs = plan.with_bases(self.streamed)
        if self.streamed:
            wt_depth, prm_depth = plan.max_layer_weight_words, plan.max_layer_param_words
        else:
            wt_depth, prm_depth = plan.weight_words, plan.param_words
        act_bits = _bits(max(plan.buffer_words))
        wt_bits, prm_bits = _bits(wt_depth), _bits(prm_depth)
        maxc = max(max(c["cin"], c["cout"]) for c in cfgs)
        maxd = max(max(c["h"], c["w"]) for c in cfgs)
        widths = dict(chan_bits=_bits(maxc), dim_bits=_bits(maxd),
                      group_bits=_bits(max(c["groups"] for c in cfgs)), act_bits=act_bits,
                      wt_bits=wt_bits, prm_bits=prm_bits)
        if self.engine_kind == "kep":
            from kep_hw.gateware.engine import Engine  # noqa: PLC0415 (optional, the main engine)
            from kep_hw.gateware.params import EngineParams  # noqa: PLC0415
            eng = Engine(EngineParams(pes=P * self.px, px=self.px, lanes=G, max_cin=maxc,
                                      max_cout=maxc, max_hw=maxd, act_depth=2**act_bits,
                                      wt_depth=2**wt_bits, prm_depth=2**prm_bits))
        else:
            eng = FallbackEngine(pes=P, lanes=G, **widths)
        m.submodules.engine = eng

        # UART
        m.submodules.urx = urx = UARTRx(self.divisor)
        m.submodules.utx = utx = UARTTx(self.divisor)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx), urx.o.ready.eq(1)]

        # memories
        bufs = []
        for b, depth in enumerate(plan.buffer_words):
            mem = Memory(shape=unsigned(8 * G), depth=depth, init=[])
            m.submodules[f"act{b}"] = mem
            bufs.append((mem.read_port(), mem.write_port()))
        wt_init = [] if self.streamed else [w for lp in plan.layers for w in lp.wt_words]
        prm_init = [] if self.streamed else [w for lp in plan.layers for w in lp.prm_words]
        m.submodules.wt_mem = wt_mem = Memory(shape=unsigned(WEIGHT_ELEM_BITS * P),
                                              depth=wt_depth, init=wt_init)
        m.submodules.prm_mem = prm_mem = Memory(shape=unsigned(PARAM_WORD_BITS),
                                                depth=prm_depth, init=prm_init)
        wt_rd, prm_rd = wt_mem.read_port(), prm_mem.read_port()
        m.d.comb += [wt_rd.addr.eq(eng.wt.addr), eng.wt.data.eq(wt_rd.data),
                     prm_rd.addr.eq(eng.prm.addr), eng.prm.data.eq(prm_rd.data)]
        if self.streamed:
            wt_wr, prm_wr = wt_mem.write_port(), prm_mem.write_port()

        # layer table
        layer = Signal(range(max(nl, 2)))
        cfg = Signal(eng.cfg_layout)
        src = Signal(range(max(nb, 2)))
        res = Signal(range(max(nb, 2)))
        dst = Signal(range(max(nb, 2)))
        m.d.comb += eng.cfg.eq(cfg)
        load_cfg = Signal()
        with m.If(load_cfg):
            with m.Switch(layer):
                for n, (lp, c) in enumerate(zip(plan.layers, cfgs)):
                    with m.Case(n):
                        m.d.sync += [cfg.eq(eng.cfg_layout.const(c)),
                                     src.eq(lp.src), dst.eq(lp.dst),
                                     res.eq(lp.res if lp.res is not None else lp.src)]

        # sequencer
        running = Signal()
        cycles = Signal(32)
        start_run = Signal()         # from the frame receiver: image complete and valid
        go = Signal()                # from the frame receiver: GO in streamed mode
        waiting_go = Signal()
        req_need = Signal()
        req_result = Signal()
        with m.FSM(name="seq"):
            with m.State("IDLE"):
                with m.If(start_run):
                    m.d.sync += [layer.eq(0), cycles.eq(0), running.eq(1)]
                    m.next = "CFG"
            with m.State("CFG"):
                m.d.comb += load_cfg.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                if self.streamed:
                    m.d.comb += req_need.eq(1)
                    m.next = "WAITGO"
                else:
                    m.next = "START"
            with m.State("WAITGO"):
                m.d.comb += waiting_go.eq(1)
                with m.If(go):
                    m.next = "START"
            with m.State("START"):
                m.d.comb += eng.start.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                m.next = "RUN"
            with m.State("RUN"):
                m.d.sync += cycles.eq(cycles + 1)
                with m.If(~eng.busy):
                    with m.If(layer == nl - 1):
                        m.d.sync += running.eq(0)
                        m.d.comb += req_result.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += layer.eq(layer + 1)
                        m.next = "CFG"

        # output writer: engine transfers -> destination buffer
        wdata = Signal(8 * P)
        wk = Signal(range(P // G + 1))
        wpix = Signal(act_bits + 1)
        wgoff = Signal(act_bits + 1)
        wx = Signal.like(cfg.wo)
        wy = Signal.like(cfg.ho)
        wch = Signal(len(cfg.cout) + 2)
        w_en = Signal()
        w_addr = Signal(act_bits + 1)
        m.d.comb += w_addr.eq(wpix + wgoff + wk)
        with m.FSM(name="writer"):
            with m.State("IDLE"):
                with m.If(eng.start):
                    m.d.sync += [wpix.eq(0), wgoff.eq(0), wx.eq(0), wy.eq(0), wch.eq(0)]
                with m.Elif(eng.o.valid):
                    m.d.sync += [wdata.eq(eng.o.payload.data.as_value()), wk.eq(0)]
                    m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += w_en.eq(wch + wk * G < cfg.cout)
                m.d.sync += [wk.eq(wk + 1), wdata.eq(wdata >> (8 * G))]
                with m.If(wk == P // G - 1):
                    m.next = "ACK"
            with m.State("ACK"):
                m.d.comb += eng.o.ready.eq(1)
                m.d.sync += [wpix.eq(wpix + cfg.cwo), wx.eq(wx + 1)]
                with m.If(wx == cfg.wo - 1):
                    m.d.sync += [wx.eq(0), wy.eq(wy + 1)]
                    with m.If(wy == cfg.ho - 1):
                        m.d.sync += [wy.eq(0), wpix.eq(0), wgoff.eq(wgoff + P // G),
                                     wch.eq(wch + P)]
                m.next = "IDLE"

        # frame receiver
        rx_byte = urx.o.payload
        rx_valid = urx.o.valid
        m.submodules.rx_crc = rx_crc = Crc16()
        m.d.comb += [rx_crc.data.eq(rx_byte)]
        ftype = Signal(8)
        flen = Signal(16)
        fcnt = Signal(16)
        crc_lo = Signal(8)
        idle_cnt = Signal(range(self.byte_timeout + 1))
        req_err = Signal()
        err_code = Signal(8)
        err_type = Signal(8)
        bad = Signal(8)                  # error code decided while receiving (0 = none)
        # image loader
        img_word = Signal(8 * G)
        img_lane = Signal(range(G))
        img_addr = Signal(act_bits + 1)
        img_en = Signal()
        # weight / param writes (streamed mode)
        wt_bytes = (WEIGHT_ELEM_BITS * P + 7) // 8
        prm_bytes = (PARAM_WORD_BITS + 7) // 8
        wr_sel = Signal(8)
        wr_addr = Signal(16)
        wr_word = Signal(8 * max(wt_bytes, prm_bytes))
        wr_bc = Signal(range(max(wt_bytes, prm_bytes) + 1))
        wr_wt_en = Signal()
        wr_prm_en = Signal()
        info_pending = Signal()

        def error(code):
            return [req_err_set.eq(1), err_code_n.eq(code)]

        req_err_set = Signal()
        err_code_n = Signal(8)
        with m.If(req_err_set):
            m.d.sync += [req_err.eq(1), err_code.eq(err_code_n), err_type.eq(ftype)]

        in_bytes = plan.in_words * G

        def tmo():
            # inter-byte timeout inside a frame: drop it and report
            with m.If(~rx_valid & (idle_cnt == self.byte_timeout)):
                m.d.comb += error(ErrorCode.TIMEOUT)
                m.next = "SYNC"
        with m.FSM(name="rx") as rx_fsm:
            with m.State("SYNC"):
                with m.If(rx_valid & (rx_byte == SYNC)):
                    m.d.comb += rx_crc.clear.eq(1)
                    m.d.sync += bad.eq(0)
                    m.next = "TYPE"
            with m.State("TYPE"):
                tmo()
                with m.If(rx_valid):
                    m.d.comb += rx_crc.valid.eq(1)
                    m.d.sync += ftype.eq(rx_byte)
                    m.next = "LEN0"
            with m.State("LEN0"):
                tmo()
                with m.If(rx_valid):
                    m.d.comb += rx_crc.valid.eq(1)
                    m.d.sync += flen[:8].eq(rx_byte)
                    m.next = "LEN1"
            with m.State("LEN1"):
                tmo()
                with m.If(rx_valid):
                    m.d.comb += rx_crc.valid.eq(1)
                    length = Cat(flen[:8], rx_byte)
                    m.d.sync += [flen[8:].eq(rx_byte), fcnt.eq(0), img_lane.eq(0),
                                 img_addr.eq(0), wr_bc.eq(0)]
                    with m.If(length > MAX_PAYLOAD):
                        m.d.comb += error(ErrorCode.LENGTH)
                        m.next = "SYNC"
                    with m.Else():
                        with m.Switch(ftype):
                            with m.Case(FrameType.IMAGE):
                                with m.If(length != in_bytes):
                                    m.d.sync += bad.eq(ErrorCode.LENGTH)
                                with m.Elif(running):
                                    m.d.sync += bad.eq(ErrorCode.STATE)
                            with m.Case(FrameType.WRITE):
                                with m.If(length < 3):
                                    m.d.sync += bad.eq(ErrorCode.LENGTH)
                                with m.Elif(not self.streamed or (running & ~waiting_go)):
                                    m.d.sync += bad.eq(ErrorCode.STATE)
                            with m.Case(FrameType.PING, FrameType.GO):
                                with m.If(length != 0):
                                    m.d.sync += bad.eq(ErrorCode.LENGTH)
                            with m.Default():
                                m.d.sync += bad.eq(ErrorCode.TYPE)
                        with m.If(length == 0):
                            m.next = "CRC0"
                        with m.Else():
                            m.next = "PAY"
            with m.State("PAY"):
                tmo()
                with m.If(rx_valid):
                    m.d.comb += rx_crc.valid.eq(1)
                    m.d.sync += fcnt.eq(fcnt + 1)
                    with m.If(fcnt == flen - 1):
                        m.next = "CRC0"
                    with m.If(bad == 0):
                        with m.Switch(ftype):
                            with m.Case(FrameType.IMAGE):
                                m.d.sync += [img_word.word_select(img_lane, 8).eq(rx_byte),
                                             img_lane.eq(img_lane + 1)]
                                with m.If(img_lane == G - 1):
                                    m.d.comb += img_en.eq(1)
                            with m.Case(FrameType.WRITE):
                                with m.If(fcnt == 0):
                                    m.d.sync += wr_sel.eq(rx_byte)
                                with m.Elif(fcnt == 1):
                                    m.d.sync += wr_addr[:8].eq(rx_byte)
                                with m.Elif(fcnt == 2):
                                    m.d.sync += wr_addr[8:].eq(rx_byte)
                                with m.Else():
                                    m.d.sync += [wr_word.word_select(wr_bc, 8).eq(rx_byte),
                                                 wr_bc.eq(wr_bc + 1)]
                                    with m.If((wr_sel == 0) & (wr_bc == wt_bytes - 1)):
                                        m.d.comb += wr_wt_en.eq(1)
                                    with m.If((wr_sel == 1) & (wr_bc == prm_bytes - 1)):
                                        m.d.comb += wr_prm_en.eq(1)
            with m.State("CRC0"):
                tmo()
                with m.If(rx_valid):
                    m.d.sync += crc_lo.eq(rx_byte)
                    m.next = "CRC1"
            with m.State("CRC1"):
                tmo()
                with m.If(rx_valid):
                    m.next = "SYNC"
                    with m.If(Cat(crc_lo, rx_byte) != rx_crc.crc):
                        m.d.comb += error(ErrorCode.CRC)
                    with m.Elif(bad != 0):
                        m.d.comb += error(bad)
                    with m.Else():
                        with m.Switch(ftype):
                            with m.Case(FrameType.IMAGE):
                                m.d.comb += start_run.eq(1)
                            with m.Case(FrameType.GO):
                                with m.If(waiting_go):
                                    m.d.comb += go.eq(1)
                                with m.Else():
                                    m.d.comb += error(ErrorCode.STATE)
                            with m.Case(FrameType.PING):
                                m.d.sync += info_pending.eq(1)   # answered with INFO
        with m.If(rx_valid | rx_fsm.ongoing("SYNC")):
            m.d.sync += idle_cnt.eq(0)
        with m.Elif(idle_cnt != self.byte_timeout):
            m.d.sync += idle_cnt.eq(idle_cnt + 1)

        # image loader write: G bytes -> one word
        with m.If(img_en):
            m.d.sync += img_addr.eq(img_addr + 1)
        img_data = Signal(8 * G)
        m.d.comb += img_data.eq(Cat(img_word[:8 * (G - 1)], rx_byte))
        if self.streamed:
            m.d.comb += [
                wt_wr.addr.eq(wr_addr), wt_wr.data.eq(Cat(wr_word[:8 * (wt_bytes - 1)], rx_byte)),
                wt_wr.en.eq(wr_wt_en),
                prm_wr.addr.eq(wr_addr),
                prm_wr.data.eq(Cat(wr_word[:8 * (prm_bytes - 1)], rx_byte)),
                prm_wr.en.eq(wr_prm_en),
            ]
            with m.If(wr_wt_en | wr_prm_en):
                m.d.sync += [wr_addr.eq(wr_addr + 1), wr_bc.eq(0)]

        # buffer ports
        tx_rd_addr = Signal(act_bits + 1)
        for b, (rd, wr) in enumerate(bufs):
            with m.If(running & (src == b)):
                m.d.comb += rd.addr.eq(eng.act.addr)
            with m.Elif(running & (res == b)):
                m.d.comb += rd.addr.eq(eng.res.addr)
            with m.Else():
                m.d.comb += rd.addr.eq(tx_rd_addr)
            with m.If(running):
                m.d.comb += [wr.addr.eq(w_addr), wr.data.eq(wdata[:8 * G]),
                             wr.en.eq(w_en & (dst == b))]
            if b == plan.input_buffer:
                with m.Else():
                    m.d.comb += [wr.addr.eq(img_addr), wr.data.eq(img_data), wr.en.eq(img_en)]
        act_data = Array(rd.data for rd, _ in bufs)
        m.d.comb += [eng.act.data.eq(act_data[src]), eng.res.data.eq(act_data[res])]
        out_data = bufs[plan.output_buffer][0].data

        # frame transmitter
        m.submodules.tx_crc = tx_crc = Crc16()
        info = info_payload(plan, streamed=self.streamed, clk_hz=self.clk_hz, px=self.px)
        t_type = Signal(8)
        t_len = Signal(16)
        t_n = Signal(16)
        t_h = Signal(2)
        t_byte = Signal(8)
        t_cycles = Signal(32)
        t_need = Signal(8)
        t_err = Signal(16)
        pend_need = Signal()
        pend_result = Signal()
        with m.If(req_need):
            m.d.sync += [pend_need.eq(1), t_need.eq(layer)]
        with m.If(req_result):
            m.d.sync += pend_result.eq(1)
        info_arr = Array(Const(b, 8) for b in info)
        hdr = Array([Const(SYNC, 8), t_type, t_len[:8], t_len[8:]])
        m.d.comb += tx_crc.data.eq(utx.i.payload)
        out_bytes = plan.out_words * G
        with m.FSM(name="tx"):
            with m.State("IDLE"):
                m.d.comb += tx_crc.clear.eq(1)
                m.d.sync += [t_n.eq(0), t_h.eq(0)]
                with m.If(req_err):
                    m.d.sync += [req_err.eq(0), t_type.eq(FrameType.ERROR), t_len.eq(2),
                                 t_err.eq(Cat(err_code, err_type))]
                    m.next = "HDR"
                with m.Elif(pend_result):
                    m.d.sync += [pend_result.eq(0), t_type.eq(FrameType.RESULT),
                                 t_len.eq(4 + out_bytes), t_cycles.eq(cycles)]
                    m.next = "HDR"
                with m.Elif(pend_need):
                    m.d.sync += [pend_need.eq(0), t_type.eq(FrameType.NEED), t_len.eq(1)]
                    m.next = "HDR"
                with m.Elif(info_pending):
                    m.d.sync += [info_pending.eq(0), t_type.eq(FrameType.INFO),
                                 t_len.eq(len(info))]
                    m.next = "HDR"
            with m.State("HDR"):
                m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(hdr[t_h])]
                with m.If(utx.i.ready):
                    m.d.comb += tx_crc.valid.eq(t_h != 0)
                    m.d.sync += t_h.eq(t_h + 1)
                    with m.If(t_h == 3):
                        m.next = "PAYF"
            with m.State("PAYF"):
                m.d.comb += tx_rd_addr.eq((t_n - 4) >> lg)
                with m.If(t_n == t_len):
                    m.next = "CRC0"
                with m.Else():
                    m.next = "PAYW"
            with m.State("PAYW"):
                m.d.comb += tx_rd_addr.eq((t_n - 4) >> lg)
                with m.Switch(t_type):
                    with m.Case(FrameType.ERROR):
                        m.d.sync += t_byte.eq(t_err.word_select(t_n[:1], 8))
                    with m.Case(FrameType.NEED):
                        m.d.sync += t_byte.eq(t_need)
                    with m.Case(FrameType.INFO):
                        m.d.sync += t_byte.eq(info_arr[t_n])
                    with m.Case(FrameType.RESULT):
                        with m.If(t_n < 4):
                            m.d.sync += t_byte.eq(t_cycles.word_select(t_n[:2], 8))
                        with m.Else():
                            sub = Signal(range(G))
                            m.d.comb += sub.eq((t_n - 4)[:lg] if lg else 0)
                            m.d.sync += t_byte.eq(out_data.word_select(sub, 8))
                m.next = "PAYS"
            with m.State("PAYS"):
                m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(t_byte)]
                with m.If(utx.i.ready):
                    m.d.comb += tx_crc.valid.eq(1)
                    m.d.sync += t_n.eq(t_n + 1)
                    m.next = "PAYF"
            with m.State("CRC0"):
                m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(tx_crc.crc[:8])]
                with m.If(utx.i.ready):
                    m.next = "CRC1"
            with m.State("CRC1"):
                m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(tx_crc.crc[8:])]
                with m.If(utx.i.ready):
                    m.next = "IDLE"
        return m


def ecp5_pll_params(fin_mhz: float, fout_mhz: float) -> dict:
    """Divider settings of an ECP5 ``EHXPLLL`` for ``fin -> fout`` (VCO 400-800 MHz, PFD >=
    3.125 MHz), the closest output frequency found; keys ``refdiv``, ``fbdiv``, ``opdiv``,
    ``fout``, ``fvco``.

    Raises
    ------
    ValueError
        If no setting reaches within 1 % of ``fout_mhz``.
    """
    best = None
    for refdiv in range(1, 129):
        if fin_mhz / refdiv < 3.125:
            break
        for fbdiv in range(1, 81):
            fout = fin_mhz * fbdiv / refdiv
            for opdiv in range(1, 129):
                fvco = fout * opdiv
                if 400 <= fvco <= 800:
                    err = abs(fout - fout_mhz)
                    if best is None or err < best["err"]:
                        best = dict(refdiv=refdiv, fbdiv=fbdiv, opdiv=opdiv, fout=fout,
                                    fvco=fvco, err=err)
                    break
    if best is None or best["err"] > 0.01 * fout_mhz:
        raise ValueError(f"no ECP5 PLL setting for {fout_mhz!r} MHz from {fin_mhz!r} MHz")
    return best


class BoardTop(wiring.Component):
    """The system on a board: PLL, reset until lock, UART pins.

    Parameters
    ----------
    system : KepSystem
    board : kep_hw.boards.BoardProfile
    freq_mhz : float
        Core clock; the PLL's achieved value is ``self.pll["fout"]``.
    """

    def __init__(self, system: KepSystem, board, freq_mhz: float):
        self.system, self.board, self.freq_mhz = system, board, freq_mhz
        self.pll = ecp5_pll_params(board.clk_mhz, freq_mhz)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain("sync")
        match platform:
            case None:
                pass      # simulation: the sync domain is driven by the testbench
            case _:
                m.submodules.clk_buf = clkin = io.Buffer(
                    "i", platform.request(self.board.clk_resource, 0, dir="-"))
                clkop = Signal()
                lock = Signal()
                p = self.pll
                m.submodules.pll = Instance(
                    "EHXPLLL",
                    a_FREQUENCY_PIN_CLKI=str(self.board.clk_mhz),
                    a_FREQUENCY_PIN_CLKOP=f"{p['fout']:.4f}",
                    a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
                    a_MFG_GMCREF_SEL="2",
                    p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                    p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
                    p_OUTDIVIDER_MUXB="DIVB", p_OUTDIVIDER_MUXC="DIVC",
                    p_OUTDIVIDER_MUXD="DIVD",
                    p_CLKI_DIV=p["refdiv"], p_CLKFB_DIV=p["fbdiv"], p_CLKOP_DIV=p["opdiv"],
                    p_CLKOP_ENABLE="ENABLED", p_CLKOP_CPHASE=p["opdiv"] - 1, p_CLKOP_FPHASE=0,
                    p_FEEDBK_PATH="CLKOP",
                    i_CLKI=clkin.i, i_CLKFB=clkop, i_RST=0, i_STDBY=0, i_PHASESEL0=0,
                    i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
                    i_PLLWAKESYNC=0, i_ENCLKOP=0,
                    o_CLKOP=clkop, o_LOCK=lock)
                m.d.comb += ClockSignal("sync").eq(clkop)
                # nextpnr derives the PLL output's constraint from the oscillator's one
                m.submodules.rst_sync = ResetSynchronizer(~lock, domain="sync")
                uart = platform.request(self.board.uart["resource"], 0, dir="-")
                m.submodules.rx_buf = rx_buf = io.Buffer("i", uart.rx)
                m.submodules.tx_buf = tx_buf = io.Buffer("o", uart.tx)
                m.d.comb += [self.system.rx.eq(rx_buf.i), tx_buf.o.eq(self.system.tx)]
                if "tx_enable" in self.board.uart:
                    m.submodules.txen_buf = en = io.Buffer(
                        "o", platform.request(self.board.uart["tx_enable"], 0, dir="-"))
                    m.d.comb += en.o.eq(1)
        m.submodules.system = self.system
        return m
