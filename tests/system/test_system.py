# SPDX-License-Identifier: Apache-2.0
"""Network plan (buffers, packed words) and the whole system top level in Verilator: bit-exact
inference in embedded and streamed mode, and rejection of corrupted, truncated and unknown
frames by the gateware."""

from __future__ import annotations

import time

import pytest
import torch

from kep_hw.host.link import BoardLink
from kep_hw.testing import random_network, reference_activations, reference_logits
from kep_hw.system.plan import (pack_param_words, pack_weight_words, plan_network,
                             tensor_to_words, words_to_tensor)
from kep_hw.gateware.layouts import ParamWord, pack, weight_word
from kep_hw.system.protocol import BoardTimeout, ErrorCode, FrameReader, FrameType, encode_frame
from kep_hw.board.pll import ecp5_pll_params
from kep_common.errors import KepError


def test_plan_buffers_follow_liveness():
    plan = plan_network(random_network(0), po=8, lanes=4)
    by = {lp.name: lp for lp in plan.layers}
    assert len(plan.buffer_words) == 3
    # conv2 of block 1 reads conv1's buffer and the residual conv0, writes a third one
    b = by["b1.conv2"]
    assert len({b.src, b.res, b.dst}) == 3
    assert by["b1.conv1"].dst == b.src and by["conv0"].dst == b.res
    assert plan.output_buffer == by["b2.conv2"].dst
    for lp in plan.layers:
        assert lp.dst not in (lp.src, lp.res)


def test_words_match_engine_layouts():
    kep = random_network(3)
    layer = kep.layer("b1.conv1")
    values, index = layer.planes()
    words = pack_weight_words(values, index, 8)
    cout, cin, k = values.shape
    # word (g*Cin + i)*K + j, lane p = channel g*P + p
    i, j, p = 2, 1, 5
    expect = pack(weight_word(8), [{"value": int(values[q, i, j]), "index": int(index[q, i, j])}
                                   for q in range(8)])
    assert words[i * k + j] == expect
    assert (words[i * k + j] >> (12 * p)) & 0xFF == int(values[p, i, j]) & 0xFF
    prm = pack_param_words(layer, 8)
    assert prm[3] == pack(ParamWord, {"bias": int(layer.bias[3]), "mult": int(layer.mult[3]),
                                      "shift": int(layer.shift[3]),
                                      "res_mult": int(layer.res_mult[3])})


def test_activation_words_round_trip():
    x = torch.randint(-128, 128, (6, 3, 5), dtype=torch.int8)
    w = tensor_to_words(x, 4)
    assert len(w) == 3 * 5 * 2
    assert w[0] & 0xFF == int(x[0, 0, 0]) & 0xFF and (w[1] >> 8) & 0xFF == int(x[5, 0, 0]) & 0xFF
    assert torch.equal(words_to_tensor(w, (6, 3, 5), 4), x)


def test_plan_rejects_unsupported():
    kep = random_network(0)
    kep.layers.insert(1, kep.layers[-2])          # avgpool between conv layers
    with pytest.raises(KepError, match="not supported"):
        plan_network(kep, po=8, lanes=4)
    with pytest.raises(KepError, match="multiple"):
        plan_network(random_network(0), po=6, lanes=4)


def test_pll_settings():
    p = ecp5_pll_params(25.0, 50.0)
    assert abs(p["fout"] - 50.0) < 1e-9 and 400 <= p["fvco"] <= 800
    assert p["fout"] == 25.0 * p["fbdiv"] / p["refdiv"]
    with pytest.raises(ValueError):
        ecp5_pll_params(25.0, 1000.0)


def _images(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(-128, 128, (3, size, size), generator=g).to(torch.int8)
            for _ in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("streamed", [False, True])
def test_system_rtl_bit_exact_and_rejects_bad_frames(streamed, tmp_path_factory):
    from kep_hw.bench.system_sim import SimBoard
    kep = random_network(1)
    plan = plan_network(kep, po=8, lanes=4)
    # the network covers one and two output-channel groups (Cout = P and Cout = 2P), a
    # stride-2 3x3 layer, a 1x1 shortcut and residual adds into a two-group layer
    groups = {lp.name: lp.cfg["groups"] for lp in plan.layers}
    assert groups["b1.conv2"] == 1 and groups["b2.conv1"] == 2 and groups["b2.conv2"] == 2
    root = tmp_path_factory.getbasetemp().parent / "kep-system-sim"
    with SimBoard(plan, streamed=streamed, build_root=root) as port:
        link = BoardLink(port, plan, timeout=120)
        info = link.connect()
        assert info["streamed"] == streamed and info["po"] == 8
        assert info["classes"] == plan.classes == 10
        cycles = set()
        for n, x in enumerate(_images(3, 8, 5)):
            # the first image also returns the last conv output (IMAGE_FMAP)
            logits, out, cyc = link.infer(x, fmap=n == 0)
            assert torch.equal(logits, reference_logits(kep, x))
            if n == 0:
                assert torch.equal(out, reference_activations(kep, x)["b2.conv2"])
            else:
                assert out is None
            cycles.add(cyc)
        # the head's cycles are counted, the same for every image
        assert len(cycles) == 1 and 5000 < cycles.pop() < 15000
        # overlapped: image k + 2 is sent when the RESULT of k arrives, so the board
        # receives images while it computes (double input buffer), embedded mode only
        xs = _images(5, 8, 6)
        assert link.can_overlap() == (not streamed)
        got = list(link.infer_many(xs))
        assert [lg.tolist() for lg, _, _ in got] == [reference_logits(kep, x).tolist()
                                                    for x in xs]
        reader = FrameReader(port.read, timeout=60, byte_timeout=5)
        # corrupted CRC
        bad = bytearray(encode_frame(FrameType.PING))
        bad[-1] ^= 0xFF
        port.write(bytes(bad))
        ftype, payload = reader.read_frame()
        assert (ftype, payload[0], payload[1]) == (FrameType.ERROR, ErrorCode.CRC,
                                                   FrameType.PING)
        # unknown type
        port.write(encode_frame(0x55, b"abc"))
        ftype, payload = reader.read_frame()
        assert (ftype, payload[0]) == (FrameType.ERROR, ErrorCode.TYPE)
        # wrong image length
        port.write(encode_frame(FrameType.IMAGE, b"\x00" * 5))
        ftype, payload = reader.read_frame()
        assert (ftype, payload[0]) == (FrameType.ERROR, ErrorCode.LENGTH)
        # truncated frame: the board drops it after its inter-byte timeout
        port.write(encode_frame(FrameType.IMAGE, b"\x00" * plan.image_bytes)[:40])
        ftype, payload = reader.read_frame()
        assert (ftype, payload[0]) == (FrameType.ERROR, ErrorCode.TIMEOUT)
        # and the board still works
        x = _images(1, 8, 9)[0]
        logits, _, _ = link.infer(x)
        assert torch.equal(logits, reference_logits(kep, x))
        # a silent board: nothing is sent, the host times out quickly
        quiet = FrameReader(port.read, timeout=0.5)
        t = time.monotonic()
        with pytest.raises(BoardTimeout):
            quiet.read_frame()
        assert time.monotonic() - t < 5


@pytest.mark.slow
def test_system_rtl_maxpool_and_head(tmp_path_factory):
    """A network with a max pooling layer between conv layers (read by a conv and a residual
    add), streamed weights (no NEED for the pooling layer): logits and, with IMAGE_FMAP, the
    last conv output equal to the golden model's."""
    from kep_hw.bench.system_sim import SimBoard
    from kep_train.golden.evaluate import run_network
    kep = random_network(4, maxpool=True)
    plan = plan_network(kep, po=8, lanes=4)
    assert [lp.kind for lp in plan.layers].count("maxpool") == 1
    root = tmp_path_factory.getbasetemp().parent / "kep-system-sim-pool"
    with SimBoard(plan, streamed=True, build_root=root) as port:
        link = BoardLink(port, plan, timeout=120)
        assert link.connect()["classes"] == 10
        for n, x in enumerate(_images(2, 8, 11)):
            logits, out, _ = link.infer(x, fmap=n == 1)
            assert torch.equal(logits, run_network(kep, x[None])[0].to(torch.int64))
            if n == 1:
                assert torch.equal(out, reference_activations(kep, x)["b2.conv2"])
