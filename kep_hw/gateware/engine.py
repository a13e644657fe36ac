# SPDX-License-Identifier: Apache-2.0
"""The KEP sparse-convolution engine: P = Po x Px PEs, balanced K per plane.

The PEs form Px groups of Po; group ``q`` computes output pixel ``x0 + q`` of a block of Px
horizontally adjacent output pixels of one row, PE ``o`` of every group output channel
``g*Po + o``. All groups share one weight ``(value, index)`` stream, so every PE does the same
K MACs per (pixel, input channel). Blocks: :class:`kep_hw.gateware.fetch.WindowFetcher` supplies block
windows, the sequencer and MAC array here consume one kept element per PE and cycle,
:class:`kep_hw.gateware.requant.Requant` turns the accumulators into int8 outputs (one transfer per
pixel) while the next block is computed. Ports, layouts, addresses and configuration
registers: ``docs/accelerator.md``.

Read ports: every memory port of the engine (``act``, ``res``, ``wt``, ``prm``) delivers its data
:data:`READ_LATENCY` = 2 cycles after the address: the block RAM's synchronous read plus a
register right after it, so no path runs from a block RAM's output (5.8 ns clock-to-data on the
ECP5) through logic into a multiplier or an adder. For ``act``, ``res`` and ``prm`` that register
is outside (:func:`connect_read`). The weight memory (:class:`kep_hw.gateware.wtmem.WeightColumns`:
column memories, each read at its own copy of the address, ``wt_addr``) registers each block
RAM's output before the multiplexer of its block RAMs (:data:`WT_PORT_LATENCY` = 2), and the
engine registers the word once more after that multiplexer, the indices in one copy per pixel
group (each copy selects the operands of Po PEs only).

MAC pipeline (one (channel, element) per cycle, all PEs in lock step):

- S0: weight address ``wptr`` presented; the 3x3 window of every pixel of the block for the
  current channel registered.
- S1: the weight word is read; window and control move on.
- S1W: the weight word in the registers after its block RAMs; window and control move on.
- S1D, S1E (only with ``params.dist_reg``): the weight word (the K = 0 zero applied), window
  and control once more in a register (S1D), then the word in one copy per
  :data:`DIST_GROUPS` pixel groups (S1E); each pixel group's S2 registers load from its S1E
  copy.
- S2: weight word arrives (values in one register, indices in one register per pixel group;
  with S1D/S1E both in one register per pixel group);
  each PE selects its operand with a 9:1 mux by its index (or by the element counter in dense
  mode) from its own copy of the window register (one copy per 4 output channels) and presents
  value and operand to its multiplier
  (:class:`kep_hw.gateware.mul.Multiplier`: a DSP block with its input and output registers,
  or logic for the last ``lut_pes`` PEs; two cycles either way).
- S2R (only with ``params.operand_reg``): each PE's operands in a register of its own, in
  logic beside its multiplier; the stages below, and every latency the cycle model counts
  after the last MAC, move one cycle later.
- S3: the multipliers' input registers.
- S4: the product arrives; accumulate (the product alone on the first element of a block:
  the requantization unit adds the bias, once per output); on the last element the P sums go
  to the shadow register (the requantization unit's input).

Pixel-group chain (``params.chain``, off by default): pixel group ``q`` runs
``params.skew(q) = q`` cycles behind group 0. Its S2 registers (weight values, indices, K = 0
flag, MAC flags) load group ``q - 1``'s, one register per hop, and its window passes through
``q`` registers after S1W, so the weight word travels from group to group instead of leaving
one spot for all groups. Each group has its own S2R / S3 / S4 flags; the shadow register's
block fields come from the last group's S4, ``Px - 1`` cycles after group 0's.

Selects and enables with thousands of loads (the S4 flags of the P accumulators, the
parameter banks' flags, the window fetcher's buffer moves) are registered several times over, one copy
per group of loads (:func:`kep_hw.gateware.fanout.copies`), with no added latency.

The issue decision is a register (``issue``), loaded with the issue condition evaluated a
cycle ahead on the next values of what it depends on (``issue_n``); the window fetcher decides
its buffer moves from ``issue_n`` (its ``ahead`` port), a cycle before they are done. The
cycles are those of a decision in the cycle itself.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from kep_hw.gateware.fanout import copies, spans
from kep_hw.gateware.fetch import WindowFetcher
from kep_hw.gateware.mul import Multiplier
from kep_hw.gateware.layouts import (ParamWord, acc_word, act_word, out_word, weight_word,
                                     window_cols, wt_columns)
from kep_hw.gateware.params import EngineParams, check_params
from kep_hw.gateware.requant import Requant

__all__ = ["READ_LATENCY", "WT_PORT_LATENCY", "connect_read", "Engine"]

#: cycles from a read port's address to its data, for every port of the engine
READ_LATENCY = 2
#: cycles from the ``wt`` port's address to the data on the port: the block RAM's read and a
#: register right after each block RAM, before the multiplexer of the memory's block RAMs
#: (:class:`kep_hw.gateware.wtmem.WeightColumns`); the engine registers the word itself (S2)
WT_PORT_LATENCY = 2
#: output channels served by one copy of a pixel's window register
WINDOW_COPY_CHANNELS = 4
#: pixel groups served by one copy of the distribution register's weight word (S1E,
#: ``params.dist_reg``): the word's route from there to its groups' S2 registers spans a
#: part of the DSP rows, not all of them
DIST_GROUPS = 4


def connect_read(m: Module, mem_port, port) -> None:
    """Connect a memory's read port (latency 1) to an engine port (:data:`READ_LATENCY`):
    address and enable through, data through a register (without reset, like every data
    register of the datapath: only control and valid flags load the reset, which keeps the
    reset net's fanout small)."""
    q = Signal.like(mem_port.data, reset_less=True)
    m.d.comb += [mem_port.addr.eq(port.addr), mem_port.en.eq(port.en), port.data.eq(q)]
    m.d.sync += q.eq(mem_port.data)


class _State(enum.Enum, shape=2):
    IDLE = 0
    LOAD = 1
    RUN = 2
    FINISH = 3


class Engine(wiring.Component):
    """One convolution layer per ``start``, bit-exact to ``kep_train.golden.sparseconv``.

    Parameters
    ----------
    params : EngineParams
        Engine size.
    pe_sites : sequence of str, optional
        The DSP site of PE ``q * Po + o``'s multiplier (PEs with a multiplier in logic have
        none), for nextpnr's placer on an ECP5 (:func:`kep_hw.board.floorplan.pe_sites`);
        changes no behaviour. Default: nextpnr chooses.

    Attributes
    ----------
    cfg : In(LayerConfig)
        Layer configuration registers (``params.config_layout``), stable while busy.
    start : In(1)
        Pulse to start a layer.
    busy : Out(1)
        High until the layer's last output has been transferred.
    act, res, prm : In(ReadPort.Signature)
        Read ports (the engine drives addr/en, data :data:`READ_LATENCY` cycles later).
    wt : In(ReadPort.Signature)
        Weight read port, data :data:`WT_PORT_LATENCY` cycles later (the memories' read
        ports, :class:`kep_hw.gateware.wtmem.WeightColumns`).
    wt_addr : Out(ArrayLayout(unsigned(wt_bits), len(wt_columns(po))))
        ``wt.addr`` once per weight column memory (:func:`kep_hw.gateware.layouts.wt_columns`):
        registers of their own with the same value in the same cycle, so a weight memory split
        into columns reads column ``c`` at ``wt_addr[c]`` with the same latency
        (:class:`kep_hw.gateware.wtmem.WeightColumns`).
    o : Out(stream.Signature(out_word))
        Outputs in group / row / column order.
    """

    def __init__(self, params: EngineParams, *, pe_sites=None):
        self.params = check_params(params)
        self.pe_sites = list(pe_sites) if pe_sites is not None else []
        if len(self.pe_sites) > params.pes - params.lut_pes:
            raise ValueError(f"{len(self.pe_sites)} PE sites for "
                             f"{params.pes - params.lut_pes} DSP multipliers")
        #: layout of ``cfg`` (same as ``params.config_layout``)
        self.cfg_layout = params.config_layout
        p = params
        super().__init__({
            "cfg": In(p.config_layout),
            "start": In(1),
            "busy": Out(1),
            "act": In(ReadPort.Signature(addr_width=p.act_bits, shape=act_word(p.lanes))),
            "res": In(ReadPort.Signature(addr_width=p.act_bits, shape=act_word(p.lanes))),
            "wt": In(ReadPort.Signature(addr_width=p.wt_bits, shape=weight_word(p.po))),
            "wt_addr": Out(data.ArrayLayout(unsigned(p.wt_bits), len(wt_columns(p.po)))),
            "prm": In(ReadPort.Signature(addr_width=p.prm_bits, shape=ParamWord)),
            "o": Out(stream.Signature(out_word(p.po))),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        P, PO, PX, G = p.pes, p.po, p.px, p.lanes
        NC = window_cols(PX)
        cfg = self.cfg

        m.submodules.fetch = fetch = WindowFetcher(p)
        m.submodules.requant = rq = Requant(p)
        m.d.comb += [
            fetch.cfg.eq(cfg),
            rq.relu.eq(cfg.relu),
            rq.residual.eq(cfg.residual),
            rq.res_step.eq(cfg.cwo),
        ]
        wiring.connect(m, wiring.flipped(self.act), fetch.act)
        wiring.connect(m, wiring.flipped(self.res), rq.res)
        wiring.connect(m, rq.o, wiring.flipped(self.o))

        state = Signal(_State)
        # two parameter banks: the MACs of group g use bank ``bank`` while the next group's
        # parameters load into the other one, as soon as the requantization no longer needs
        # it (no group drains its pipeline before the next one starts)
        banks = [Signal(data.ArrayLayout(ParamWord, PO), name=f"prm_bank{b}", reset_less=True)
                 for b in range(2)]
        bank = Signal()
        shadow_bank = Signal()
        shadow_bank_d = Signal()             # shadow_bank's next value

        # group / block bookkeeping; registered products of the (stable) configuration
        g = Signal(p.group_bits)
        px = Signal(p.dim_bits)              # first output column of the block
        py = Signal(p.dim_bits)
        wptr = Signal(p.wt_bits)
        wptr_n = Signal(p.wt_bits)           # wptr's next value (and its copies')
        m.d.comb += wptr_n.eq(wptr)
        gbase = Signal(p.wt_bits)
        res_ptr = Signal(p.act_bits)         # residual word of (py, px), group g
        res_row = Signal(p.act_bits)         # residual word of (py, 0), group g
        res_gbase = Signal(p.act_bits)
        blk_res = Signal(p.act_bits)         # Px * cwo
        row_res = Signal(p.act_bits)         # wo * cwo
        m.d.sync += [blk_res.eq(cfg.cwo * PX), row_res.eq(cfg.wo * cfg.cwo)]
        # block flags as registers, updated with px / py / g from their next values (no
        # subtraction or comparison of the block position lies on the issue path)
        left = Signal(range(p.max_hw + 1))   # wo - px
        row_end = Signal()                   # left <= Px: the row's last block
        nv = Signal(range(PX + 1))           # valid pixels of the block
        last_row = Signal()                  # py == ho - 1
        last_px = Signal()
        last_g = Signal()                    # g == groups - 1
        m.d.comb += last_px.eq(row_end & last_row)
        wo_short = Signal()
        nv_row = Signal(range(PX + 1))       # nv of a row's first block
        m.d.comb += [wo_short.eq(cfg.wo <= PX), nv_row.eq(Mux(wo_short, cfg.wo, PX))]

        def row_start():
            return [px.eq(0), left.eq(cfg.wo), row_end.eq(wo_short), nv.eq(nv_row)]

        # pipeline registers: the flags every stage carries (one StructLayout), and the weight
        # position and window, which only S1 and S2 need
        flags = data.StructLayout({
            "valid": 1, "first": 1, "last": 1, "final": 1,
            "bank": 1,                        # the accumulator bank of the MAC's group
            "res": p.act_bits,                # residual address of the block
            "nv": range(PX + 1),              # valid pixels of the block
        })
        wl = data.ArrayLayout(data.ArrayLayout(signed(8), 9), PX)
        s1, s2, s3, s4 = (Signal(flags, name=f"s{i}") for i in range(1, 5))
        s1_j = Signal(4)
        s1_zero = Signal()
        s1_win = Signal(wl, reset_less=True)
        # S1W: the weight word in the registers right after its block RAMs
        s1w = Signal(flags, name="s1w")
        s1w_j = Signal(4)
        s1w_zero = Signal()
        s1w_win = Signal(wl, reset_less=True)
        s2_zero = Signal()                   # S1 -> S2: waiting for the weight word
        # m2: the flags as the multipliers' input registers see them (S2R, or S2 itself)
        m2 = Signal(flags, name="s2r") if p.operand_reg else s2
        next_ready = Signal()
        acc = Signal(data.ArrayLayout(signed(32), P), reset_less=True)
        shadow_full = Signal()
        shadow = Signal(acc_word(p), reset_less=True)

        # the weight address in one copy per weight column memory (wt_addr): each copy drives
        # the address pins of its own column's block RAMs only
        m.d.sync += wptr.eq(wptr_n)
        wt_addr_cp = copies(m, platform, wptr_n, len(wt_columns(PO)), name="wt_addr")

        # control
        keff_m1 = Signal(4)                  # K - 1 (K = 0 counts as 1)
        # the parameter load's flags (the parameter load, below)
        loading = Signal()
        ld_v = Signal()
        ld_v2 = Signal()
        m.d.sync += keff_m1.eq(Mux(cfg.kk == 0, 0, cfg.kk - 1))
        # the issue decision is made a cycle ahead: ``issue`` is a register loaded with
        # ``issue_n``, the same condition evaluated on the next values of everything it
        # depends on (the fetcher's ``head_next``, the element flags below, ``block_n``,
        # ``next_ready_n``), so the cycles are the same as with a decision in the cycle itself,
        # and the fetcher decides its buffer moves from ``issue_n`` (its ``ahead``), a cycle
        # before they are done: no decision of this cycle reaches the window buffers' selects
        c = Signal(range(G))                 # channel of the head window
        j = Signal(4)                        # element of the channel's kernel plane
        win = fetch.o
        hn = fetch.head_next
        # element flags, registers: the element (c, j) is the plane's last (end_j), next to
        # last (pen_j); the channel is the window's last (end_c), next to last (pen_c); channels
        # after it (remc); a group's last MAC (last_mac: end_c & end_j of a ``last`` window)
        end_j, pen_j, end_c, pen_c, last_mac = (
            Signal(name=n) for n in ("end_j", "pen_j", "end_c", "pen_c", "last_mac"))
        remc = Signal(range(G))
        block = Signal()                     # registered (below)
        block_n = Signal()
        next_ready_n = Signal()
        issue = Signal()
        issue_n = Signal()
        adv_c = Signal()                     # the issue moves on to the next channel
        end_j_n, end_c_n, last_mac_n, run_n = (
            Signal(name=n) for n in ("end_j_n", "end_c_n", "last_mac_n", "run_n"))
        m.d.comb += [
            adv_c.eq(issue & end_j & ~end_c),
            end_j_n.eq(Mux(hn.new | (issue & end_j), keff_m1 == 0, Mux(issue, pen_j, end_j))),
            end_c_n.eq(Mux(hn.new, hn.nch == 1, Mux(adv_c, pen_c, end_c))),
            last_mac_n.eq(Mux(hn.new, hn.last, win.payload.last) & end_c_n & end_j_n),
            run_n.eq(((state == _State.RUN) & ~(issue & last_mac & last_px & last_g))
                     | ((state == _State.LOAD) & ~loading & ~ld_v & ~ld_v2)),
            # a group's last MAC waits for the shadow register and the next group's
            # parameters. last_px / last_g change only after a last MAC, and then block_n
            # holds the next one back anyway
            issue_n.eq(run_n & hn.valid & ~(last_mac_n & block_n)
                       & ~(last_mac_n & last_px & ~last_g & ~next_ready_n)),
            win.ready.eq(issue & end_c & end_j),
            fetch.ahead.ready.eq(issue_n & end_c_n & end_j_n),
            fetch.ahead.next_ch.eq(issue_n & end_j_n & ~end_c_n),
            self.wt.en.eq(1),
            self.wt.addr.eq(wptr),
            self.wt_addr.eq(Cat(*wt_addr_cp)),
            self.prm.en.eq(1),
            self.busy.eq(state != _State.IDLE),
        ]
        m.d.sync += [
            issue.eq(issue_n),
            end_j.eq(end_j_n),
            pen_j.eq(Mux(hn.new | (issue & end_j), keff_m1 == 1,
                         Mux(issue, j + 2 == keff_m1, pen_j))),
            end_c.eq(end_c_n),
            pen_c.eq(Mux(hn.new, hn.nch == 2, Mux(adv_c, remc == 2, pen_c))),
            remc.eq(Mux(hn.new, hn.nch - 1, Mux(adv_c, remc - 1, remc))),
            last_mac.eq(last_mac_n),
        ]

        # the 3x3 window of every pixel of the block, channel c (the fetcher's stream presents
        # the head window's channel c: it moves on with ``next_ch``): pixel q reads the block
        # columns q*stride + 0..2 (3x3) or column q (1x1, row 0), which the fetcher's fill rows
        # leave at slots NC - ncols + column (ncols = 2*Px + 1 at stride 2, Px + 2 at stride 1,
        # Px for 1x1); the stride and kernel flags in one copy per pixel
        # (kep_hw.gateware.fanout)
        k3_cp = copies(m, platform, cfg.k == 3, PX, name="win_k3", reset_less=True)
        s2_cp = copies(m, platform, cfg.stride == 2, PX, name="win_s2", reset_less=True)
        raw = [win.payload.win[slot] for slot in range(3 * NC)]
        for q in range(PX):
            k3, st2 = k3_cp[q], s2_cp[q]
            for r in range(3):
                for cc in range(3):
                    if PX == 1:
                        src = raw[r * NC + cc]
                    else:
                        src = Mux(st2, raw[r * NC + 2 * q + cc], raw[r * NC + PX - 1 + q + cc])
                    if r == 0 and cc == 0:
                        src = Mux(k3, src, raw[PX + 1 + q])
                    m.d.sync += s1_win[q][r * 3 + cc].eq(src)

        # S0 -> S1
        m.d.sync += [
            s1.bank.eq(bank),
            s1.valid.eq(issue),
            s1.first.eq(win.payload.first & (c == 0) & (j == 0)),
            s1.last.eq(last_mac),
            s1.final.eq(last_mac & last_px & last_g),
            s1.res.eq(res_ptr),
            s1.nv.eq(nv),
            s1_j.eq(j),
            s1_zero.eq(cfg.kk == 0),
        ]
        with m.If(issue):
            with m.If(~end_j):
                m.d.sync += j.eq(j + 1)
            with m.Else():
                m.d.sync += [j.eq(0), c.eq(Mux(end_c, 0, c + 1))]
            with m.If(cfg.kk != 0):
                m.d.comb += wptr_n.eq(wptr + 1)
            with m.If(last_mac):
                with m.If(~last_px):
                    with m.If(cfg.kk != 0):
                        m.d.comb += wptr_n.eq(gbase)
                    with m.If(row_end):
                        m.d.sync += [*row_start(), py.eq(py + 1),
                                     last_row.eq(py + 2 == cfg.ho),
                                     res_row.eq(res_row + row_res),
                                     res_ptr.eq(res_row + row_res)]
                    with m.Else():
                        m.d.sync += [px.eq(px + PX), left.eq(left - PX),
                                     row_end.eq(left <= 2 * PX),
                                     nv.eq(Mux(left <= 2 * PX, left - PX, PX)),
                                     res_ptr.eq(res_ptr + blk_res)]
                with m.Else():
                    # group done
                    m.d.sync += [*row_start(), py.eq(0), last_row.eq(cfg.ho == 1),
                                 g.eq(g + 1), last_g.eq(g + 2 == cfg.groups),
                                 gbase.eq(wptr + (cfg.kk != 0)),
                                 res_gbase.eq(res_gbase + PO // G),
                                 res_row.eq(res_gbase + PO // G),
                                 res_ptr.eq(res_gbase + PO // G)]
                    with m.If(last_g):
                        m.d.sync += state.eq(_State.FINISH)
                    with m.Else():
                        m.d.sync += bank.eq(~bank)

        # S1 -> S1W: the weight word is read into the registers right after its block RAMs
        # (kep_hw.gateware.wtmem); the window and the flags move on with it
        # S1W -> S2: the weight word, through the block RAMs' bank multiplexer, into the
        # engine's registers: the values once; the indices (or, in dense mode, the element
        # counter) once per pixel group, the window once per WINDOW_COPY_CHANNELS output channels
        # (kep_hw.gateware.fanout: each copy drives the operand multiplexers of a few PEs, not
        # the P multiplexers spread over the DSP rows)
        m.d.sync += [s1w.eq(s1), s1w_j.eq(s1_j), s1w_zero.eq(s1_zero), s1w_win.eq(s1_win)]
        # a layer with K = 0 multiplies by 0 with index 0: its weight word is not read, and
        # window position 0 of every valid pixel is written (a 4-state simulator would carry an
        # unknown from a never-written window position through the product of 0)
        idx_d = Signal(4 * PO)
        m.d.comb += idx_d.eq(Cat(*(Mux(cfg.dense, s1w_j, Mux(s1w_zero, 0, self.wt.data[o].index))
                                   for o in range(PO))))
        s1d = s1e = None
        if p.dist_reg:
            # S1D (params.dist_reg): the weight word (the K = 0 zero applied), the window and
            # the flags in one more register, beside the weight memory's bank multiplexer;
            # S1E: the word in one copy per DIST_GROUPS pixel groups, the window and flags
            # once more. Each pixel group's S2 registers load from its S1E copy: from the
            # bank multiplexer to a group's PEs, two register-to-register routes
            s1d = Signal(flags, name="s1d")
            s1e = Signal(flags, name="s1e")
            s1d_win = Signal(wl, reset_less=True)
            s1e_win = Signal(wl, reset_less=True)
            n_dist = len(spans(PX, DIST_GROUPS))
            d_val0 = Signal(8 * PO, name="s1d_val", reset_less=True)
            d_idx0 = Signal(4 * PO, name="s1d_idx", reset_less=True)
            m.d.sync += [d_val0.eq(Cat(*(Mux(s1w_zero, 0, self.wt.data[o].value)
                                         for o in range(PO)))),
                         d_idx0.eq(idx_d)]
            d_val = copies(m, platform, d_val0, n_dist, name="s1e_val", reset_less=True)
            d_idx = copies(m, platform, d_idx0, n_dist, name="s1e_idx", reset_less=True)
            m.d.sync += [s1d.eq(s1w), s1d_win.eq(s1w_win), s1e.eq(s1d), s1e_win.eq(s1d_win),
                         s2.eq(s1e)]
            wt_val = None
        else:
            m.d.sync += [s2.eq(s1w), s2_zero.eq(s1w_zero)]
            wt_val = Signal(data.ArrayLayout(signed(8), PO), reset_less=True)
            m.d.sync += [wt_val[o].eq(self.wt.data[o].value) for o in range(PO)]
        # each pixel group's S2: flags, K = 0 flag, values, indices. In a chain
        # (params.chain) group q's are group q-1's one cycle later: one register per hop, so
        # the weight word travels from group to group instead of from one spot to all of them
        if p.dist_reg:
            g_flags, g_zero = [s2] * PX, [Const(0, 1)] * PX
            g_val, g_idx = [], []
            for k, n in enumerate(spans(PX, DIST_GROUPS)):
                g_val += [data.ArrayLayout(signed(8), PO)(v)
                          for v in copies(m, platform, d_val[k], n, name=f"s2_val{k}",
                                          reset_less=True)]
                g_idx += copies(m, platform, d_idx[k], n, name=f"s2_idx{k}", reset_less=True)
        elif p.chain:
            idx0 = Signal(4 * PO, name="s2_idx", reset_less=True)
            m.d.sync += idx0.eq(idx_d)
            g_flags, g_zero, g_val, g_idx = [s2], [s2_zero], [wt_val], [idx0]
            for q in range(1, PX):
                f = Signal(flags, name=f"g{q}_s2")
                z = Signal(name=f"g{q}_zero")
                v = Signal(data.ArrayLayout(signed(8), PO), name=f"g{q}_val", reset_less=True)
                ix = Signal(4 * PO, name=f"g{q}_idx", reset_less=True)
                m.d.sync += [f.eq(g_flags[-1]), z.eq(g_zero[-1]), v.eq(g_val[-1]),
                             ix.eq(g_idx[-1])]
                g_flags.append(f)
                g_zero.append(z)
                g_val.append(v)
                g_idx.append(ix)
        else:
            g_flags, g_zero, g_val = [s2] * PX, [s2_zero] * PX, [wt_val] * PX
            g_idx = copies(m, platform, idx_d, PX, name="s2_idx", reset_less=True)
        # the window of pixel q: params.skew(q) registers after S1W (the group's delay in a
        # chain), then the copies
        n_win = -(-PO // WINDOW_COPY_CHANNELS)
        win_cp = []
        for q in range(PX):
            src = (s1e_win if p.dist_reg else s1w_win)[q].as_value()
            for k in range(p.skew(q)):
                dly = Signal(len(src), name=f"s1w_win{q}_d{k + 1}", reset_less=True)
                m.d.sync += dly.eq(src)
                src = dly
            win_cp.append(copies(m, platform, src, n_win, name=f"s2_win{q}", reset_less=True))

        # S2: operand select (PE q*Po + o: pixel q, output channel o) into the multipliers
        # (or, with operand_reg, into each PE's operand registers: S2R); S3, S4: multiply
        # (two cycles: the multipliers' input and output registers). Each pixel group's flags
        # move through these stages (one set per group in a chain, else one set for all)
        if p.operand_reg:
            m.d.sync += m2.eq(s2)
        m.d.sync += [s3.eq(m2), s4.eq(s3)]
        g_m2, g_s3, g_s4 = [m2], [s3], [s4]
        for q in range(1, PX if p.chain else 1):
            fm2 = Signal(flags, name=f"g{q}_s2r") if p.operand_reg else g_flags[q]
            fs3 = Signal(flags, name=f"g{q}_s3")
            fs4 = Signal(flags, name=f"g{q}_s4")
            if p.operand_reg:
                m.d.sync += fm2.eq(g_flags[q])
            m.d.sync += [fs3.eq(fm2), fs4.eq(fs3)]
            g_m2.append(fm2)
            g_s3.append(fs3)
            g_s4.append(fs4)
        s4_last = g_s4[-1]                   # the last group's S4: the block's shadow load
        # the stages a MAC passes from S0 to the last group's S4 (every group's S2 is one)
        stages = [s1, s1w, *([s1d, s1e] if p.dist_reg else []),
                  *(g_flags if p.chain else [s2]),
                  *([g_m2[-1]] if p.operand_reg else []), g_s3[-1], s4_last]

        prods = []
        vals = {}
        for o in range(PO):
            if p.chain or p.dist_reg:
                # each group's own S2 value register (one PE copy each with S2R)
                for q in range(PX):
                    val = Signal(signed(8), name=f"val{q}_{o}")
                    m.d.comb += val.eq(Mux(g_zero[q], 0, g_val[q][o]))
                    if p.operand_reg:
                        val_r = Signal(signed(8), name=f"s2r_val{q}_{o}", reset_less=True)
                        m.d.sync += val_r.eq(val)
                        val = val_r
                    vals[q, o] = val
            else:
                val = Signal(signed(8), name=f"val{o}")
                m.d.comb += val.eq(Mux(s2_zero, 0, wt_val[o]))
                # S2R: one copy of the weight value per PE (the copies are not merged on the
                # ECP5)
                cps = (copies(m, platform, val, PX, name=f"s2r_val{o}", reset_less=True)
                       if p.operand_reg else [val] * PX)
                vals.update({(q, o): cps[q] for q in range(PX)})
        for q in range(PX):
            for o in range(PO):
                pe = q * PO + o
                mul = Multiplier(signed(8), signed(8),
                                 impl="lut" if pe >= P - p.lut_pes else "dsp",
                                 site=self.pe_sites[pe] if pe < len(self.pe_sites) else None)
                m.submodules[f"mul{pe}"] = mul
                sel = g_idx[q].word_select(o, 4)
                opnd = win_cp[q][o // WINDOW_COPY_CHANNELS].word_select(sel, 8)
                if p.operand_reg:
                    opnd_r = Signal(signed(8), name=f"s2r_opnd{pe}", reset_less=True)
                    m.d.sync += opnd_r.eq(opnd)
                    opnd = opnd_r
                m.d.comb += [mul.a.eq(vals[q, o]), mul.b.eq(opnd)]
                prods.append(mul.p)

        # S4: accumulate (the product alone on a block's first element: the bias is added in
        # the requantization unit), shadow. One copy of the S4 flags per PE (each drives 32
        # flip-flop enables or multiplexers instead of P x 32), from the PE's group's S3
        if p.chain:
            def pe_copies(attr, name):
                return [cp for q in range(PX)
                        for cp in copies(m, platform, attr(g_s3[q]), PO, name=f"{name}_g{q}",
                                         reset_less=True)]
        else:
            # two levels: one copy per pixel group loaded from the stage before S3 (so it holds
            # S3's value), then one per PE from its group's copy (S4's value, as before), so
            # no single net carries a flag to P copies spread over the DSP rows (the first
            # routed P = 128 build's worst path: S3's last flag into its 128 copies, 19.45 ns
            # of routing)
            def pe_copies(attr, name):
                grp = copies(m, platform, attr(m2), PX, name=f"{name}_g", reset_less=True)
                return [cp for q in range(PX)
                        for cp in copies(m, platform, grp[q], PO, name=f"{name}_g{q}",
                                         reset_less=True)]
        v4_cp = pe_copies(lambda st: st.valid, "s4_valid")
        f4_cp = pe_copies(lambda st: st.first, "s4_first")
        l4_cp = pe_copies(lambda st: st.valid & st.last, "s4_load")
        for pe in range(P):
            nxt = Signal(signed(32), name=f"acc_next{pe}")
            m.d.comb += nxt.eq(Mux(f4_cp[pe], 0, acc[pe]) + prods[pe])
            with m.If(v4_cp[pe]):
                m.d.sync += acc[pe].eq(nxt)
            with m.If(l4_cp[pe]):
                m.d.sync += shadow.acc[pe].eq(nxt)
        m.d.comb += shadow_bank_d.eq(Mux(s4_last.valid & s4_last.last, s4_last.bank,
                                         shadow_bank))
        m.d.sync += shadow_bank.eq(shadow_bank_d)
        m.d.comb += [rq.prm[0].eq(banks[0]), rq.prm[1].eq(banks[1]), rq.bank.eq(shadow_bank)]
        with m.If(s4_last.valid & s4_last.last):
            m.d.sync += [shadow.res_addr.eq(s4_last.res),
                         shadow.last.eq(s4_last.final), shadow.nv.eq(s4_last.nv)]
        shadow_full_d = Signal()             # shadow_full's next value
        m.d.comb += [
            shadow_full_d.eq(Mux(rq.i.valid & rq.i.ready, 0,
                                 (s4_last.valid & s4_last.last) | shadow_full)),
            rq.i.valid.eq(shadow_full), rq.i.payload.eq(shadow),
        ]
        m.d.sync += shadow_full.eq(shadow_full_d)
        # ``block`` (a block's last MAC is in the pipeline or the shadow register is full: the
        # next last MAC waits) as a register, loaded with its next value: the flags of S1 (this
        # cycle's issue), of the stages that move on, and of the shadow register; no path runs
        # from the stage flags through the issue logic into the window's buffer moves
        m.d.comb += block_n.eq(shadow_full_d | (issue & last_mac)
                               | Cat(*(st.valid & st.last for st in stages[:-1])).any())
        m.d.sync += block.eq(block_n)

        # parameter load of a group into bank ``ld_bank``: Po reads from ``ld_ptr``, data
        # READ_LATENCY cycles later. Group 0 loads in LOAD; group g+1 while group g runs, into
        # the other bank once no block of group g-1 is in the MAC pipeline, the shadow register
        # or waiting for its parameters in the requantization unit (which reads them in the
        # R0 of each of a block's lane groups, after it freed the shadow register: its
        # ``prm_use``).
        ld_n = Signal(range(PO + 1), init=PO)
        ld_d = Signal(range(PO + 1))
        ld_bank = Signal()
        ld_b1 = Signal()
        # the write enable of each (bank, channel) parameter register, decoded one cycle
        # before the word arrives and registered: each drives only its own word's clock
        # enables (no decoder between a register and ~80 enables spread over the chip)
        ld_en = Signal(2 * PO)
        ld_ptr = Signal(p.prm_bits)
        ld_g = Signal(p.group_bits)          # the group being loaded / last loaded
        m.d.comb += [self.prm.addr.eq(ld_ptr + ld_n), loading.eq(ld_n != PO)]
        m.d.sync += [ld_v.eq(loading), ld_d.eq(ld_n), ld_b1.eq(ld_bank), ld_v2.eq(ld_v)]
        m.d.sync += [ld_en[b * PO + o].eq(ld_v & (ld_b1 == b) & (ld_d == o))
                     for b in range(2) for o in range(PO)]
        with m.If(loading):
            m.d.sync += ld_n.eq(ld_n + 1)
        for b in range(2):
            for o in range(PO):
                with m.If(ld_en[b * PO + o]):
                    m.d.sync += banks[b][o].eq(self.prm.data)
        # next_ready: bank ~bank holds group g+1's parameters
        other_busy = Signal()
        m.d.comb += other_busy.eq(
            Cat(*(st.valid & (st.bank != bank) for st in stages)).any()
            | (shadow_full & (shadow_bank != bank))
            | Mux(bank, rq.prm_use[0], rq.prm_use[1]))
        want = Signal()
        m.d.comb += want.eq((state == _State.RUN) & (ld_g == g) & ~last_g & ~other_busy
                            & ~loading & ~ld_v & ~ld_v2)
        with m.If(want):
            m.d.sync += [ld_n.eq(0), ld_bank.eq(~bank), ld_ptr.eq(ld_ptr + PO),
                         ld_g.eq(ld_g + 1)]
        # registered (one cycle late: conservative), and cleared when the banks swap
        m.d.comb += next_ready_n.eq((ld_g == g + 1) & ~loading & ~ld_v & ~ld_v2
                                    & ~(issue & last_mac & last_px))
        m.d.sync += next_ready.eq(next_ready_n)

        with m.Switch(state):
            with m.Case(_State.IDLE):
                with m.If(self.start):
                    m.d.sync += [
                        state.eq(_State.LOAD), g.eq(0), *row_start(), py.eq(0),
                        last_row.eq(cfg.ho == 1), last_g.eq(cfg.groups == 1),
                        gbase.eq(cfg.wt_base),
                        res_ptr.eq(cfg.res_base),
                        res_row.eq(cfg.res_base), res_gbase.eq(cfg.res_base),
                        j.eq(0), bank.eq(0),
                        ld_n.eq(0), ld_ptr.eq(cfg.prm_base), ld_bank.eq(0), ld_g.eq(0),
                    ]
                    m.d.comb += [fetch.start.eq(1), wptr_n.eq(cfg.wt_base)]
                    m.d.sync += c.eq(0)
            with m.Case(_State.LOAD):
                with m.If(~loading & ~ld_v & ~ld_v2):
                    m.d.sync += state.eq(_State.RUN)
            with m.Case(_State.FINISH):
                with m.If(self.o.valid & self.o.ready & self.o.payload.last):
                    m.d.sync += state.eq(_State.IDLE)
        return m
