# SPDX-License-Identifier: Apache-2.0
"""The on-chip max pooling unit against torch's max pooling of the same int8 tensor."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from amaranth import Module
from amaranth.lib.memory import Memory

from kep_hw.gateware.images import tensor_to_words, words_to_tensor
from kep_hw.gateware.layouts import layer_config
from kep_hw.system.pool import MaxPool, pool_cycles
from kep_hw.testing import run_unit

CFG = layer_config(chan_bits=10, dim_bits=8, group_bits=6, act_bits=14, wt_bits=8,
                   prm_bits=8)


def _run_pool(x, lanes, latency=1):
    c, h, w = x.shape
    ho, wo = h // 2, w // 2
    cw = math.ceil(c / lanes)
    words = tensor_to_words(x, lanes)
    m = Module()
    m.submodules.src = src = Memory(shape=8 * lanes, depth=len(words), init=words)
    m.submodules.dst = dst = Memory(shape=8 * lanes, depth=ho * wo * cw + 1, init=[])
    rd, wr, drd = src.read_port(), dst.write_port(), dst.read_port()
    m.submodules.pool = pool = MaxPool(lanes=lanes, addr_width=14, cfg_layout=CFG,
                                       latency=latency)
    m.d.comb += rd.addr.eq(pool.rd.addr)
    if latency == 1:
        m.d.comb += pool.rd.data.eq(rd.data)
    else:
        m.d.sync += pool.rd.data.eq(rd.data)      # the engine's registered port
    m.d.comb += [
                 wr.addr.eq(pool.wr.addr), wr.data.eq(pool.wr.data), wr.en.eq(pool.wr.en)]
    cfg = CFG.const(dict(cin=c, cout=c, h=h, w=w, ho=ho, wo=wo, cwi=cw, cwo=cw))
    words, cycles = run_unit(m, pool, port=drd, reads=ho * wo * cw,
                             setup=lambda ctx: ctx.set(pool.cfg, cfg))
    return words_to_tensor(words, (c, ho, wo), lanes), cycles


@pytest.mark.parametrize("latency", [1, 2])
@pytest.mark.parametrize("c,h,w,lanes", [(8, 4, 4, 4), (6, 6, 4, 4), (16, 5, 7, 8),
                                         (3, 2, 2, 1)])
def test_maxpool_matches_torch(c, h, w, lanes, latency):
    g = torch.Generator().manual_seed(c * 100 + h * 10 + w)
    x = torch.randint(-128, 128, (c, h, w), generator=g, dtype=torch.int8)
    got, cycles = _run_pool(x, lanes, latency)
    want = F.max_pool2d(x.to(torch.float32)[None], 2, 2)[0].to(torch.int8)
    assert torch.equal(got, want)
    assert cycles == pool_cycles(math.ceil(c / lanes), w, h // 2, w // 2, latency)


def test_maxpool_extremes():
    # -128 everywhere but one 127 per window: the maximum, not the first or last element
    x = torch.full((4, 4, 4), -128, dtype=torch.int8)
    x[:, 1, 0] = 127
    x[:, 2, 3] = -127
    got, _ = _run_pool(x, 4)
    assert got[:, 0, 0].tolist() == [127] * 4 and got[:, 1, 1].tolist() == [-127] * 4
    assert got[:, 0, 1].tolist() == [-128] * 4
