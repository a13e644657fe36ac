# SPDX-License-Identifier: Apache-2.0
"""What the accelerator can run (kep_train.export.hardware): one line per layer it cannot run,
naming the layer and the reason; the exporter's warnings and ``export --strict-hw``."""

from __future__ import annotations

import sys
import uuid
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kep_common.errors import KepError
from kep_common.fileio import atomic_torch_save
from kep_train.export.hardware import (RULES, conv_problems, hardware_problems,
                                       maxpool_problems, module_problems)
from kep_train.export.kepfile import load_kep
from kep_train.export.quantize import extract_graph, quantize_model
from kep_train.models import VGG, CifarResNet

META = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "model_name": "test"}


def _calib(n=4, hw=16):
    return torch.randn(n, 3, hw, hw, generator=torch.Generator().manual_seed(0))


class Net(nn.Module):
    """conv3x3-bn-relu, max pooling, a conv of the given settings, then the head."""

    def __init__(self, k=3, stride=1, padding=1, groups=1, pool=(2, 2, 0)):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.MaxPool2d(pool[0], pool[1], pool[2]),
            nn.Conv2d(8, 8, k, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(8),
            nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _kep(model):
    return quantize_model(model.eval(), masks={}, calib=_calib(), meta=META)


def test_models_the_accelerator_runs_have_no_problem():
    assert hardware_problems(_kep(CifarResNet(8))) == []
    assert hardware_problems(_kep(VGG([8, "M", 16, "M"]))) == []
    assert hardware_problems(_kep(Net())) == []
    assert hardware_problems(Net()) == [] and hardware_problems(CifarResNet(8)) == []


@pytest.mark.parametrize("settings, reason", [
    (dict(k=5, padding=2), "kernel 5x5 (the accelerator runs 1x1 and 3x3); padding 2 (the "
                           "accelerator runs padding 0 and 1)"),
    (dict(stride=3), "stride 3 (the accelerator runs stride 1 and 2)"),
    (dict(k=1, padding=0, stride=4), "stride 4 (the accelerator runs stride 1 and 2)"),
], ids=["5x5", "stride-3", "1x1-stride-4"])
def test_a_layer_outside_the_rules_is_named_with_its_reason(settings, reason):
    problems = hardware_problems(_kep(Net(**settings)))
    assert problems == [f"layer 'features.4': {reason}"]
    # the float model gives the same line (module_problems: before any export)
    assert hardware_problems(Net(**settings)) == problems


def test_grouped_conv_is_named_before_export_and_by_the_exporter():
    model = Net(groups=2)
    assert hardware_problems(model) == [
        "layer 'features.4': groups 2 (the accelerator runs groups 1 only)"]
    assert module_problems(model) == hardware_problems(model)
    # the .kep format has no groups: the exporter refuses it, naming the layer and its type
    with pytest.raises(KepError, match=r"^cannot export layer 'features.4' \(Conv2d\): "
                                       r"grouped convolution \(groups 2\)"):
        extract_graph(model.eval())


def test_max_pooling_rules():
    assert maxpool_problems(2, 2, 0) == []
    problems = hardware_problems(_kep(Net(pool=(3, 2, 1))))
    assert problems == ["layer 'features.3': max pooling 3x3 stride 2 padding 1 (the "
                        "accelerator runs 2x2 only, stride 2 only, padding 0 only)"]


def test_conv_rules_as_data():
    assert RULES["conv"]["kernel_size"] == (1, 3) and RULES["maxpool"]["kernel_size"] == (2,)
    assert conv_problems(3, 1, 1, K=9) == [] and conv_problems(1, 2, 0, K=1) == []
    assert conv_problems(3, 1, 1, K=10) == [
        "K 10 kept elements per plane (the accelerator runs 1 <= K <= k*k = 9)"]
    assert conv_problems((1, 3), 1, "same", dilation=2) == [
        "kernel 1x3 (the accelerator runs 1x1 and 3x3)",
        "padding 'same' (the accelerator runs padding 0 and 1)",
        "dilation 2 (the accelerator runs dilation 1 only)"]


def _layer(name, op, input="input", residual=None, **kw):
    base = dict(kernel_size=3, stride=1, padding=1, K=9) if op == "conv" else \
        dict(kernel_size=2, stride=2, padding=0)
    return SimpleNamespace(name=name, op=op, input=input, residual=residual, **{**base, **kw})


def test_network_shape_rules():
    conv = _layer("c1", "conv")
    head = [_layer("pool", "avgpool", "c1"), _layer("fc", "linear", "pool")]
    ok = SimpleNamespace(layers=[conv] + head)
    assert hardware_problems(ok) == []
    assert hardware_problems(SimpleNamespace(layers=[conv])) == []      # no head: fine
    only_pool = hardware_problems(SimpleNamespace(layers=[conv, head[0]]))
    assert only_pool == ["layer 'pool': the network ends with avgpool (the accelerator's head "
                         "is avgpool then linear, or none)"]
    # the head must read the last on-chip layer; a conv after the head does not run
    c2 = _layer("c2", "conv", "c1")
    late = hardware_problems(SimpleNamespace(layers=[conv, c2, _layer("pool", "avgpool", "c1"),
                                                     head[1], _layer("c3", "conv", "c2")]))
    assert late[0] == "layer 'pool': avgpool reads 'c1', not the last on-chip layer 'c2'"
    assert late[1].startswith("layer 'c3': conv after the head started at 'pool'")
    # a residual that does not come from an on-chip tensor
    bad_res = _layer("c2", "conv", "c1", residual="pool")
    lines = hardware_problems(SimpleNamespace(layers=[conv, head[0], bad_res]))
    assert any(ln.startswith("layer 'c2': ") and "residual 'pool' is not on chip" in ln
               for ln in lines)
    assert hardware_problems(SimpleNamespace(layers=[_layer("m", "maxpool")])) == [
        "the network has no conv layer (the accelerator runs conv layers)"]


# ------------------------------------------------------------------------------------------
# the export command: warnings after writing, --strict-hw refuses

USER_NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, k, padding, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.MaxPool2d(2, 2), nn.Conv2d(8, 8, k, 1, padding, bias=False), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def wide(num_classes=10):
    return Net(5, 2, num_classes)


def fits(num_classes=10):
    return Net(3, 1, num_classes)
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write USER_NET as a module of a fresh name into the current directory (tmp_path)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    name = f"hwnet_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_NET)
    yield name
    sys.modules.pop(name, None)


def _checkpoint(tmp_path, spec):
    from kep_train.models import build_model
    torch.manual_seed(0)
    ckpt = {"format": "kep-checkpoint", "version": 1, "model_name": spec, "num_classes": 10,
            "dataset": "cifar10", "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26],
            "model": build_model(spec).state_dict(), "masks": {}}
    path = tmp_path / f"{spec.partition(':')[2]}.pt"
    atomic_torch_save(ckpt, path)
    return path


def test_export_warns_per_problem_and_strict_hw_refuses(tiny_cifar, tmp_path, user_module,
                                                       capsys, one_line_error):
    from kep_train.export.cli import main
    out = tmp_path / "m.kep"

    def export(spec, *extra):
        return main(["--checkpoint", str(_checkpoint(tmp_path, spec)), "--model", spec,
                     "--data-dir", str(tiny_cifar), "--calib-batches", "1",
                     "--calib-batch-size", "8", "-q", "--out", str(out), *extra])

    with pytest.raises(SystemExit) as e:
        export(f"{user_module}:wide", "--strict-hw")
    line = one_line_error(e.value.code)
    assert line == ("error: --strict-hw: the accelerator cannot run this model (1 problem; "
                    "the first: layer 'features.4': kernel 5x5 (the accelerator runs 1x1 "
                    "and 3x3); padding 2 (the accelerator runs padding 0 and 1))")
    assert not out.exists()
    assert export(f"{user_module}:wide") == 0
    std = capsys.readouterr()
    assert std.err.splitlines() == [
        "warning: kep_hw accelerator: layer 'features.4': kernel 5x5 (the accelerator runs "
        "1x1 and 3x3); padding 2 (the accelerator runs padding 0 and 1)"]
    assert std.out.startswith(f"wrote {out}:")
    assert len(hardware_problems(load_kep(out))) == 1    # written all the same
    # a model the accelerator runs: no warning, and --strict-hw writes it
    out.unlink()
    assert export(f"{user_module}:fits", "--strict-hw") == 0
    assert capsys.readouterr().err == "" and hardware_problems(load_kep(out)) == []
