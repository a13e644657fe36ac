# SPDX-License-Identifier: Apache-2.0
"""Golden model: sparse convolution == F.conv2d on dense-expanded weights (exact integers),
fast path == int64 path, whole network == an independent layer-by-layer reference, CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kep_common.errors import KepError
from kep_train.export.kepfile import KepLayer, save_kep
from kep_train.golden.evaluate import (conv_acc_exact_dtype, conv_layer, main, quantize_input,
                                       run_network, top1)
from kep_train.golden.intarith import requantize, wrap_int32
from kep_train.golden.sparseconv import expand_dense, sparse_conv2d, sparse_conv2d_acc
from kep_train.models import VGG, CifarResNet
from kep_train.testing import random_kep, reference_network


@st.composite
def conv_case(draw, max_c=6, max_hw=9):
    k = draw(st.sampled_from([1, 3]))
    kk = k * k
    big_k = draw(st.integers(1, kk))
    stride = draw(st.sampled_from([1, 2]))
    padding = draw(st.sampled_from([0, 1] if k == 3 else [0]))
    cin, cout = draw(st.integers(1, max_c)), draw(st.integers(1, max_c))
    h = draw(st.integers(max(1, k - 2 * padding), max_hw))
    w = draw(st.integers(max(1, k - 2 * padding), max_hw))
    n = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (n, cin, h, w), generator=g, dtype=torch.int8)
    values = torch.randint(-128, 128, (cout, cin, big_k), generator=g, dtype=torch.int8)
    # K distinct positions per plane, ascending
    index = torch.rand(cout, cin, kk, generator=g).argsort(dim=2)[..., :big_k].sort(dim=2).values
    bias = torch.randint(-2**20, 2**20, (cout,), generator=g, dtype=torch.int32)
    mult = torch.randint(0, 2**16, (cout,), generator=g, dtype=torch.int32)
    shift = torch.randint(1, 48, (cout,), generator=g, dtype=torch.int32)
    res_mult = torch.randint(0, 2**24, (cout,), generator=g, dtype=torch.int32)
    return dict(x=x, values=values, index=index.to(torch.uint8), bias=bias, mult=mult,
                shift=shift, res_mult=res_mult, k=k, stride=stride, padding=padding,
                relu=draw(st.booleans()), residual=draw(st.booleans()), g=g)


def _dense_reference(c):
    """F.conv2d in float64 on the dense-expanded weight: exact for these integer sizes."""
    wd = expand_dense(c["values"], c["index"], c["k"]).to(torch.float64)
    acc = F.conv2d(c["x"].to(torch.float64), wd, stride=c["stride"], padding=c["padding"])
    return wrap_int32(acc.to(torch.int64) + c["bias"].to(torch.int64).view(1, -1, 1, 1))


@settings(max_examples=120, deadline=None)
@given(conv_case())
def test_sparse_conv_equals_dense_conv2d(c):
    acc = sparse_conv2d_acc(c["x"], c["values"], c["index"], c["bias"], kernel_size=c["k"],
                            stride=c["stride"], padding=c["padding"])
    ref = _dense_reference(c)
    assert acc.dtype == torch.int64 and acc.shape == ref.shape
    assert torch.equal(acc, ref)
    y = sparse_conv2d(c["x"], c["values"], c["index"], c["bias"], c["mult"], c["shift"],
                      kernel_size=c["k"], stride=c["stride"], padding=c["padding"],
                      relu=c["relu"])
    assert torch.equal(y, requantize(ref, c["mult"], c["shift"], relu=c["relu"]))


def _layer(c, residual_name=None):
    cout, cin, big_k = c["values"].shape
    n, _, h, w = c["x"].shape
    k, s, p = c["k"], c["stride"], c["padding"]
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    return KepLayer(name="L", op="conv", input="input", in_shape=(cin, h, w),
                    out_shape=(cout, ho, wo), kernel_size=k, stride=s, padding=p,
                    relu=c["relu"], residual=residual_name, sparse=True, values=c["values"],
                    index=c["index"], bias=c["bias"], mult=c["mult"], shift=c["shift"],
                    res_mult=c["res_mult"] if residual_name else torch.zeros_like(c["mult"]),
                    w_scale=torch.ones(cout))


@settings(max_examples=120, deadline=None)
@given(conv_case(), st.booleans())
def test_fast_path_equals_int64_path(c, huge_bias):
    """The float32/float64 golden path equals sparse_conv2d (int64) bit for bit, with and
    without residual, and on the wrap-around path (huge bias)."""
    if huge_bias:  # accumulators near 2**31: exercises wrap_int32 on the reference path
        c["bias"] = torch.randint(2**31 - 2**16, 2**31 - 1, c["bias"].shape, generator=c["g"],
                                  dtype=torch.int64).to(torch.int32)
    layer = _layer(c, "R" if c["residual"] else None)
    n = c["x"].shape[0]
    res = (torch.randint(-128, 128, (n, *layer.out_shape), generator=c["g"], dtype=torch.int8)
           if c["residual"] else None)
    ref = sparse_conv2d(c["x"], c["values"], c["index"], c["bias"], c["mult"], c["shift"],
                        kernel_size=c["k"], stride=c["stride"], padding=c["padding"],
                        relu=c["relu"], residual=res,
                        res_mult=c["res_mult"] if res is not None else None)
    got = conv_layer(c["x"], layer, res)
    assert got.dtype == torch.int8 and torch.equal(got, ref)


def test_exact_dtype_bound():
    small = torch.full((4, 64, 9), -128, dtype=torch.int8)        # 64*9*128*128 < 2**24
    big = torch.full((1, 120, 9), -128, dtype=torch.int8)         # 120*9*128*128 > 2**24
    assert conv_acc_exact_dtype(small) == torch.float32
    assert conv_acc_exact_dtype(big) == torch.float64
    # the worst case of the float64 layer is still exact
    c = dict(x=torch.full((1, 120, 3, 3), -128, dtype=torch.int8), values=big,
             index=torch.arange(9, dtype=torch.uint8).expand(1, 120, 9).contiguous(),
             bias=torch.tensor([7], dtype=torch.int32), mult=torch.tensor([1], dtype=torch.int32),
             shift=torch.tensor([1], dtype=torch.int32), res_mult=torch.zeros(1, dtype=torch.int32),
             k=3, stride=1, padding=0, relu=False)
    got = conv_layer(c["x"], _layer(c))
    acc = 120 * 9 * 128 * 128 + 7
    assert acc > 2**24
    assert int(got) == 127 and int(sparse_conv2d_acc(
        c["x"], big, c["index"], c["bias"], kernel_size=3, padding=0)) == acc


@pytest.mark.parametrize("make,shape", [
    (lambda: CifarResNet(8), (3, 8, 8)),
    (lambda: VGG([4, "M", 8, "M", 8]), (3, 8, 8)),
])
def test_run_network_equals_reference(make, shape):
    kep = random_kep(make(), K=4, seed=3, n_calib=4, input_shape=shape)
    x = torch.randint(-128, 128, (3, *shape), generator=torch.Generator().manual_seed(0),
                      dtype=torch.int8)
    logits, acts = run_network(kep, x, return_all=True)
    ref = reference_network(kep, x)
    assert set(acts) == set(ref)
    for name, r in ref.items():
        assert acts[name].dtype == r.dtype and torch.equal(acts[name], r), name
    assert logits.dtype == torch.int32 and torch.equal(logits, ref[kep.layers[-1].name])
    # a network that is not all zeros: the test can fail on a wrong layer
    assert any(bool((acts[ly.name] != 0).any()) for ly in kep.conv_layers[-2:])


def test_int8_network_tracks_float_model():
    torch.manual_seed(0)
    model = CifarResNet(8)
    kep = random_kep(model, K=4, seed=4, n_calib=32, input_shape=(3, 8, 8))
    x = torch.randint(-128, 128, (16, 3, 8, 8), generator=torch.Generator().manual_seed(1),
                      dtype=torch.int8)
    with torch.no_grad():
        ref = model(x.float() * kep.input_scale).double()
    got = run_network(kep, x).double() * kep.layers[-1].out_scale
    err = (got - ref).norm() / ref.norm()
    assert err < 0.15


def test_quantize_input():
    kep = random_kep(CifarResNet(8), K=4, seed=0, n_calib=2, input_shape=(3, 8, 8))
    img = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 8, 8)
    q = quantize_input(kep, img.contiguous())
    m, s = torch.tensor(kep.meta["mean"]), torch.tensor(kep.meta["std"])
    expect = torch.round((torch.tensor([0, 128, 255]) / 255.0 - m) / s / kep.input_scale)
    assert q.dtype == torch.int8 and torch.equal(q[0, :, 0, 0], expect.to(torch.int8))
    assert int(q.abs().max()) <= 127
    with pytest.raises(KepError, match="uint8"):
        quantize_input(kep, img.float())
    with pytest.raises(KepError, match="expects"):
        run_network(kep, torch.zeros(1, 3, 4, 4, dtype=torch.int8))


def test_top1_ties_lowest_index():
    assert top1(torch.tensor([[3, 5, 5], [9, 9, 1]], dtype=torch.int32)).tolist() == [1, 0]


def test_golden_cli(tiny_cifar, tmp_path, capsys):
    from kep_common.fileio import atomic_torch_save
    from kep_train.data.cifar import read_cifar10_split
    from kep_train.golden.evaluate import evaluate_int8
    from kep_train.models import build_model
    torch.manual_seed(0)
    model = build_model("resnet20")
    kep = random_kep(model, K=4, seed=5, n_calib=4)
    kep_path, out = tmp_path / "m.kep", tmp_path / "report.json"
    save_kep(kep_path, kep)
    assert main(["--model", str(kep_path), "--data-dir", str(tiny_cifar), "--out", str(out),
                 "--batch-size", "7"]) == 0
    rep = json.loads(out.read_text())
    split = read_cifar10_split(tiny_cifar, train=False)     # the command's sorted order
    images, labels = split.images, split.labels
    pred = evaluate_int8(kep, images, 30)
    correct = int((pred == labels).sum())
    assert rep["images"] == 30 and rep["int8_correct"] == correct
    assert rep["int8_top1"] == round(100 * correct / 30, 4)
    assert "python" in rep["environment"] and "float_top1" not in rep
    assert "int8 golden top-1" in capsys.readouterr().out
    # with the float checkpoint: its top-1 on the same images, and the agreement
    ckpt = {"format": "kep-checkpoint", "version": 1, "model_name": "resnet20",
            "num_classes": 10, "model": model.state_dict()}
    atomic_torch_save(ckpt, tmp_path / "c.pt")
    assert main(["--model", str(kep_path), "--data-dir", str(tiny_cifar), "--checkpoint",
                 str(tmp_path / "c.pt"), "--n", "20", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    m, sd = torch.tensor(kep.meta["mean"]).view(1, -1, 1, 1), torch.tensor(kep.meta["std"])
    with torch.no_grad():
        fpred = model.eval()((images[:20].float() / 255 - m) / sd.view(1, -1, 1, 1)).argmax(1)
    assert rep["images"] == 20
    fcorrect, same = int((fpred == labels[:20]).sum()), int((fpred == pred[:20]).sum())
    assert rep["float_correct"] == fcorrect and rep["same_prediction"] == same
    assert rep["float_top1"] == round(100 * fcorrect / 20, 4)
    assert rep["agreement"] == round(100 * same / 20, 4)
    assert [r["float_prediction"] for r in rep["per_image"]] == fpred.tolist()
    assert "float pruned top-1" in capsys.readouterr().out
    for bad in (["--data-dir", str(tmp_path / "nope")], ["--data-dir", str(tiny_cifar), "--n", "0"],
                ["--data-dir", str(tiny_cifar), "--checkpoint", str(tmp_path / "none.pt")]):
        with pytest.raises(SystemExit) as e:
            main(["--model", str(kep_path)] + bad)
        assert e.value.code == 2
        assert capsys.readouterr().err.startswith("error: ")
