# SPDX-License-Identifier: Apache-2.0
"""``cifar --model package.module:callable``: the user's own model through the pipeline,
resume, export, inspect and golden; one error line for every way it can fail; and no import
on a checkpoint's word."""

from __future__ import annotations

import json
import sys
import uuid

import pytest
import torch

from kep_common.errors import KepError
from kep_common.fileio import atomic_torch_save
from kep_train.export.kepfile import load_kep
from kep_train.train.checkpoint import load_checkpoint, model_from_checkpoint

TINY = ["--batch-size", "16", "--dense-epochs", "1", "--reg-epochs", "1",
        "--finetune-epochs", "1", "--subset", "48", "--test-subset", "20", "--no-progress",
        "--seed", "3", "--threads", "1", "--calib-batches", "1", "-q"]

#: the user's code: every factory writes its module's name into MARKER when imported
SOURCE = """
import os

import torch
from torch import nn

with open(os.environ["KEP_TEST_MARKER"], "a") as f:
    f.write(__name__ + "\\n")


class Net(nn.Module):
    def __init__(self, num_classes=10, k=3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(8, 8, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, k, 1, k // 2, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = torch.relu(self.bn2(self.conv2(x)) + x)
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


def build(num_classes):
    return Net(num_classes, k=5)         # one 5x5 conv: the accelerator runs 1x1 and 3x3


def no_classes():                        # called as no_classes(): the classifier has 10
    return Net()


NOT_CALLABLE = 3


def raises(num_classes=10):
    raise ValueError("width 7 is odd\\nsecond line")


def returns_list(num_classes=10):
    return [Net(num_classes)]


def wrong_classes(num_classes=10):
    return Net(num_classes + 1)


def wrong_input(num_classes=10):
    return nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten())


def takes_kwargs(**kw):
    return Net(**kw)
"""


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """A module of the user's code, of a fresh name, in the current directory (tmp_path);
    returns ``(name, marker)``: ``marker`` lists the modules imported so far."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    marker = tmp_path / "imported.txt"
    monkeypatch.setenv("KEP_TEST_MARKER", str(marker))
    name = f"usernet_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(SOURCE)
    yield name, marker
    for mod in [m for m in sys.modules if m.startswith(("usernet_", "broken_"))]:
        sys.modules.pop(mod, None)


def _imports(marker) -> list[str]:
    return marker.read_text().split() if marker.exists() else []


def test_user_model_trains_resumes_and_exports(run_cli, tiny_cifar, tmp_path, user_code,
                                               capsys, one_line_error):
    name, marker = user_code
    spec = f"{name}:build"
    out = tmp_path / "run"
    common = ["cifar", "--data-dir", str(tiny_cifar), "--out", str(out)] + TINY
    # killed after the dense epoch ...
    assert run_cli(common + ["--model", spec, "--halt-after", "1"]) == 3
    capsys.readouterr()
    assert load_checkpoint(out / "checkpoint.pt")["model_name"] == spec
    # ... a resume without --model refuses, one line, before importing anything
    sys.modules.pop(name)
    marker.unlink()
    line = one_line_error(run_cli(common + ["--resume"]))
    assert f"was made with the user model {spec!r}: give --model {spec} again" in line
    assert _imports(marker) == [] and name not in sys.modules
    line = one_line_error(run_cli(common + ["--resume", "--model", "resnet20"]))
    assert f"give --model {spec} again (not 'resnet20')" in line
    # ... and with it, the run finishes
    assert run_cli(common + ["--resume", "--model", spec]) == 0
    std = capsys.readouterr()
    rep = json.loads((out / "report.json").read_text())
    assert rep["model"] == spec and [h["stage"] for h in rep["history"]] == [
        "dense", "reg", "finetune"]
    assert set(rep["kep"]["keep"]) == {"conv2", "conv3"}        # pruned: the inner convs
    # the hardware problem: one warning line after writing model.kep, and in report.json
    warn = ("layer 'conv3': kernel 5x5 (the accelerator runs 1x1 and 3x3); padding 2 (the "
            "accelerator runs padding 0 and 1)")
    assert [ln for ln in std.err.splitlines() if ln.startswith("warning:")] == [
        f"warning: kep_hw accelerator: {warn}"]
    assert rep["export"]["hardware_problems"] == [warn]
    kep = load_kep(out / "model.kep")
    assert kep.meta["model_name"] == spec
    assert [ly.name for ly in kep.layers if ly.sparse] == ["conv2", "conv3"]
    assert kep.layer("conv2").residual == "pool"

    # export from the checkpoint: --model needed, and must be the same
    ckpt, kep_out = out / "checkpoint.pt", tmp_path / "again.kep"
    export = ["export", "--checkpoint", str(ckpt), "--out", str(kep_out), "--data-dir",
              str(tiny_cifar), "--calib-batches", "1", "--calib-batch-size", "16", "-q"]
    sys.modules.pop(name)
    marker.unlink()
    line = one_line_error(run_cli(export))
    assert line == (f"error: checkpoint {str(ckpt)!r} was made with the user model {spec!r}: "
                    f"give --model {spec} again to rebuild it (a checkpoint never imports "
                    "code by itself)")
    assert _imports(marker) == [] and name not in sys.modules and not kep_out.exists()
    line = one_line_error(run_cli(export + ["--model", f"{name}:no_classes"]))
    assert f"give --model {spec} again (not '{name}:no_classes')" in line
    assert run_cli(export + ["--model", spec]) == 0
    assert _imports(marker) == [name]
    assert load_kep(kep_out).meta["model_name"] == spec
    std = capsys.readouterr()
    assert std.err.splitlines() == [f"warning: kep_hw accelerator: {warn}"]

    # inspect reads the file, no import
    assert run_cli(["inspect", str(kep_out)]) == 0
    assert f"model {spec} (cifar)" in capsys.readouterr().out

    # golden: an explicit --checkpoint needs --float-model; the one named in the .kep is
    # skipped with a warning
    golden = ["golden", "--model", str(kep_out), "--data-dir", str(tiny_cifar), "-q"]
    line = one_line_error(run_cli(golden + ["--checkpoint", str(ckpt)]))
    assert f"give --float-model {spec} again" in line
    assert run_cli(golden) == 0
    std = capsys.readouterr()
    assert "float pruned top-1" not in std.out
    assert std.err.strip().startswith("warning: no float comparison") and spec in std.err
    assert run_cli(golden + ["--checkpoint", str(ckpt), "--float-model", spec]) == 0
    std = capsys.readouterr()
    assert "int8 golden top-1" in std.out and "float pruned top-1" in std.out


@pytest.mark.parametrize("attr, needle", [
    # import: the module, a module inside a package, an import that fails inside
    ("{nomod}:build", "no module named '{nomod}' (looked in the current directory"),
    ("{nopkg}.sub:build", "no module named '{nopkg}'"),
    ("broken_x:build", "importing 'broken_x' failed: ModuleNotFoundError: No module named "
                       "'no_such_dependency_kep'"),
    # the attribute
    ("{mod}:missing", "'{mod}' has no attribute 'missing'"),
    ("{mod}:NOT_CALLABLE", "'NOT_CALLABLE' is an object of type int, not a callable"),
    # the factory's call and its result
    ("{mod}:raises", "raises(num_classes=10) raised ValueError: width 7 is odd"),
    ("{mod}:returns_list", "returns_list(num_classes=10) returned an object of type list, not "
                           "a torch.nn.Module"),
    ("{mod}:wrong_classes", "the model's output has shape [2, 11] for an input of shape "
                            "[2, 3, 32, 32], expected [2, 10] (N, num_classes)"),
    ("{mod}:wrong_input", "the model fails on an input of shape [2, 3, 32, 32]: RuntimeError:"),
    # the spec's syntax
    ("{mod}:", "expected a model name or module.path:callable"),
    ("{mod}:a:b", "expected a model name or module.path:callable"),
], ids=["no-module", "no-package", "import-fails", "no-attribute", "not-callable", "raises",
        "not-a-module", "wrong-classes", "wrong-input", "no-callable", "two-colons"])
def test_every_failure_is_one_line(run_cli, tiny_cifar, tmp_path, user_code, attr, needle,
                                   one_line_error):
    name, _ = user_code
    (tmp_path / "broken_x.py").write_text("import no_such_dependency_kep\n")
    uid = name.removeprefix("usernet_")
    names = dict(mod=name, nomod=f"nomodule_{uid}", nopkg=f"nopkg_{uid}")
    spec, needle = attr.format(**names), needle.format(**names)
    line = one_line_error(run_cli(["cifar", "--data-dir", str(tiny_cifar), "--out",
                                   str(tmp_path / "x"), "--model", spec] + TINY))
    assert line.startswith(f"error: --model {spec!r}: ") and needle in line
    assert not (tmp_path / "x" / "checkpoint.pt").exists()


def test_factory_without_num_classes_and_with_kwargs(user_code):
    from kep_train.models import build_model
    name, _ = user_code
    for factory in ("no_classes", "takes_kwargs"):
        model = build_model(f"{name}:{factory}", 10)
        assert model.fc.out_features == 10 and model.training
    # no num_classes parameter: the output shape check catches a mismatch
    with pytest.raises(KepError, match=r"no_classes': the model's output has shape \[2, 10\]"
                                       r".* expected \[2, 7\]"):
        build_model(f"{name}:no_classes", 7)


def test_a_checkpoint_never_imports_by_itself(user_code, tmp_path):
    name, marker = user_code
    from kep_train.models import build_model
    spec = f"{name}:build"
    model = build_model(spec)
    sys.modules.pop(name)
    marker.unlink()
    ckpt = {"format": "kep-checkpoint", "version": 1, "model_name": spec, "num_classes": 10,
            "mean": [0.5] * 3, "std": [0.25] * 3, "model": model.state_dict()}
    path = tmp_path / "c.pt"
    atomic_torch_save(ckpt, path)
    assert load_checkpoint(path)["model_name"] == spec          # reading it imports nothing
    with pytest.raises(KepError, match=f"give --model {spec} again"):
        model_from_checkpoint(path)
    with pytest.raises(KepError, match=f"give --model {spec} again \\(not 'resnet20'\\)"):
        model_from_checkpoint(path, "resnet20")
    assert _imports(marker) == [] and name not in sys.modules
    back, _ = model_from_checkpoint(path, spec)
    assert _imports(marker) == [name] and not back.training
    assert torch.equal(back.conv1.weight, model.conv1.weight)
    # a recorded spec that is no module.path:callable is a malformed checkpoint
    atomic_torch_save({**ckpt, "model_name": "os:system; rm"}, path)
    with pytest.raises(KepError, match="model_name 'os:system; rm' is no module.path:callable"):
        load_checkpoint(path)
