# SPDX-License-Identifier: Apache-2.0
"""amaranth.sim unit tests of the engine's blocks, with random valid gaps and back-pressure."""

from __future__ import annotations

import dataclasses
import math
import random
import warnings

import pytest
import torch
from amaranth.hdl import Module, Shape
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from kep_common.errors import KepError
from kep_train.golden.intarith import requantize

from kep_hw.bench import amaranth_sim
from kep_hw.bench.amaranth_sim import run_layers, stream_get, stream_put
from kep_hw.gateware.engine import connect_read
from kep_hw.gateware.fetch import WindowFetcher
from kep_hw.gateware.layouts import (ParamWord, Target, acc_word, act_word, load_layout,
                                     out_word, pack, plane_word, unpack, weight_word,
                                     window_cols, window_word)
from kep_hw.gateware.params import EngineParams, layer_config
from kep_hw.gateware.perf import block_cycles, layer_cycles, reuses_columns
from kep_hw.gateware.requant import Requant
from kep_hw.host.driver import LayerJob, dense_job, expected_words, golden, layer_program
from kep_hw.testing import random_job, random_layers

SMALL = EngineParams(pes=8, lanes=4, max_cin=16, max_cout=24, max_hw=8, act_depth=1024,
                     wt_depth=2048, prm_depth=64)
#: 16 PEs as Px = 2 pixels x Po = 8 channels, and as Px = 4 pixels x Po = 4 channels
PX2 = EngineParams(pes=16, px=2, lanes=4, max_cin=16, max_cout=24, max_hw=8, act_depth=1024,
                   wt_depth=2048, prm_depth=64)
PX4 = EngineParams(pes=16, px=4, lanes=4, max_cin=16, max_cout=24, max_hw=8, act_depth=1024,
                   wt_depth=2048, prm_depth=64)
#: PX4 with a register per PE between its operand multiplexer and its multiplier (S2R)
PX4R = dataclasses.replace(PX4, operand_reg=True)
#: PX4 with its pixel groups in a chain (group q runs q cycles behind group 0), with and
#: without the operand registers; and 32 PEs as 4 channels x 8 pixels in a chain
PX4C = dataclasses.replace(PX4, chain=True)
PX4CR = dataclasses.replace(PX4, chain=True, operand_reg=True)
PX8 = EngineParams(pes=32, px=8, lanes=4, max_cin=16, max_cout=24, max_hw=10, act_depth=1024,
                   wt_depth=2048, prm_depth=64, operand_reg=True, chain=True)
#: PX4 with the weight word, window and flags in one more register before the pixel groups
#: (S1D), with and without the operand registers
PX4D = dataclasses.replace(PX4, dist_reg=True)
PX4DR = dataclasses.replace(PX4, dist_reg=True, operand_reg=True)


def test_layout_roundtrip():
    ww = weight_word(3)
    elems = [{"value": -128, "index": 8}, {"value": 127, "index": 0}, {"value": -1, "index": 5}]
    assert unpack(ww, pack(ww, elems)) == elems
    p = {"bias": -2**31, "mult": 2**16 - 1, "shift": 47, "res_mult": 2**24 - 1}
    assert unpack(ParamWord, pack(ParamWord, p)) == p
    assert unpack(act_word(4), pack(act_word(4), [-128, 127, 0, -1])) == [-128, 127, 0, -1]


@pytest.mark.parametrize("layout", [ParamWord, weight_word(5), act_word(8), out_word(4),
                                    load_layout(PX4), window_word(4, 2), plane_word(4, 2),
                                    acc_word(PX4),
                                    SMALL.config_layout])
def test_pack_is_layout_const(layout):
    """``pack`` gives the bits of amaranth's ``Layout.const`` (out-of-range values truncated,
    missing fields and elements 0, enums by value)."""
    rng = random.Random(1)

    def draw(shape):
        if isinstance(shape, data.ArrayLayout):
            return [draw(shape.elem_shape) for _ in range(rng.randrange(shape.length + 1))]
        if isinstance(shape, data.StructLayout):
            return {name: draw(f.shape) for name, f in shape if rng.random() < 0.9}
        if shape is Target:
            return rng.choice(list(Target))
        width = Shape.cast(shape).width
        return rng.randrange(-2 ** (width + 1), 2 ** (width + 1))

    for _ in range(50):
        value = draw(layout)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = layout.const(value).as_value().value
        assert pack(layout, value) == want, value
    with pytest.raises(ValueError, match="no field"):
        pack(ParamWord, {"bias": 1, "bais": 2})
    with pytest.raises(TypeError):
        pack(ParamWord, {"bias": 1.0})


def test_params_validation():
    with pytest.raises(ValueError, match="multiple of lanes"):
        EngineParams(pes=6, lanes=4)
    with pytest.raises(ValueError, match="multiple of px"):
        EngineParams(pes=16, px=3)
    with pytest.raises(ValueError, match="multiple of lanes"):
        EngineParams(pes=16, px=8, lanes=4)
    assert (PX4.po, PX4.format_params.pes, PX4.format_params.px) == (4, 4, 1)
    assert layer_config(PX4, cin=4, cout=9, h=4, w=4, k=3, kept=4, stride=1,
                        pad=1)["groups"] == 3
    with pytest.raises(ValueError, match="pes"):
        EngineParams(pes=0)
    with pytest.raises(ValueError, match="operand_reg"):
        EngineParams(operand_reg=1)
    assert PX4R.format_params == PX4.format_params == PX4DR.format_params
    with pytest.raises(ValueError, match="dist_reg must be a bool"):
        EngineParams(pes=16, px=4, dist_reg=1)
    with pytest.raises(ValueError, match="dist_reg needs px > 1"):
        EngineParams(dist_reg=True)
    with pytest.raises(ValueError, match="dist_reg needs px > 1"):
        dataclasses.replace(PX4C, dist_reg=True)
    with pytest.raises(KepError, match="stride"):
        layer_config(SMALL, cin=4, cout=4, h=4, w=4, k=3, kept=4, stride=3, pad=1)
    with pytest.raises(KepError, match="exceed"):
        layer_config(SMALL, cin=17, cout=4, h=4, w=4, k=3, kept=4, stride=1, pad=1)
    with pytest.raises(KepError, match="K="):
        layer_config(SMALL, cin=4, cout=4, h=4, w=4, k=1, kept=2, stride=1, pad=0)
    gen = torch.Generator().manual_seed(0)
    job = random_job(gen, cin=2, cout=2, h=3, w=3)
    job.index[0, 0, 0], job.index[0, 0, 1] = 3, 3           # not strictly ascending
    with pytest.raises(KepError, match="ascending"):
        layer_program(SMALL, job)


def _check_layers(params, jobs, **kw):
    results = run_layers(params, jobs, **kw)
    assert len(results) == len(jobs)
    for job, res in zip(jobs, results):
        want = expected_words(params.format_params, job, golden(job))
        assert res["words"] == want, job.name
        assert res["last_ok"], job.name
    return results


@pytest.mark.parametrize("params,seed,n,max_hw,max_c,tb_seed", [
    (SMALL, 11, 8, 5, 12, 3),
    # Px > 1: widths mostly not multiples of Px
    (PX2, 15, 6, 7, 10, 4),
    (PX4, 17, 6, 7, 10, 4),
    (PX4R, 17, 6, 7, 10, 4),
    (PX4C, 19, 6, 7, 10, 5),
    (PX4CR, 17, 6, 7, 10, 4),
    (PX8, 23, 5, 10, 10, 6),
    (PX4D, 29, 6, 7, 10, 7),
    (PX4DR, 31, 6, 7, 10, 8),
], ids=["px1", "px2", "px4", "px4-operand-reg", "px4-chain", "px4-chain-operand-reg",
        "px8-chain", "px4-dist-reg", "px4-dist-operand-reg"])
def test_engine_random_layers_backpressure(params, seed, n, max_hw, max_c, tb_seed):
    """Random layers with valid gaps on the load stream and output back-pressure (and the
    operand registers' extra MAC stage, and the pixel groups in a chain)."""
    jobs = random_layers(seed, n, params, max_hw=max_hw, max_c=max_c)
    _check_layers(params, jobs, seed=tb_seed, stall=0.4, gap=0.3)


#: (engine, generator seed, testbench seed, stall probability, random_job arguments per layer;
#: ``dense``: run the layer in dense mode)
EDGE_CASES = {
    "px1": (SMALL, 5, 1, 0.2, [
        dict(cin=5, cout=9, h=4, w=3, kept=9, extreme=True, residual=True, name="extreme"),
        dict(cin=3, cout=8, h=3, w=4, kept=0, residual=True, name="k0"),
        dict(cin=6, cout=8, h=5, w=5, k=1, kept=1, stride=2, pad=0, name="1x1"),
    ]),
    # Px = 4 on 7-wide maps
    "px4": (PX4, 8, 2, 0.3, [
        dict(cin=5, cout=6, h=3, w=7, kept=9, extreme=True, residual=True, name="extreme"),
        dict(cin=3, cout=4, h=2, w=7, kept=0, residual=True, name="k0"),
        dict(cin=6, cout=5, h=5, w=7, k=1, kept=1, stride=2, pad=0, name="1x1"),
        dict(cin=4, cout=8, h=5, w=7, kept=3, stride=2, residual=True, name="s2"),
        dict(cin=2, cout=4, h=3, w=8, kept=4, name="dense", dense=True),
    ]),
}


@pytest.mark.parametrize("case", EDGE_CASES)
def test_engine_extremes_strides_empty_planes(case):
    """Saturation, K=0, residual, stride 2, 1x1 (and dense mode)."""
    params, gen_seed, seed, stall, layers = EDGE_CASES[case]
    gen = torch.Generator().manual_seed(gen_seed)
    jobs = []
    for kw in layers:
        kw = dict(kw)
        dense = kw.pop("dense", False)
        job = random_job(gen, **kw)
        jobs.append(dense_job(job) if dense else job)
    # every product -128 * -128 in one plane
    jobs[0].values[0] = -128
    jobs[0].x[:] = -128
    _check_layers(params, jobs, seed=seed, stall=stall)


def _scramble_padding(params: EngineParams, job: LayerJob, loads: list,
                      rng: random.Random) -> list:
    """``loads`` of :func:`layer_program` (default bases) with random bits in every lane that
    holds no data: activation channels past Cin / residual channels past Cout in the last word
    of a pixel, weight lanes and parameter words of output channels past Cout."""
    P, G = params.pes, params.lanes
    h, w = job.x.shape[1:]
    cwi, cwo = math.ceil(job.cin / G), math.ceil(job.cout / G)
    n_act = h * w * cwi
    per_group = job.cin * job.kept
    out = []
    for target, addr, word in loads:
        if target == Target.ACT:
            chans, n = (job.cin, addr % cwi) if addr < n_act else (job.cout, (addr - n_act) % cwo)
            lanes = unpack(act_word(G), word)
            lanes = [v if n * G + i < chans else rng.randrange(-128, 128)
                     for i, v in enumerate(lanes)]
            word = pack(act_word(G), lanes)
        elif target == Target.WT:
            g = addr // per_group
            elems = unpack(weight_word(P), word)
            elems = [e if g * P + p < job.cout else
                     {"value": rng.randrange(-128, 128), "index": rng.randrange(16)}
                     for p, e in enumerate(elems)]
            word = pack(weight_word(P), elems)
        elif addr >= job.cout:
            assert word == 0                       # the padding rule: all-zero words
            word = rng.getrandbits(ParamWord.size)
        out.append((target, addr, word))
    return out


@pytest.mark.parametrize("params", [SMALL, PX4], ids=["px1", "px4"])
def test_padding_is_never_used(params, monkeypatch):
    """Random bits in every padding lane and word of the memory images change no output."""
    rng = random.Random(9)

    def program(fmt, job):
        cfg, loads = layer_program(fmt, job)
        return cfg, _scramble_padding(fmt, job, loads, rng)

    gen = torch.Generator().manual_seed(10)
    jobs = [random_job(gen, cin=5, cout=11, h=4, w=3, kept=4, residual=True, name="k4"),
            random_job(gen, cin=3, cout=3, h=3, w=4, k=1, kept=1, stride=2, pad=0,
                       residual=True, name="1x1"),
            random_job(gen, cin=7, cout=6, h=3, w=5, kept=9, extreme=True, residual=True,
                       name="extreme"),
            dense_job(random_job(gen, cin=6, cout=9, h=3, w=3, kept=3, name="dense"))]
    monkeypatch.setattr(amaranth_sim, "layer_program", program)
    _check_layers(params, jobs, seed=5, stall=0.2)


def test_cycles_match_model():
    """Compute-bound layers (P=16, G=4): the RTL's cycle counter equals the model within 2 %."""
    params = EngineParams(pes=16, lanes=4, max_cin=16, max_cout=32, max_hw=8, act_depth=1024,
                          wt_depth=2048, prm_depth=64)
    gen = torch.Generator().manual_seed(2)
    jobs = [random_job(gen, cin=8, cout=32, h=6, w=6, kept=4, stride=2, name="s2"),
            random_job(gen, cin=3, cout=16, h=6, w=6, kept=9, name="dense3"),
            random_job(gen, cin=16, cout=16, h=4, w=4, k=1, kept=1, stride=2, pad=0,
                       name="1x1")]
    results = _check_layers(params, jobs)
    for job, res in zip(jobs, results):
        pred = layer_cycles(job.shape, params)
        assert abs(res["cycles"] - pred) <= 0.02 * pred, (job.name, res["cycles"], pred)


def _window_ref(x: torch.Tensor, k: int, stride: int, pad: int, groups: int, lanes: int,
                px: int = 1):
    """Per block window: the written slots ``{slot: value}`` per lane, nch, first, last."""
    cin, h, w = x.shape
    ho = (h + 2 * pad - k) // stride + 1
    wo = (w + 2 * pad - k) // stride + 1
    nw = -(-cin // lanes)
    nc = window_cols(px)
    xp = torch.nn.functional.pad(x.to(torch.int64), (pad, pad + 2 * nc, pad, pad + 2 * nc))
    out = []
    for _ in range(groups):
        for y in range(ho):
            for bx in range(0, wo, px):
                # a whole block's columns (a short block's extra ones read as zeros), at the
                # end of each fill row: column c at slot NC - ncols + c
                ncols = (px - 1) * stride + 3 if k == 3 else px
                for wd in range(nw):
                    win = []
                    for lane in range(lanes):
                        i = wd * lanes + lane
                        slots = {}
                        for r in range(k):
                            for c in range(ncols):
                                col = bx * stride + (c if k == 3 else c * stride)
                                v = int(xp[i, y * stride + r, col]) if i < cin else 0
                                slots[r * nc + nc - ncols + c] = v
                        win.append(slots)
                    out.append((win, min(lanes, cin - wd * lanes), int(wd == 0),
                                int(wd == nw - 1)))
    return out


@pytest.mark.parametrize("px", [1, 2, 4])
@pytest.mark.parametrize("k,stride,pad,cin,h,w", [(3, 1, 1, 6, 3, 4), (3, 2, 1, 4, 5, 7),
                                                  (1, 2, 0, 5, 4, 7), (1, 1, 1, 3, 2, 2),
                                                  (3, 1, 1, 3, 3, 7), (3, 1, 0, 2, 4, 8)])
def test_window_fetcher(k, stride, pad, cin, h, w, px):
    params = {1: SMALL, 2: PX2, 4: PX4}[px]
    gen = torch.Generator().manual_seed(k * 100 + cin)
    x = torch.randint(-128, 128, (cin, h, w), generator=gen, dtype=torch.int8)
    job = LayerJob(x=x, values=torch.zeros(9, cin, 1, dtype=torch.int8),
                   index=torch.zeros(9, cin, 1, dtype=torch.uint8),
                   bias=torch.zeros(9, dtype=torch.int32), mult=torch.ones(9, dtype=torch.int64),
                   shift=torch.ones(9, dtype=torch.int64),
                   res_mult=torch.zeros(9, dtype=torch.int64), k=k, stride=stride, pad=pad)
    cfg, loads = layer_program(params.format_params, job)
    init = [0] * params.act_depth
    for target, addr, word in loads:
        if target == Target.ACT:
            init[addr] = word
    m = Module()
    m.submodules.dut = dut = WindowFetcher(params)
    m.submodules.mem = mem = Memory(shape=act_word(params.lanes), depth=params.act_depth,
                                    init=[unpack(act_word(params.lanes), v) for v in init])
    connect_read(m, mem.read_port(), dut.act)
    ref = _window_ref(x, k, stride, pad, cfg["groups"], params.lanes, params.px)
    pl = plane_word(params.lanes, params.px)
    rng = random.Random(7)
    got = []

    async def bench(ctx):
        ctx.set(dut.cfg.as_value(), pack(params.config_layout, cfg))
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        # the window's channels one after the other (next_ch), then the pop (ready), each
        # decided a cycle ahead (``ahead``) from the next cycle's head (``head_next``), in
        # random cycles of those where the head is valid
        act = None
        lane = 0
        win = []
        while len(got) < len(ref):
            ctx.set(dut.o.ready, act == "pop")
            if act is not None:
                assert ctx.get(dut.o.valid)
                pw = unpack(pl, ctx.get(dut.o.payload.as_value()))
                want = ref[len(got)][0]
                win.append({s: pw["win"][s] for s in want[lane]})
                lane += 1
                if act == "pop":
                    nch = pw["nch"]
                    win += [{s: 0 for s in want[ln]} for ln in range(nch, params.lanes)]
                    got.append((win, nch, pw["first"], pw["last"]))
                    win, lane = [], 0
            nxt = None
            if ctx.get(dut.head_next.valid) and len(got) < len(ref) and rng.random() < 0.5:
                nch = (ctx.get(dut.head_next.nch) if ctx.get(dut.head_next.new)
                       else ctx.get(dut.o.payload.nch))
                nxt = "pop" if lane + 1 >= nch else "next"
            ctx.set(dut.ahead.ready, nxt == "pop")
            ctx.set(dut.ahead.next_ch, nxt == "next")
            await ctx.tick()
            act = nxt
        ctx.set(dut.o.ready, 0)
        for _ in range(12):
            await ctx.tick()
        assert not ctx.get(dut.o.valid)      # no extra window
        assert not ctx.get(dut.busy)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == ref


@pytest.mark.parametrize("px", [1, 3])
@pytest.mark.parametrize("rq_lanes", [4, 2, 1])
def test_requant_unit(px, rq_lanes):
    """Blocks of ``nv <= Px`` pixels (random nv), extreme accumulators and residuals, with
    L = G, G/2 and 1 requantization lanes."""
    params = EngineParams(pes=8 * px, px=px, lanes=4, max_cin=8, max_cout=8, max_hw=4,
                          act_depth=64, wt_depth=64, prm_depth=16, rq_lanes=rq_lanes)
    PO, G = params.po, params.lanes
    rng = random.Random(3 + px)
    n_blk = 8
    nvs = [rng.randrange(1, px + 1) for _ in range(n_blk)]
    n_pix = sum(nvs)
    accs = [[rng.choice([-2**31, 2**31 - 1, rng.randrange(-2**31, 2**31)]) for _ in range(PO)]
            for _ in range(n_pix)]
    res = [[rng.choice([-128, 127, rng.randrange(-128, 128)]) for _ in range(PO)]
           for _ in range(n_pix)]
    # two parameter banks with different values; block b reads bank b % 2. Half the channels
    # have mult = 0 and a shift that brings res * res_mult into the int8 range: there the
    # output is the residual's (with random accumulators and shifts it rarely changes one)
    def channel():
        rm = rng.randrange(2**10, 2**24)
        if rng.random() < 0.5:
            return 0, rm.bit_length() + rng.randrange(-1, 2), rm
        return rng.randrange(0, 2**16), rng.randrange(1, 48), rm

    banks = []
    for _ in range(2):
        ch = [channel() for _ in range(PO)]
        banks.append({"mult": [c[0] for c in ch], "shift": [c[1] for c in ch],
                      "res_mult": [c[2] for c in ch]})
    prm = [[{"bias": 0, "mult": bk["mult"][o], "shift": bk["shift"][o],
             "res_mult": bk["res_mult"][o]} for o in range(PO)] for bk in banks]
    step = PO // G + 1                  # residual words between pixels (one spare word)
    res_words = [0] * params.act_depth
    for n in range(n_pix):
        for w in range(PO // G):
            res_words[n * step + w] = pack(act_word(G), res[n][w * G:(w + 1) * G])
    want = []
    n = 0
    for b, nv in enumerate(nvs):
        bk = banks[b % 2]
        want += requantize(torch.tensor(accs[n:n + nv]), torch.tensor(bk["mult"]),
                           torch.tensor(bk["shift"]), residual=torch.tensor(res[n:n + nv]),
                           res_mult=torch.tensor(bk["res_mult"]), relu=True,
                           channel_dim=1).tolist()
        n += nv
    m = Module()
    m.submodules.dut = dut = Requant(params)
    m.submodules.mem = mem = Memory(shape=act_word(G), depth=params.act_depth,
                                    init=[unpack(act_word(G), v) for v in res_words])
    connect_read(m, mem.read_port(), dut.res)
    aw = acc_word(params)
    got = []

    async def producer(ctx):
        ctx.set(dut.prm.as_value(), pack(dut.prm.shape(), prm))
        ctx.set(dut.bank, 0)
        ctx.set(dut.relu, 1)
        ctx.set(dut.residual, 1)
        ctx.set(dut.res_step, step)
        n = 0
        for b, nv in enumerate(nvs):
            acc = [a for q in range(px) for a in
                   (accs[n + q] if q < nv else [rng.randrange(-2**31, 2**31)] * PO)]
            bits = pack(aw, {"acc": acc, "res_addr": n * step, "nv": nv,
                             "last": b == n_blk - 1})
            ctx.set(dut.bank, b % 2)
            await stream_put(ctx, dut.i, bits, rng=rng, gap=0.4)
            # the bank input changes once the block is taken: the unit must keep the block's own
            ctx.set(dut.bank, rng.randrange(2))
            n += nv

    async def consumer(ctx):
        for _ in range(n_pix):
            bits = await stream_get(ctx, dut.o, rng=rng, stall=0.4)
            got.append(unpack(out_word(PO), bits))
        for _ in range(10):
            await ctx.tick()
        assert not ctx.get(dut.o.valid)      # no extra output

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    assert [g["data"] for g in got] == want
    assert [g["last"] for g in got] == [0] * (n_pix - 1) + [1]


def test_px_cycles_match_model():
    """Px = 2 (G*K >= fetch) and Px = 4 dense: the RTL's cycle counter equals the model
    within 2 %, and Px = 2 takes about half the cycles of Px = 1 with the same Po."""
    gen = torch.Generator().manual_seed(6)
    jobs = [random_job(gen, cin=8, cout=8, h=6, w=8, kept=4, name="k4"),
            random_job(gen, cin=8, cout=8, h=7, w=7, kept=4, stride=2, name="s2")]
    dense = [random_job(gen, cin=4, cout=4, h=4, w=7, kept=9, name="dense")]
    single = EngineParams(pes=8, lanes=4, max_cin=16, max_cout=24, max_hw=8,
                          act_depth=1024, wt_depth=2048, prm_depth=64)
    cycles = {}
    for params, js in ((PX2, jobs), (PX4, dense), (single, jobs[:1]),
                       (dataclasses.replace(PX2, operand_reg=True), jobs)):
        for job, res in zip(js, _check_layers(params, js)):
            pred = layer_cycles(job.shape, params)
            assert abs(res["cycles"] - pred) <= 0.02 * pred, (params.px, job.name,
                                                               res["cycles"], pred)
            cycles[params.px, params.operand_reg, job.name] = res["cycles"]
    assert 1.9 <= cycles[1, False, "k4"] / cycles[2, False, "k4"] <= 2.0
    # the operand registers' stage costs a cycle per layer end (and none per MAC)
    for name in ("k4", "s2"):
        assert 1 <= cycles[2, True, name] - cycles[2, False, name] <= 3


def _stage_cycles(seed: int, engines, flag: str) -> dict:
    """Three layers (MAC-bound 3x3, stride 2 dense, 1x1) from ``seed`` on each engine, checked
    bit-exact and against the cycle model (within 2 %); the RTL's cycles keyed by
    ``(px, getattr(params, flag), layer name)``."""
    gen = torch.Generator().manual_seed(seed)
    jobs = [random_job(gen, cin=12, cout=8, h=6, w=8, kept=4, name="k4"),
            random_job(gen, cin=4, cout=8, h=7, w=8, kept=9, stride=2, name="s2"),
            random_job(gen, cin=4, cout=8, h=8, w=8, k=1, kept=1, pad=0, name="1x1")]
    cycles = {}
    for params in engines:
        for job, res in zip(jobs, _check_layers(params, jobs)):
            pred = layer_cycles(job.shape, params)
            assert abs(res["cycles"] - pred) <= 0.02 * pred, (params, job.name,
                                                               res["cycles"], pred)
            cycles[params.px, getattr(params, flag), job.name] = res["cycles"]
    return cycles


def test_chain_cycles_match_model():
    """Pixel groups in a chain (Px = 4 and 8): the RTL's cycle counter equals the model within
    2 %, and the chain costs the last group's Px - 1 cycles per layer end (a MAC-bound layer)
    and per block on a layer bound by the shadow register's hand-over (1x1, 4 channels)."""
    px8_flat = dataclasses.replace(PX8, chain=False)
    cycles = _stage_cycles(12, (PX4R, PX4CR, PX8, px8_flat), "chain")
    for px in (4, 8):
        assert cycles[px, True, "k4"] - cycles[px, False, "k4"] == px - 1
    # 1x1, 8 x 8 outputs, 2 output-channel groups: 32 blocks at Px = 4, 16 at Px = 8
    for px in (4, 8):
        assert cycles[px, True, "1x1"] - cycles[px, False, "1x1"] >= (px - 1) * 128 // px


def test_dist_reg_cycles_match_model():
    """The distribution register (S1D and S1E, Px = 4 and 8, with the operand registers): the
    RTL's cycle counter equals the model within 2 %, and the two stages cost exactly two
    cycles per layer end on a MAC-bound layer."""
    px8 = dataclasses.replace(PX8, chain=False)
    cycles = _stage_cycles(21, (PX4R, PX4DR, px8, dataclasses.replace(px8, dist_reg=True)),
                           "dist_reg")
    for px in (4, 8):
        assert cycles[px, True, "k4"] - cycles[px, False, "k4"] == 2


def test_requant_queue_keeps_up():
    """A block of 8 pixels with 2 lane groups each (Po = 4, L = 2), on a layer bound by the
    shadow register's hand-over: the output queue has a slot for every pixel in flight, so
    the RTL takes the cycles of the model (a slot short costs a cycle per block)."""
    params = EngineParams(pes=32, px=8, lanes=4, rq_lanes=2, max_cin=16, max_cout=24,
                          max_hw=8, act_depth=1024, wt_depth=2048, prm_depth=64)
    gen = torch.Generator().manual_seed(13)
    jobs = [random_job(gen, cin=4, cout=4, h=8, w=8, k=1, kept=1, pad=0, name=f"h{h}")
            for h in (4, 8)]
    res = _check_layers(params, jobs)
    assert res[1]["cycles"] - res[0]["cycles"] == (layer_cycles(jobs[1].shape, params)
                                                   - layer_cycles(jobs[0].shape, params))
    for job, r in zip(jobs, res):
        assert abs(r["cycles"] - layer_cycles(job.shape, params)) <= 2, (job.name, r["cycles"])


def test_column_reuse_cycles():
    """One channel word, 3x3 (column reuse), fetch-bound layers at Px = 2 (9 MACs per window
    against 12 reads, 6 for a row's later blocks, at stride 1; 15 and 12 at stride 2; a row's
    first block skips its padding column with pad = 1, not with pad = 0):
    bit-exact, and each output row costs the cycles the model's
    window-by-window timing predicts (two heights: their difference), fewer than its blocks
    cost with every column read."""
    gen = torch.Generator().manual_seed(9)
    rows_cost = {}
    for params, cin, kept, stride, hs, pad, w in ((PX2, 1, 9, 1, (5, 7), 1, 8),
                                                  (PX2, 1, 9, 2, (4, 8), 1, 8),
                                                  (PX2, 1, 9, 1, (5, 7), 0, 8),
                                                  (PX2, 1, 9, 1, (5, 7), 1, 6)):
        jobs = [random_job(gen, cin=cin, cout=8, h=h, w=w, kept=kept, stride=stride, pad=pad,
                           name=f"h{h}") for h in hs]
        assert all(reuses_columns(j.shape, params) for j in jobs)
        assert not reuses_columns(jobs[0].shape, SMALL)
        res = _check_layers(params, jobs)
        # more output rows, in every output-channel group
        rows = (jobs[1].shape.out_hw[0] - jobs[0].shape.out_hw[0]) * -(-8 // params.po)
        got = res[1]["cycles"] - res[0]["cycles"]
        pred = layer_cycles(jobs[1].shape, params) - layer_cycles(jobs[0].shape, params)
        assert got == pred, (params.px, stride, got, pred)
        wo = jobs[0].shape.out_hw[1]
        assert got < rows * (wo // params.px) * block_cycles(jobs[0].shape, params, params.px)
        rows_cost[stride, pad, wo] = got / rows
    # the padding skip: a row's first block reads 3 positions fewer (12 -> 9 at stride 1,
    # as many as its 9 MACs), so a row of 6 outputs costs less with pad = 1 than with pad = 0
    assert rows_cost[1, 1, 6] < rows_cost[1, 0, 6], rows_cost
