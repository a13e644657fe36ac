# SPDX-License-Identifier: Apache-2.0
"""The on-chip head (global average pool + classifier) against the host's exact tail."""

from __future__ import annotations

import types

import pytest
import torch
from amaranth import Module
from amaranth.lib.memory import Memory

from kep_hw.gateware.images import tensor_to_words
from kep_hw.system.head import Head, head_cycles, sum_bits
from kep_hw.system.plan import run_tail
from kep_hw.testing import run_unit


def _run_head(act, weight, bias, lanes):
    """Simulate the head on ``act`` [C, H, W]; returns (logits, cycles from start to idle)."""
    c, h, w = act.shape
    words = tensor_to_words(act, lanes)
    m = Module()
    m.submodules.mem = mem = Memory(shape=8 * lanes, depth=len(words), init=words)
    rd = mem.read_port()
    abits = max(1, len(words).bit_length())
    m.submodules.head = head = Head(shape=(c, h, w), lanes=lanes, weight=weight, bias=bias,
                                    addr_width=abits)
    m.d.comb += [rd.addr.eq(head.rd.addr), head.rd.data.eq(rd.data)]
    logits, cycles = run_unit(m, head, port=head.logits, reads=weight.shape[0])
    return logits, cycles


def _tail(weight, bias):
    return [types.SimpleNamespace(op="avgpool", name="pool"),
            types.SimpleNamespace(op="linear", name="fc", weight=weight, bias=bias)]


@pytest.mark.parametrize("c,h,w,lanes,classes", [
    (16, 4, 4, 8, 10),      # the ResNet tail's shape, small
    (12, 3, 5, 8, 3),       # channels not a multiple of the lanes
    (4, 2, 2, 4, 1),        # one class
    (8, 1, 1, 2, 7),        # one pixel
])
def test_head_matches_host_tail(c, h, w, lanes, classes):
    g = torch.Generator().manual_seed(c * 1000 + h * 10 + classes)
    act = torch.randint(-128, 128, (c, h, w), generator=g, dtype=torch.int8)
    weight = torch.randint(-128, 128, (classes, c), generator=g, dtype=torch.int8)
    bias = torch.randint(-2**31, 2**31, (classes,), generator=g, dtype=torch.int64).to(torch.int32)
    logits, cycles = _run_head(act, weight, bias, lanes)
    want = run_tail(_tail(weight, bias), act).tolist()
    assert logits == want
    assert cycles == head_cycles(c, h, w, lanes, classes)


def test_head_extremes_wrap_like_int32():
    # every activation -128 and weight -128, bias near the int32 limit: the sum needs all its
    # bits and the logits wrap
    c, h, w, lanes = 8, 4, 4, 8
    act = torch.full((c, h, w), -128, dtype=torch.int8)
    weight = torch.full((2, c), -128, dtype=torch.int8)
    bias = torch.tensor([2**31 - 1, -2**31], dtype=torch.int32)
    logits, _ = _run_head(act, weight, bias, lanes)
    want = run_tail(_tail(weight, bias), act).tolist()
    assert logits == want
    assert want[0] < 0        # it did wrap


def test_sum_bits():
    assert sum_bits(1) == 8 and sum_bits(2) == 9 and sum_bits(64) == 14 and sum_bits(65) == 15
    assert sum_bits(2**30) == 32


def test_head_rejects_bad_shapes():
    with pytest.raises(ValueError, match="does not take"):
        Head(shape=(8, 2, 2), lanes=8, weight=torch.zeros(3, 4, dtype=torch.int8),
             bias=torch.zeros(3, dtype=torch.int32), addr_width=4)
    with pytest.raises(ValueError, match="bias"):
        Head(shape=(8, 2, 2), lanes=8, weight=torch.zeros(3, 8, dtype=torch.int8),
             bias=torch.zeros(2, dtype=torch.int32), addr_width=4)
