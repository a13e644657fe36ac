# SPDX-License-Identifier: Apache-2.0
"""Pipelined requantization unit: Px x Po int32 accumulators -> Px int8 output transfers.

Per lane (``docs/arithmetic.md``)::

    z = (acc * mult + res * res_mult + 2**(shift-1)) >> shift;  relu;  saturate to int8

The input holds the accumulators of a block of ``nv <= Px`` output pixels; pixel ``q`` owns
accumulators ``q*Po .. q*Po + Po-1`` and its residual word is ``res_addr + q*res_step``.
The unit has L = ``params.rq_lanes`` lanes (L divides G): it runs once per output, not per MAC,
so it is sized to the rate it needs. Pipeline, one lane group (L output channels of one pixel)
issued per cycle, every step registered:

- P: the issue decision (the plan): the block's first lane group once the input is valid and
  the output queue has a free slot, the block's other lane groups after it (a pixel waits for
  a free slot); the residual word address ``res_addr + q*res_step + c // (G/L)`` computed.
  The block's ``nv``, ``last``, ``res_addr`` and parameter bank are kept from its first issue.
- P1 .. P3: the decision travels :data:`LEAD` = 3 register stages to R0, through a tree of
  copies for the accumulator chain's controls (one register, one per lane, one per lane and
  section of :data:`CHAIN_SPAN` chain registers): the chain's enable and load select are
  registers beside the registers they drive. Its cost: LEAD cycles on the layer's last
  output, and LEAD more cycles that each pixel holds its output queue slot.
- The cycle before R0: the residual word address presented (the word arrives in R1).
- R0: the lane group's parameters selected into
  registers (from the bank kept with the block, selected in P3 into a register per output
  channel), its accumulators taken from the input (the
  block's first lane group) or from the head of a shift chain per lane that the first issue
  loads with the block's other lane groups (no wide multiplexer: every net stays local). The
  first issue's R0 frees the input (``ready``): the accumulators are in the chain then.
- R1: the block's bias added to the accumulator (the engine accumulates the products alone),
  ``acc + bias`` modulo 2**32 as ``docs/arithmetic.md`` defines ``acc``.
- R2: ``acc * mult`` as two DSP products, ``acc[15:0] * mult`` and ``acc[31:16] * mult``
  (:class:`kep_hw.gateware.mul.Multiplier`, two cycles: R2 -> R4).
- R1: the residual word arrives (read latency 2); the bytes of it that the lane may take (one
  per lane group of the word) pass two registers of the lane's own (R2, R3), the lane group's
  byte is picked into a register (R4).
- R4: ``res * res_mult``, an 8 x 24 product built from logic (two cycles: R4 -> R6).
- R4: ``acc * mult = (hi << 16) + lo``.
- R5: ``+ 2**(shift-1)``.
- R6: the residual product arrives; the sum of both.
- R7: arithmetic shift.
- R8: ReLU and saturation.
- R9: the int8 outputs written into an output queue slot (each lane's bytes of the slots and
  of the queue's head registers with a copy of the queue's pointers and write flags of its own).

A pixel takes ``Po/L`` issue cycles; pixels issue back to back while the output queue (``D``
slots, ``D = max(2, ceil((LEAD + Po/L + PIPE + 1) / (Po/L)))``, enough for a ready consumer)
has a free slot, reserved when the decision to issue the pixel's first lane group is made. A
pixel is written to the queue ``LEAD + Po/L + PIPE - 1`` cycles after that decision
(:data:`PIPE` = 9) and offered on ``o`` in the next cycle. Blocks follow each other without a
gap: the next block's first issue is decided in the cycle after the last one's.
"""

from __future__ import annotations

import math

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from kep_hw.gateware.fanout import copies
from kep_hw.gateware.layouts import ParamWord, acc_word, act_word, out_word
from kep_hw.gateware.mul import Multiplier
from kep_hw.gateware.params import EngineParams, check_params

__all__ = ["PIPE", "LEAD", "CHAIN_SPAN", "queue_depth", "Requant"]

#: cycles from a lane group's issue (R0) to its write into the output queue (R9)
PIPE = 9

#: cycles from a lane group's issue decision (P) to its R0
LEAD = 3

#: accumulator chain registers per copy of the chain's controls
CHAIN_SPAN = 4


def queue_depth(params: EngineParams) -> int:
    """Output queue slots of :class:`Requant`: a pixel holds its slot from its first issue's
    decision to the cycle its transfer is taken, ``LEAD + Po/L + PIPE + 1`` cycles with a
    ready consumer, and a pixel issues every ``Po/L`` cycles."""
    ng = params.po // params.rq_lanes
    return max(2, math.ceil((LEAD + ng + PIPE + 1) / ng))


class Requant(wiring.Component):
    """Requantization of a block's accumulators, L lanes per cycle, one transfer per pixel.

    Parameters
    ----------
    params : EngineParams
        Engine size.

    Attributes
    ----------
    i : In(stream.Signature(acc_word))
        Accumulators; the payload is read in place and ``ready`` is raised in the R0 of the
        block's first lane group, when the chain takes the accumulators (the producer's
        shadow register is freed then).
    prm : In(ArrayLayout(ArrayLayout(ParamWord, Po), 2))
        Two banks of output-channel group parameters.
    bank : In(1)
        The bank of the input block's group (stable while ``i.valid``).
    prm_use : Out(2)
        Bit ``b``: bank ``b`` may still be read (a planned issue has not passed R0); its
        words must stay stable.
    relu, residual : In(1)
        Layer flags.
    res_step : In(chan_bits)
        Residual words between horizontally adjacent pixels (``cwo``).
    res : In(ReadPort.Signature)
        Residual read port, data two cycles after addr
        (:data:`kep_hw.gateware.engine.READ_LATENCY`).
    o : Out(stream.Signature(out_word(Po)))
        int8 outputs, one transfer per pixel.
    busy : Out(1)
        A block is being issued or a lane group is in the pipeline (parameters in use).
    """

    def __init__(self, params: EngineParams):
        self.params = check_params(params)
        super().__init__({
            "i": In(stream.Signature(acc_word(params))),
            "prm": In(data.ArrayLayout(data.ArrayLayout(ParamWord, params.po), 2)),
            "bank": In(1),
            "prm_use": Out(2),
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
        PO, PX, G, L = p.po, p.px, p.lanes, p.rq_lanes
        NG = PO // L                     # lane groups per pixel
        SUB = G // L                     # lane groups per residual word
        D = queue_depth(p)
        n_chain = PX * NG - 1            # accumulator chain registers per lane
        NSUB = max(1, math.ceil(n_chain / CHAIN_SPAN))

        # -- the issue plan (P), LEAD cycles ahead of R0 ---------------------------------
        c = Signal(range(NG))            # lane group
        q = Signal(range(PX))            # pixel of the block
        qoff = Signal(p.act_bits)        # q * res_step
        credits = Signal(range(D + 1), init=D)
        pending = Signal()               # a block is planned, its R0 has not taken it yet
        blk_nv = Signal.like(self.i.payload.nv)
        blk_last = Signal()
        blk_res = Signal(p.act_bits)
        blk_bank = Signal()
        later = Signal()                 # not a block's first issue
        issuing = Signal()
        first = Signal()
        pix_start = Signal()
        end_pix = Signal()
        end_blk = Signal()
        nv = Signal.like(self.i.payload.nv)
        bank = Signal()
        res_base = Signal(p.act_bits)
        blast = Signal()                 # the layer's last block
        m.d.comb += [
            later.eq((c != 0) | (q != 0)),
            # a block in progress, or the input's block once the last one planned left it
            issuing.eq((later | (self.i.valid & ~pending)) & ((c != 0) | (credits != 0))),
            first.eq(issuing & ~later),
            pix_start.eq(issuing & (c == 0)),
            nv.eq(Mux(later, blk_nv, self.i.payload.nv)),
            bank.eq(Mux(later, blk_bank, self.bank)),
            res_base.eq(Mux(later, blk_res, self.i.payload.res_addr)),
            blast.eq(Mux(later, blk_last, self.i.payload.last)),
            end_pix.eq(c == NG - 1),
            end_blk.eq(end_pix & (q == nv - 1)),
        ]
        with m.If(first):
            m.d.sync += [blk_nv.eq(self.i.payload.nv), blk_last.eq(self.i.payload.last),
                         blk_res.eq(self.i.payload.res_addr), blk_bank.eq(self.bank)]
        with m.If(issuing):
            with m.If(~end_pix):
                m.d.sync += c.eq(c + 1)
            with m.Else():
                m.d.sync += c.eq(0)
                with m.If(end_blk):
                    m.d.sync += [q.eq(0), qoff.eq(0)]
                with m.Else():
                    m.d.sync += [q.eq(q + 1), qoff.eq(qoff + self.res_step)]

        # -- P -> R0: LEAD register stages; the chain's controls through a tree of copies
        # (kep_hw.gateware.fanout): one register (P1), one per lane (P2), one per lane and
        # chain section of CHAIN_SPAN registers (R0), so no control net spans the array
        plan = {
            "iss": issuing, "first": first, "c": c, "bank": bank, "end": end_pix,
            "last": blast & end_blk,
            "addr": res_base + qoff + (c // SUB if SUB > 1 else c),
        }
        stages = [plan]
        for k in range(1, LEAD + 1):
            nxt = {}
            for key, v in stages[-1].items():
                r = Signal.like(v, name=f"p{k}_{key}", reset_less=key not in ("iss", "first"))
                m.d.sync += r.eq(v)
                nxt[key] = r
            stages.append(nxt)
        r0 = stages[LEAD]
        ctl1 = Cat(stages[1]["iss"], stages[1]["first"], stages[1]["c"])
        lane_ctl = copies(m, platform, ctl1, L, name="lane_ctl", reset_less=True)
        # (each copy is 0 in reset, as its source is)
        sect_ctl = [copies(m, platform, lane_ctl[lane], NSUB + 1, name=f"chain{lane}_ctl",
                           reset_less=True) for lane in range(L)]

        def ctl(v):
            return v[0], v[1], v[2:]

        m.d.sync += pending.eq(first | (pending & ~self.i.ready))
        credits_d = Signal.like(credits)
        m.d.comb += credits_d.eq(credits - pix_start + (self.o.valid & self.o.ready))
        m.d.sync += credits.eq(credits_d)

        valid = [Signal(name=f"r{i}_valid") for i in range(PIPE + 1)]   # valid[i]: R_i
        end = [Signal(name=f"r{i}_end") for i in range(PIPE + 1)]
        last = [Signal(name=f"r{i}_last") for i in range(PIPE + 1)]
        grp = [Signal(range(NG), name=f"r{i}_c") for i in range(PIPE + 1)]
        m.d.comb += [
            self.res.en.eq(1),
            # the residual word address a cycle before R0: the word arrives in R1, then two
            # registers per lane take their bytes (R2, R3)
            self.res.addr.eq(stages[LEAD - 1]["addr"]),
            # the block's accumulators are in the chain after its first issue's R0
            self.i.ready.eq(r0["iss"] & r0["first"]),
            valid[0].eq(r0["iss"]), end[0].eq(r0["end"]), last[0].eq(r0["last"]),
            grp[0].eq(r0["c"]),
        ]
        for i in range(1, PIPE + 1):
            m.d.sync += [valid[i].eq(valid[i - 1]), end[i].eq(end[i - 1]),
                         last[i].eq(last[i - 1]), grp[i].eq(grp[i - 1])]
        # the parameter banks the unit may still read (in R0), for the engine's next load
        use = [Signal(name=f"prm_use{b}") for b in range(2)]
        for b in range(2):
            m.d.comb += use[b].eq((later & (blk_bank == b))
                                  | Cat(*(stages[k]["iss"] & (stages[k]["bank"] == b)
                                          for k in range(1, LEAD + 1))).any())
        m.d.comb += [
            self.prm_use.eq(Cat(*use)),
            self.busy.eq(later | pending | Cat(*(stages[k]["iss"]
                                                 for k in range(1, LEAD + 1))).any()
                         | Cat(*valid[1:]).any()),
        ]

        # R0 -> R1: the lane group's accumulators and parameters
        r1_acc = Signal(data.ArrayLayout(signed(32), L), reset_less=True)
        r1_prm = Signal(data.ArrayLayout(ParamWord, L), reset_less=True)
        # the parameters of R0's bank, selected one stage earlier into a register per output
        # channel (through one copy of P1's bank per channel): the lanes' multiplexers are
        # then Po/L:1, and no select spans both banks
        bank_cp = copies(m, platform, stages[1]["bank"], PO, name="prm_bank_sel",
                         reset_less=True)
        prm_cur = Signal(data.ArrayLayout(ParamWord, PO), reset_less=True)
        for o in range(PO):
            m.d.sync += prm_cur[o].eq(Mux(bank_cp[o], self.prm[1][o], self.prm[0][o]))
        for lane in range(L):
            _, first0, c0 = ctl(sect_ctl[lane][NSUB])
            with m.Switch(c0):
                for g in range(NG):
                    with m.Case(g):
                        m.d.sync += r1_prm[lane].eq(prm_cur[g * L + lane])
            # The accumulators reach the lanes through a shift chain per lane, not a
            # (Px*NG):1 multiplexer (whose 32 * P inputs would all converge on the lanes): the
            # block's first issue takes lane group 0 straight from the input and loads groups
            # 1 .. Px*NG-1 into the chain, each later issue takes the chain's head and shifts
            # it by one group. Each chain register loads either its own accumulator or its
            # neighbour's, so no net spans more than one group. Each section of CHAIN_SPAN
            # chain registers has its own copy of the controls.
            head = self.i.payload.acc[lane]
            chain = [Signal(signed(32), name=f"chain{lane}_{j}", reset_less=True)
                     for j in range(n_chain)]
            m.d.sync += r1_acc[lane].eq(Mux(first0, head, chain[0]) if chain else head)
            for j in range(n_chain):
                iss_s, first_s, _ = ctl(sect_ctl[lane][j // CHAIN_SPAN])
                with m.If(iss_s):
                    with m.If(first_s):
                        m.d.sync += chain[j].eq(self.i.payload.acc[(j + 1) * L + lane])
                    if j + 1 < n_chain:
                        with m.Else():
                            m.d.sync += chain[j].eq(chain[j + 1])

        # parameters travel with their lane group (R1 -> R2 -> ...)
        def delayed(sig, n, name):
            out = sig
            for k in range(n):
                nxt = Signal.like(sig, name=f"{name}_d{k + 1}", reset_less=True)
                m.d.sync += nxt.eq(out)
                out = nxt
            return out

        # the layer's flags in one copy per lane (stable while a layer runs; the copies lag the
        # configuration by a cycle, long before the first output): the ReLU flag alone drove
        # every lane's saturation into the output queue's head registers (the 85F build's
        # worst path, 13.79 ns, 12.09 of it routing)
        relu_cp = copies(m, platform, self.relu, L, name="lane_relu", reset_less=True)
        residual_cp = copies(m, platform, self.residual, L, name="lane_residual",
                             reset_less=True)
        ys = []
        for lane in range(L):
            # R1 -> R2: + bias (32 bits, modulo 2**32)
            prm = Signal(ParamWord, name=f"r2_prm{lane}", reset_less=True)
            acc = Signal(signed(32), name=f"r2_acc{lane}", reset_less=True)
            m.d.sync += [prm.eq(r1_prm[lane]), acc.eq(r1_acc[lane] + r1_prm[lane].bias)]
            # R2 -> R4: acc * mult as two products
            lo = Multiplier(unsigned(16), unsigned(16), impl="dsp")
            hi = Multiplier(signed(16), unsigned(16), impl="dsp")
            m.submodules[f"mul_lo{lane}"] = lo
            m.submodules[f"mul_hi{lane}"] = hi
            m.d.comb += [lo.a.eq(acc[:16]), lo.b.eq(prm.mult),
                         hi.a.eq(acc[16:]), hi.b.eq(prm.mult)]
            # R1 -> R2 -> R3: the residual word's bytes that the lane may take (one per lane
            # group of the word: G/L bytes) through two registers of the lane's own (the word
            # arrives in R1 through the buffers' multiplexer, a route across the chip to every
            # lane: the first register halves it); R3 -> R4: the lane group's byte picked (0
            # without a residual); R4 -> R6: res * res_mult in logic
            sub = delayed(grp[1], 2, f"sub{lane}")              # lane group in R3
            rm = delayed(prm.res_mult, 2, f"rm{lane}")           # in R4
            word = self.res.data
            cand = delayed(Cat(*(word[k * L + lane] for k in range(SUB))), 2, f"res{lane}_w")
            pick = cand[:8]
            for k in range(1, SUB):
                pick = Mux((sub % SUB) == k, cand[8 * k:8 * (k + 1)], pick)
            r4_res = Signal(signed(8), name=f"res{lane}_d1", reset_less=True)   # in R4
            m.d.sync += r4_res.eq(Mux(residual_cp[lane], pick, 0))
            rmul = Multiplier(signed(8), unsigned(24), impl="lut")
            m.submodules[f"mul_res{lane}"] = rmul
            m.d.comb += [rmul.a.eq(r4_res), rmul.b.eq(rm)]
            # R4 -> R5: (hi << 16) + lo
            r5_pm = Signal(signed(50), name=f"r5_pm{lane}", reset_less=True)
            m.d.sync += r5_pm.eq((hi.p << 16) + lo.p)
            # R5 -> R6: + rounding term; R6 -> R7: + residual product (from its multiplier's
            # output register)
            shift3 = delayed(prm.shift, 3, f"shift{lane}")       # in R5
            rnd = Signal(48, name=f"rnd{lane}")
            m.d.comb += rnd.eq((Const(1, 48) << shift3) >> 1)
            r6_pm = Signal(signed(51), name=f"r6_pm{lane}", reset_less=True)
            m.d.sync += r6_pm.eq(r5_pm + rnd)
            r7_sum = Signal(signed(52), name=f"r7_sum{lane}", reset_less=True)
            m.d.sync += r7_sum.eq(r6_pm + rmul.p)
            # R7 -> R8: arithmetic shift
            shift5 = delayed(shift3, 2, f"shift{lane}_r7")       # in R7
            r8_z = Signal(signed(52), name=f"r8_z{lane}", reset_less=True)
            m.d.sync += r8_z.eq(r7_sum >> shift5)
            # R8 -> R9: ReLU and saturation, from the sign and the bits above bit 7 (wide OR
            # / AND, a few LUT levels), not from comparisons (a 52-bit carry chain each): z >
            # 127 iff z is positive with a one above bit 6, z < -128 iff negative with a zero
            # there; registered, so the queue's write and head multiplexers start from a
            # register
            z = r8_z
            neg = z[-1]
            high = z[7:-1]
            r9_y = Signal(signed(8), name=f"r9_y{lane}", reset_less=True)
            m.d.sync += r9_y.eq(Mux(neg, Mux(relu_cp[lane], 0, Mux(high.all(), z[:8], -128)),
                                    Mux(high.any(), 127, z[:8])))
            ys.append(r9_y)

        # R9: written into the output queue slot ``wp``
        ow = out_word(PO)
        queue = Signal(data.ArrayLayout(ow, D), reset_less=True)
        wp = Signal(range(D))
        rp = Signal(range(D))
        count = Signal(range(D + 1))
        push = Signal()
        pop = Signal()
        v8, e8, l8, c8 = valid[PIPE], end[PIPE], last[PIPE], grp[PIPE]     # R9
        m.d.comb += [
            push.eq(v8 & e8),
            pop.eq(self.o.valid & self.o.ready),
            self.o.valid.eq(count != 0),
        ]
        # the stream's payload from registers: ``head_a`` / ``head_b`` hold slots ``rp`` and
        # ``rp + 1`` as they are after this cycle's write (the queue's slot multiplexer and the
        # write in progress are in front of these registers, the consumer's ``ready`` is not),
        # ``popped`` picks the one that is the head now: the same payload as ``queue[rp]``
        head_a = Signal(ow, reset_less=True)
        head_b = Signal(ow, reset_less=True)
        popped = Signal()
        rp1 = Signal(range(D))
        m.d.comb += [rp1.eq(Mux(rp == D - 1, 0, rp + 1)),
                     self.o.payload.eq(Mux(popped, head_b, head_a))]
        m.d.sync += popped.eq(pop)
        # the queue's pointers and R9's write flags once more in one copy per lane (each
        # drives only its lane's bytes of the D slots and of the head registers), from their
        # next values: no pointer or write flag fans out to all Po bytes of every slot
        wp_n = Signal(range(D))
        rp_n = Signal(range(D))
        rp1_n = Signal(range(D))
        m.d.comb += [
            wp_n.eq(Mux(push, Mux(wp == D - 1, 0, wp + 1), wp)),
            rp_n.eq(Mux(pop, rp1, rp)),
            rp1_n.eq(Mux(rp_n == D - 1, 0, rp_n + 1)),
        ]
        m.d.sync += [wp.eq(wp_n), rp.eq(rp_n)]
        qw = data.StructLayout({"v": 1, "c": range(NG), "wp": range(D), "rp": range(D),
                                "rp1": range(D)})
        q_cp = [qw(v) for v in copies(
            m, platform, Cat(valid[PIPE - 1], grp[PIPE - 1], wp_n, rp_n, rp1_n), L,
            name="queue_ctl", reset_less=True)]
        head_n = [Signal(ow, name=f"{nm}_next") for nm in ("head_a", "head_b")]
        m.d.sync += [head_a.eq(head_n[0]), head_b.eq(head_n[1])]
        for lane, y in enumerate(ys):
            qc = q_cp[lane]
            for g in range(NG):
                ch = g * L + lane
                here = Signal(name=f"q_wr{lane}_{g}")
                m.d.comb += here.eq(qc.v & (qc.c == g))
                for d in range(D):
                    with m.If(here & (qc.wp == d)):
                        m.d.sync += queue[d].data[ch].eq(y)
                slots = Cat(*(queue[d].data[ch] for d in range(D)))
                for hn, slot in zip(head_n, (qc.rp, qc.rp1)):
                    m.d.comb += hn.data[ch].eq(Mux(here & (qc.wp == slot), y,
                                                   slots.word_select(slot, 8)))
        with m.If(v8 & e8):
            for d in range(D):
                with m.If(wp == d):
                    m.d.sync += queue[d].last.eq(l8)
        lasts = Cat(*(queue[d].last for d in range(D)))
        for hn, slot in zip(head_n, (rp, rp1)):
            m.d.comb += hn.last.eq(Mux(v8 & e8 & (wp == slot), l8, lasts.bit_select(slot, 1)))
        m.d.sync += [count.eq(count + push - pop),
                     credits.eq(credits_d)]
        return m
