# SPDX-License-Identifier: Apache-2.0
"""Post-training quantization: BN folding, graph extraction, masks, calibration, export CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kep_common.errors import KepError
from kep_common.fileio import atomic_torch_save
from kep_train.export.kepfile import load_kep
from kep_train.export.quantize import (export_kep, extract_graph, float_sparse_tensors, fold_bn,
                                       input_scale, quantize_model)
from kep_train.golden.intarith import quantize_multiplier
from kep_train.golden.sparseconv import expand_dense
from kep_train.models import VGG, CifarResNet, build_model
from kep_train.testing import random_pruned_model

META = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "model_name": "test"}


def _calib(n=8, hw=8, seed=0):
    return torch.randn(n, 3, hw, hw, generator=torch.Generator().manual_seed(seed))


def test_fold_bn_matches_conv_bn():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 5, 3, padding=1, bias=True), nn.BatchNorm2d(5)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    conv.weight.data[0, 0, 1, 1] = 0.0
    bn.eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    w, b = fold_bn(conv, bn)
    ref = bn.double()(conv.double()(x))
    got = nn.functional.conv2d(x, w, b, padding=1)
    assert torch.allclose(got, ref, atol=1e-12)
    assert w[0, 0, 1, 1] == 0.0


def test_graph_of_resnet20():
    layers, _ = extract_graph(build_model("resnet20").eval())
    names = [ly.name for ly in layers]
    assert len([ly for ly in layers if ly.op == "conv"]) == 21
    assert names[-2:] == ["avgpool", "fc"]
    sc = names.index("layer2.0.shortcut.0")
    assert sc < names.index("layer2.0.conv2")        # residual computed before it is added
    by = {ly.name: ly for ly in layers}
    assert by["layer2.0.conv2"].residual == "layer2.0.shortcut.0"
    assert by["layer1.1.conv2"].residual == "layer1.0.conv2"
    assert by["layer2.0.shortcut.0"].relu is False and by["layer2.0.conv2"].relu is True
    assert by["layer1.0.conv1"].residual is None and by["layer1.0.conv1"].bn is not None


class _Sigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.Sigmoid()

    def forward(self, x):
        return self.act(self.conv(x))


class _Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, groups=2)

    def forward(self, x):
        return self.conv(x)


class _TwoUses(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


@pytest.mark.parametrize("model,match", [
    (_Sigmoid(), "^cannot export layer 'act' \\(Sigmoid\\): not supported"),
    (_Grouped(), "^cannot export layer 'conv' \\(Conv2d\\): grouped convolution \\(groups 2\\)"),
    (_TwoUses(), "^cannot export layer 'bn' \\(BatchNorm2d\\): batch norm must directly follow"),
])
def test_unsupported_graph_names_node(model, match):
    with pytest.raises(KepError, match=match):
        extract_graph(model.eval())


def test_masks_validation():
    model, masks = random_pruned_model(CifarResNet(8), K=4, seed=0)
    name = "layer1.0.conv1"
    bad = dict(masks)
    m = masks[name].clone()
    m[0, 0] = True                                        # one plane keeps 9
    bad[name] = m
    with pytest.raises(KepError, match="same number of kept elements.*4 to 9"):
        quantize_model(model, masks=bad, calib=_calib(), meta=META)
    with pytest.raises(KepError, match="not a conv layer"):
        quantize_model(model, masks={"fc": masks[name]}, calib=_calib(), meta=META)
    with torch.no_grad():
        w = dict(model.named_modules())[name].weight
        w[~masks[name]] = 0.0
        w[0, 0][~masks[name][0, 0]] = 0.5                # a pruned element that is not zero
    with pytest.raises(KepError, match="pruned elements .* not exactly 0"):
        quantize_model(model, masks=masks, calib=_calib(), meta=META)
    with pytest.raises(KepError, match="meta must contain 'mean'"):
        quantize_model(model, masks={}, calib=_calib(), meta={})


def test_sparse_layers_keep_mask_and_zero_values():
    model, masks = random_pruned_model(CifarResNet(8), K=3, seed=1)
    name = "layer1.0.conv2"
    conv = dict(model.named_modules())[name]
    kept = masks[name][2, 1].flatten().nonzero().flatten()
    with torch.no_grad():
        conv.weight[2, 1].view(-1)[kept[1]] = 1e-9       # kept, but rounds to 0
    kep = quantize_model(model, masks=masks, calib=_calib(), meta=META)
    ly = kep.layer(name)
    assert ly.sparse and ly.K == 3 and ly.values.shape == (16, 16, 3)
    assert torch.equal(ly.index[2, 1].to(torch.int64), kept)
    assert int(ly.values[2, 1, 1]) == 0
    dense = expand_dense(ly.values, ly.index, 3)
    assert bool((dense[~masks[name]] == 0).all())
    # every kept position is in the index, exactly the mask
    pos = torch.zeros(16, 16, 9, dtype=torch.bool).scatter_(2, ly.index.long(), True)
    assert torch.equal(pos.view_as(masks[name]), masks[name])
    assert not kep.layer("conv1").sparse and kep.layer("conv1").K == 9
    # int8 weights: per-channel symmetric, max |q| = 127 per output channel
    w = kep.layer("layer1.0.conv1").values.to(torch.int64).abs().flatten(1).amax(1)
    assert bool((w == 127).all())


def test_requant_params_follow_scales():
    model, masks = random_pruned_model(CifarResNet(8), K=4, seed=2)
    kep = quantize_model(model, masks=masks, calib=_calib(), meta=META)
    assert kep.input_scale == pytest.approx(input_scale(META["mean"], META["std"]))
    assert kep.input_scale == pytest.approx(2.0 / 127)
    for ly in kep.conv_layers:
        s_res = kep.layer(ly.residual).out_scale if ly.residual else None
        for o in (0, ly.out_shape[0] - 1):
            m, s, r = quantize_multiplier(ly.in_scale * float(ly.w_scale[o]) / ly.out_scale,
                                          res_real=None if s_res is None else s_res
                                          / ly.out_scale)
            assert (int(ly.mult[o]), int(ly.shift[o]), int(ly.res_mult[o])) == (m, s, r)
        assert bool((ly.res_mult > 0).any()) == (ly.residual is not None)


def test_calibration_max_rule():
    model, masks = random_pruned_model(CifarResNet(8), K=4, seed=3)
    calib = _calib(6)
    kep = quantize_model(model, masks=masks, calib=calib, meta=META, method="max")
    with torch.no_grad():
        a = model.relu(model.bn1(model.conv1(calib)))
    assert kep.layer("conv1").out_scale == pytest.approx(float(a.abs().max()) / 127, rel=1e-6)
    kp = quantize_model(model, masks=masks, calib=calib, meta=META, percentile=90.0)
    assert kp.layer("conv1").out_scale < kep.layer("conv1").out_scale
    with pytest.raises(KepError, match="unknown calibration method"):
        quantize_model(model, masks=masks, calib=calib, meta=META, method="mse")


def test_export_round_trip_and_vgg_maxpool(tmp_path):
    model, masks = random_pruned_model(VGG([8, "M", 8, "M", 16]), K=2, seed=4)
    kep = export_kep(model, tmp_path / "v.kep", masks=masks, calib=_calib(), meta=META)
    back = load_kep(tmp_path / "v.kep")
    assert [ly.op for ly in back.layers] == ["conv", "maxpool", "conv", "maxpool", "conv",
                                             "avgpool", "linear"]
    for a, b in zip(kep.layers, back.layers):
        for f in ("values", "index", "weight", "bias", "mult", "shift", "res_mult"):
            ta, tb = getattr(a, f), getattr(b, f)
            assert (ta is None and tb is None) or torch.equal(ta, tb)
    fs = float_sparse_tensors(model, masks)
    name = next(iter(masks))
    assert torch.equal(fs[name]["index"], back.layer(name).index)


def _checkpoint(tmp_path):
    torch.manual_seed(0)
    model, masks = random_pruned_model(build_model("resnet20"), K=4, seed=5)
    ckpt = {"format": "kep-checkpoint", "version": 1, "model_name": "resnet20",
            "num_classes": 10, "dataset": "cifar10", "mean": [0.49, 0.48, 0.45],
            "std": [0.25, 0.24, 0.26], "model": model.state_dict(), "masks": masks,
            "kep": {"K": 4, "penalty": 1e-4}}
    path = tmp_path / "c.pt"
    atomic_torch_save(ckpt, path)
    return path


def test_export_and_inspect_cli(tiny_cifar, tmp_path, capsys):
    from kep_train.export.cli import inspect_main, layer_table, main
    ckpt = _checkpoint(tmp_path)
    out = tmp_path / "m.kep"
    assert main(["--checkpoint", str(ckpt), "--out", str(out), "--data-dir", str(tiny_cifar),
                 "--calib-batches", "2", "--calib-batch-size", "8"]) == 0
    kep = load_kep(out)
    assert kep.meta["kep"] == {"K": 4, "penalty": 1e-4}
    assert kep.meta["calibration"]["images"] == 16 and kep.meta["checkpoint"] == str(ckpt)
    assert sum(ly.sparse for ly in kep.conv_layers) == 18
    capsys.readouterr()
    assert inspect_main([str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    tot = rep["totals"]
    # ResNet-20: 18 sparse 3x3 layers with K=4 plus dense conv1, shortcuts and fc
    sparse_nnz = sum(ly.values.numel() for ly in kep.conv_layers if ly.sparse)
    assert tot["index_bytes"] == sparse_nnz // 2
    assert tot["values_bytes"] == 432 + sparse_nnz + 512 + 2048 + 640
    assert tot["dense_bytes"] == 270896
    rows = {r["name"]: r for r in rep["layers"]}
    r = rows["layer3.2.conv2"]
    assert (r["nnz"], r["values_bytes"], r["index_bytes"], r["csr_bytes"]) == (
        16384, 16384, 8192, 16384 * 3 + 65 * 4)
    assert r["index_vs_values"] == 0.5 and rows["conv1"]["index_bytes"] == 0
    assert layer_table(kep)[1] == tot
    assert inspect_main([str(out)]) == 0
    table = capsys.readouterr().out
    assert "layer3.2.conv2" in table and "CSR" in table and "total" in table


def test_export_cli_errors(tmp_path, capsys):
    from kep_train.export.cli import main
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "m.kep")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
    ckpt = _checkpoint(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "m.kep")])
    assert e.value.code == 2 and "--data-dir is required" in capsys.readouterr().err
    assert not (tmp_path / "m.kep").exists()
