# SPDX-License-Identifier: Apache-2.0
"""``python -m kep_train imagenet``: resnet18 smoke run on a generated ImageNet-layout folder,
MAC shares KEP can touch, torchvision weights, determinism of the data pipeline, errors."""

from __future__ import annotations

import json

import pytest
import torch

from kep_train.train.checkpoint import load_checkpoint
from kep_train.data.imagenet import ImageFolderData, imagenet_transforms, make_tiny_imagenet
from kep_train.train.imagenet import load_torchvision_state_dict, mac_shares, touchable_macs

TINY = ["--model", "resnet18", "--image-size", "32", "--batch-size", "8", "--dense-epochs", "1",
        "--reg-epochs", "1", "--finetune-epochs", "1", "--workers", "0", "--no-progress",
        "--threads", "1", "--seed", "2"]


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
    """4 classes x 8 training and 2 validation JPEGs of 32x32 in the ImageNet layout."""
    return make_tiny_imagenet(tmp_path_factory.mktemp("imagenet"), classes=4,
                              train_per_class=8, val_per_class=2, size=32)


def test_resnet18_smoke_run(run_cli, tiny_imagenet, tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli(["imagenet", "--data-dir", str(tiny_imagenet), "--out", str(out),
                    "--keep", "4"] + TINY)
    assert code == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    assert rep["dataset"] == "imagenet" and rep["model"] == "resnet18"
    assert [h["stage"] for h in rep["history"]] == ["dense", "reg", "finetune"]
    assert rep["totals"]["pruned_layers_macs_reduction"] == pytest.approx(1 - 4 / 9)
    assert rep["processes"] == 1 and rep["backend"] is None
    assert "torch" in rep["environment"]
    share = rep["mac_share"]
    assert share["this_run"]["input"] == [3, 32, 32] and share["at_224"]["input"] == [3, 224, 224]
    # resnet18 with 4 classes: every 3x3 conv but the 7x7 stem is prunable
    assert share["at_224"]["touchable_share"] == pytest.approx(0.924302, abs=1e-5)
    assert share["this_run"]["by_kernel"]["3x3"]["pruned_share"] == \
        share["this_run"]["touchable_share"]
    exp = rep["export"]
    if exp.get("exported", True):
        assert (out / "model.kep").stat().st_size == exp["bytes"] > 0
    else:
        assert exp["reason"] and not (out / "model.kep").exists()
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["num_classes"] == 4 and ck["input_shape"] == [3, 32, 32]
    assert len(ck["masks"]) == 16
    for name, mask in ck["masks"].items():
        assert torch.all(mask.flatten(2).sum(2) == 4), name
        assert torch.all(ck["model"][f"{name}.weight"][~mask] == 0), name
    for name in ("accuracy.png", "kept_fraction.png", "dense.pt"):
        assert (out / name).stat().st_size > 0


def test_resnet50_keeps_1x1_dense_and_reports_touchable_share():
    r = touchable_macs("resnet50")
    by = r["by_kernel"]
    assert r["total_macs"] == 4_089_184_256
    assert r["touchable_share"] == pytest.approx(0.452337, abs=1e-6)   # 3x3 layers only
    assert by["3x3"]["pruned_share"] == r["touchable_share"] == by["3x3"]["share"]
    assert by["1x1"]["share"] == pytest.approx(0.518302, abs=1e-6)
    assert by["1x1"]["pruned_share"] == 0
    assert sum(d["share"] for d in by.values()) == pytest.approx(1, abs=1e-5)
    with_1x1 = touchable_macs("resnet50", prune_1x1=True)
    assert with_1x1["by_kernel"]["1x1"]["pruned_share"] == by["1x1"]["share"]
    assert with_1x1["touchable_share"] == pytest.approx(0.970639, abs=1e-6)


def test_mac_shares_by_hand():
    from kep_train.pruning import LayerCost
    costs = [LayerCost("a", "conv", 3, 1, 1, (1, 1), 9, 9, 300, 300),
             LayerCost("b", "conv", 1, 1, 1, (1, 1), 1, 1, 100, 100),
             LayerCost("fc", "linear", 1, 1, 1, (1, 1), 1, 1, 100, 100)]
    r = mac_shares(costs, ["a"])
    assert r["total_macs"] == 500 and r["touchable_share"] == 0.6
    assert r["by_kernel"]["1x1"] == {"macs": 100, "share": 0.2, "pruned_share": 0.0}


def test_augmentation_depends_on_seed_key_and_index_only(tiny_imagenet):
    from kep_train.data.folders import list_images
    from kep_train.data.imagenet import find_classes
    split = tiny_imagenet / "train"
    samples = list_images(split, find_classes(split))
    a = ImageFolderData(samples, imagenet_transforms(24, True), seed=5)
    b = ImageFolderData(samples, imagenet_transforms(24, True), seed=5)
    a.key = b.key = 7
    torch.manual_seed(123)
    xa = a[3][0]
    torch.rand(10)            # the global RNG state does not matter
    assert torch.equal(xa, b[3][0]) and xa.dtype == torch.uint8 and xa.shape == (3, 24, 24)
    b.key = 8
    assert not torch.equal(xa, b[3][0])


def test_torchvision_state_dict_as_pretrained(run_cli, tiny_imagenet, tmp_path, capsys):
    import torchvision
    sd = torchvision.models.resnet18(weights=None).state_dict()       # 1000 classes
    sd["layer1.0.bn1.running_var"] = torch.linspace(0.5, 2.0, 64)       # recognisable
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    got = load_torchvision_state_dict(path)
    assert got.keys() == sd.keys()
    out = tmp_path / "ft"
    # no training epochs: the checkpoint must hold exactly the loaded weights (masked)
    code = run_cli(["imagenet", "--data-dir", str(tiny_imagenet), "--out", str(out),
                    "--pretrained", str(path), "--no-export"] + TINY
                   + ["--reg-epochs", "0", "--finetune-epochs", "0"])
    assert code == 0, capsys.readouterr().err
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["history"][0]["stage"] == "pretrained" and ck["stage"] == "done"
    assert ck["kep"]["pretrained_head_reinitialised"] == ["fc.bias", "fc.weight"]
    assert torch.equal(ck["model"]["layer1.0.bn1.running_var"], sd["layer1.0.bn1.running_var"])


@pytest.mark.parametrize("make, extra, needle", [
    (None, ["--model", "resnet20"], "unknown model"),
    ("noval", [], "val"),
    ("mismatch", [], "class folders"),
    ("corrupt", [], "cannot read image"),
    (None, ["--pretrained", "BAD"], "corrupt"),
])
def test_bad_input_gives_one_line(run_cli, tiny_imagenet, tmp_path, make, extra, needle,
                                  one_line_error):
    data = tiny_imagenet
    if make is not None:
        data = make_tiny_imagenet(tmp_path / "d", classes=2, train_per_class=8,
                                  val_per_class=1, size=16)
        if make == "noval":
            import shutil
            shutil.rmtree(data / "val")
        elif make == "mismatch":
            (data / "val" / "n99999999").mkdir()
        else:
            for p in (data / "train").rglob("*.JPEG"):
                p.write_bytes(b"not a jpeg")
    if "BAD" in extra:
        bad = tmp_path / "bad.pth"
        bad.write_bytes(b"PK\x03\x04 nothing")
        extra = ["--pretrained", str(bad)]
    code = run_cli(["imagenet", "--data-dir", str(data), "--out", str(tmp_path / "x"),
                    "--no-export"] + TINY + extra)
    assert needle in one_line_error(code)


def test_cifar_refuses_multiple_processes(run_cli, tmp_path, monkeypatch, one_line_error):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = run_cli(["cifar", "--data-dir", str(tmp_path), "--out", str(tmp_path / "x")])
    assert "imagenet" in one_line_error(code)


@pytest.mark.slow
def test_kill_and_resume_gives_identical_weights(run_cli, tmp_path):
    data = make_tiny_imagenet(tmp_path / "d", classes=2, train_per_class=8, val_per_class=1,
                              size=16)
    common = ["imagenet", "--data-dir", str(data), "--keep", "4", "--no-export"] + [
        "16" if a == "32" else a for a in TINY]
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(common + ["--out", str(a)]) == 0
    assert run_cli(common + ["--out", str(b), "--halt-after", "2"]) == 3
    assert load_checkpoint(b / "checkpoint.pt")["stage"] == "reg"
    assert run_cli(common + ["--out", str(b), "--resume"]) == 0
    wa, wb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert wa["model"].keys() == wb["model"].keys()
    for k in wa["model"]:
        assert torch.equal(wa["model"][k], wb["model"][k]), k
    assert [h["train_loss"] for h in wa["history"]] == [h["train_loss"] for h in wb["history"]]
