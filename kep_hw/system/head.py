# SPDX-License-Identifier: Apache-2.0
"""The network's head on chip: global average pooling and the classifier, in int32.

The arithmetic is that of ``docs/arithmetic.md`` ("Other operations"): the global average pool
is the int32 sum of the last conv output over H x W (the division is folded into the
classifier's scale), the classifier is ``logits = bias + W @ sums`` with int8 ``W`` and int32
``bias``, wrapping modulo 2^32. :func:`kep_hw.system.plan.run_tail` is the same on the host.

Schedule (all memory outputs and the product registered; no path goes from a memory output
through a multiplier or adder in one cycle):

- **pool**: for every channel word ``g`` (``G`` channels, ``cwo = ceil(C / G)`` words per
  pixel) the ``H * W`` words ``n * cwo + g`` are read one per cycle and summed lane by lane,
  then the ``G`` sums are written into the sums memory, ``CL`` per cycle (``H*W + 2 + G/CL``
  cycles per word);
- **classify**: for every class ``j``: ``acc = bias[j]``, then ``acc += sum_i W[j, c+i] *
  sums[c+i]`` for ``CL`` channels ``c, ..., c+CL-1`` per cycle (:func:`class_lanes`: 4
  classifier lanes with ``G >= 8``, the 85F's configurations, which have DSP blocks to spare;
  1 with ``G < 8``, the 12F and Colorlight profiles, whose PEs fill the DSP blocks; each lane
  one multiplier on a DSP block, :mod:`kep_hw.gateware.mul`) through a 5-stage pipeline
  (read, operand registers, multiply (2), lane sum, add), and the logit is written
  (``ceil(C/CL) + 6`` cycles per class: 22 for ResNet-20's 64 channels at ``G >= 8``).

:func:`head_cycles` is this count; the sequencer adds it to the cycle counter.
"""

from __future__ import annotations

import math

import torch
from amaranth import Array, Cat, Const, Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In, Out

from kep_hw.gateware.mul import Multiplier

__all__ = ["Head", "head_cycles", "class_lanes", "sum_bits", "drain_states", "MAX_CLASSES"]

#: Largest number of classes of the on-chip classifier.
MAX_CLASSES = 1024


def drain_states(m: Module, busy, names: list, then: str) -> None:
    """FSM states ``names`` (inside ``m``'s FSM), one cycle each with ``busy`` high, in turn,
    then ``then``: the cycles a pipeline needs to empty."""
    for here, nxt in zip(names, [*names[1:], then]):
        with m.State(here):
            m.d.comb += busy.eq(1)
            m.next = nxt


def sum_bits(pixels: int) -> int:
    """Bits of a signed sum of ``pixels`` int8 values (at most 32: the sums wrap like int32)."""
    return min(32, 8 + max(pixels - 1, 0).bit_length())


def class_lanes(lanes: int) -> int:
    """CL, the classifier's lanes (channels per cycle, one DSP product each) for ``lanes`` (G)
    channels per word: 4 with ``G >= 8`` (G a multiple of 4, so a word's sums fill whole words
    of the sums memory), else 1. A proxy for the part's spare DSP blocks: the configurations
    with G >= 8 are the 85F's (72 DSP blocks spare at P = 64, 8 at P = 128), those with G = 4
    the 12F's (all 28 used) and the Colorlight's."""
    lanes = int(lanes)
    return 4 if lanes >= 8 and lanes % 4 == 0 else 1


def head_cycles(channels: int, height: int, width: int, lanes: int, classes: int) -> int:
    """Cycles of one run of :class:`Head` from ``start`` to ``busy`` low (``start`` cycle
    included, see the module docstring)."""
    cwo = math.ceil(channels / lanes)
    cl = class_lanes(lanes)
    return (1 + cwo * (height * width + 2 + lanes // cl)
            + classes * (math.ceil(channels / cl) + _CLASS_DRAIN + 1))


#: cycles from a classifier issue to its product in the accumulator (read, operand registers,
#: multiplier's two stages, lane sum): the drain states after a class's last issue
_CLASS_DRAIN = 5


class Head(wiring.Component):
    """Global average pooling (int32 sums over H x W) and the linear classifier.

    Parameters
    ----------
    shape : tuple
        ``(C, H, W)`` of the last conv output, stored as words of ``lanes`` int8 channels of
        one pixel, word ``n * ceil(C / lanes) + g`` for pixel ``n`` (row-major) and channel
        word ``g``.
    lanes : int
        G, channels per activation word.
    weight : torch.Tensor
        int8 ``[classes, C]``, the classifier's weights.
    bias : torch.Tensor
        int32 ``[classes]``.
    addr_width : int
        Address bits of ``rd``.

    Attributes
    ----------
    start : In(1)
        Start (the output buffer holds the last conv output).
    busy : Out(1)
        High from the cycle after ``start`` until the logits are written.
    rd : In(ReadPort.Signature)
        Reads of the last conv output (latency 1).
    logits : Out(ReadPort.Signature(shape=signed(32)))
        Reads of the logits, class ``j`` at address ``j`` (latency 1).

    Raises
    ------
    ValueError
        If the shapes of ``weight`` and ``bias`` do not match ``shape``, or there are more than
        :data:`MAX_CLASSES` classes.
    """

    def __init__(self, *, shape: tuple, lanes: int, weight: torch.Tensor, bias: torch.Tensor,
                 addr_width: int):
        c, h, w = (int(v) for v in shape)
        try:
            self._check(c, lanes, weight, bias)
        except ValueError:
            self._MustUse__silence = True       # not built: no "never used" warning
            raise
        self.shape, self.lanes = (c, h, w), lanes
        self.classes = int(weight.shape[0])
        # the weight ROM: class-major words of CL weights (channels c, ..., c + CL - 1; 0 past
        # the last channel), lane i in bits 8i..8i+7
        cl = class_lanes(lanes)
        cw = math.ceil(c / cl)
        wt = torch.zeros(self.classes, cw * cl, dtype=torch.int64)
        wt[:, :c] = weight.to(torch.int64)
        self.weight = [sum((int(v) & 0xFF) << (8 * i) for i, v in enumerate(row))
                       for row in wt.view(self.classes * cw, cl).tolist()]
        self.bias = [int(v) for v in bias.to(torch.int64).tolist()]
        super().__init__({
            "start": In(1),
            "busy": Out(1),
            "rd": In(ReadPort.Signature(addr_width=addr_width, shape=unsigned(8 * lanes))),
            "logits": Out(ReadPort.Signature(addr_width=max(1, (self.classes - 1).bit_length()),
                                             shape=signed(32))),
        })

    @staticmethod
    def _check(c, lanes, weight, bias):
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, got {lanes!r}")
        if weight.dim() != 2 or weight.shape[1] != c or not 1 <= weight.shape[0] <= MAX_CLASSES:
            raise ValueError(f"classifier weight of shape {tuple(weight.shape)} does not take "
                             f"{c} channels to 1..{MAX_CLASSES} classes")
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"classifier bias of shape {tuple(bias.shape)}, expected "
                             f"({weight.shape[0]},)")
        if weight.numel() and not (-128 <= int(weight.min()) and int(weight.max()) <= 127):
            raise ValueError("classifier weights must be int8")

    def elaborate(self, platform):
        m = Module()
        (C, H, W), G, J = self.shape, self.lanes, self.classes
        cwo = math.ceil(C / G)
        hw = H * W
        S = sum_bits(hw)
        CL = class_lanes(G)
        CW = math.ceil(C / CL)              # words of CL sums (and of CL weights per class)

        # memories: sums (CW words of CL x S bits), weights (ROM, class-major, CL x 8 bits per
        # word), logits (J x 32 bits)
        m.submodules.sums = sums_mem = Memory(shape=unsigned(CL * S), depth=CW, init=[])
        m.submodules.wrom = wrom = Memory(shape=unsigned(8 * CL), depth=J * CW,
                                          init=self.weight)
        m.submodules.lmem = lmem = Memory(shape=signed(32), depth=J, init=[])
        s_wr, s_rd = sums_mem.write_port(), sums_mem.read_port()
        w_rd = wrom.read_port()
        l_wr, l_rd = lmem.write_port(), lmem.read_port()
        m.d.comb += [l_rd.addr.eq(self.logits.addr), self.logits.data.eq(l_rd.data)]
        bias = Array(Const(b, signed(32)) for b in self.bias)

        # pool: address, data register, lane sums
        g = Signal(range(cwo + 1))
        n = Signal(range(hw + 1))
        addr = Signal.like(self.rd.addr)
        issue = Signal()
        v1, v2 = Signal(), Signal()
        word = Signal(8 * G)
        lsum = [Signal(signed(S), name=f"lsum{lane}") for lane in range(G)]
        wl = Signal(range(G // CL + 1))     # lane group being written into the sums memory
        m.d.comb += self.rd.addr.eq(addr)
        m.d.sync += [v1.eq(issue), v2.eq(v1)]
        with m.If(v1):
            m.d.sync += word.eq(self.rd.data)
        with m.If(v2):
            m.d.sync += [lsum[lane].eq(lsum[lane] + word.word_select(lane, 8).as_signed())
                         for lane in range(G)]

        # classify, CL channels per cycle: (j, c) addresses -> registered operands -> CL
        # products (Multiplier: two registered stages, on DSP blocks; in logic for sums wider
        # than a DSP's 18 bits) -> registered lane sum -> acc
        j = Signal(range(J + 1))
        c = Signal(range(CW + 1))
        cissue = Signal()
        cv = [Signal(name=f"c{k}") for k in range(1, _CLASS_DRAIN + 1)]   # c1 .. c5
        w_q = Signal(unsigned(8 * CL))
        s_q = Signal(unsigned(CL * S))
        psum = Signal(signed(S + 8 + 2))
        acc = Signal(signed(32))
        m.d.comb += [w_rd.addr.eq(j * CW + c), s_rd.addr.eq(c)]
        m.d.sync += [cv[0].eq(cissue), *(b.eq(a) for a, b in zip(cv, cv[1:]))]
        with m.If(cv[0]):
            m.d.sync += [w_q.eq(w_rd.data), s_q.eq(s_rd.data)]
        prods = []
        for i in range(CL):
            impl = "dsp" if S <= 18 else "lut"
            m.submodules[f"mul{i}"] = mul = Multiplier(signed(8), signed(S), impl=impl)
            m.d.comb += [mul.a.eq(w_q.word_select(i, 8).as_signed()),
                         mul.b.eq(s_q.word_select(i, S).as_signed())]
            prods.append(mul.p)
        while len(prods) > 1:
            prods = [prods[k] + prods[k + 1] if k + 1 < len(prods) else prods[k]
                     for k in range(0, len(prods), 2)]
        with m.If(cv[3]):
            m.d.sync += psum.eq(prods[0])
        with m.If(cv[4]):
            m.d.sync += acc.eq(acc + psum)

        with m.FSM(name="head"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [g.eq(0), n.eq(0), addr.eq(0), j.eq(0), wl.eq(0)]
                    m.d.sync += [s.eq(0) for s in lsum]
                    m.next = "POOL"
            with m.State("POOL"):
                m.d.comb += [self.busy.eq(1), issue.eq(1)]
                m.d.sync += [n.eq(n + 1), addr.eq(addr + cwo)]
                with m.If(n == hw - 1):
                    m.next = "DRAIN0"
            drain_states(m, self.busy, ["DRAIN0", "DRAIN1"], "SUMS")
            with m.State("SUMS"):
                # lane sums -> sums memory, CL per word, lanes 0..CL-1 first, shifting the
                # others down
                m.d.comb += [self.busy.eq(1), s_wr.addr.eq(g * (G // CL) + wl),
                             s_wr.data.eq(Cat(*lsum[:CL])),
                             s_wr.en.eq(g * (G // CL) + wl < CW)]
                m.d.sync += [lsum[lane].eq(lsum[lane + CL]) for lane in range(G - CL)]
                m.d.sync += [*(s.eq(0) for s in lsum[G - CL:]), wl.eq(wl + 1)]
                with m.If(wl == G // CL - 1):
                    m.d.sync += [g.eq(g + 1), n.eq(0), addr.eq(g + 1)]
                    m.d.sync += wl.eq(0)
                    with m.If(g == cwo - 1):
                        m.d.sync += [c.eq(0), acc.eq(bias[0])]
                        m.next = "CLASS"
                    with m.Else():
                        m.next = "POOL"
            with m.State("CLASS"):
                m.d.comb += [self.busy.eq(1), cissue.eq(1)]
                m.d.sync += c.eq(c + 1)
                with m.If(c == CW - 1):
                    m.next = "CDRAIN0"
            drain_states(m, self.busy, [f"CDRAIN{k}" for k in range(_CLASS_DRAIN)], "LOGIT")
            with m.State("LOGIT"):
                m.d.comb += [self.busy.eq(1), l_wr.addr.eq(j), l_wr.data.eq(acc), l_wr.en.eq(1)]
                m.d.sync += [j.eq(j + 1), c.eq(0), acc.eq(bias[(j + 1)[:len(j)]])]
                with m.If(j == J - 1):
                    m.next = "IDLE"
                with m.Else():
                    m.next = "CLASS"
        return m
