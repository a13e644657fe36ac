# SPDX-License-Identifier: Apache-2.0
"""``python -m kep_train cifar``: smoke run, kill-and-resume, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from kep_train.train.checkpoint import load_checkpoint

TINY = ["--model", "resnet20", "--batch-size", "16", "--dense-epochs", "1", "--reg-epochs", "1",
        "--finetune-epochs", "1", "--subset", "48", "--test-subset", "20", "--no-progress",
        "--seed", "3", "--threads", "1"]


def test_smoke_run_writes_report_and_k_nonzeros(run_cli, tiny_cifar, tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli(["cifar", "--data-dir", str(tiny_cifar), "--out", str(out), "--keep", "3",
                    "--no-export"] + TINY)
    assert code == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    assert rep["kep"]["keep"]["layer1.0.conv1"] == 3
    assert rep["totals"]["pruned_layers_macs_reduction"] == pytest.approx(1 - 3 / 9)
    assert [h["stage"] for h in rep["history"]] == ["dense", "reg", "finetune"]
    assert "torch" in rep["environment"] and rep["seconds"]["total"] > 0
    for name in ("accuracy.png", "kept_fraction.png", "kernel_heatmap.png", "dense.pt"):
        assert (out / name).stat().st_size > 0
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["stage"] == "done"
    for name, mask in ck["masks"].items():
        assert torch.all(mask.flatten(2).sum(2) == 3), name
        w = ck["model"][f"{name}.weight"]
        assert torch.all(w[~mask] == 0)


def test_kill_and_resume_gives_identical_weights(run_cli, tiny_cifar, tmp_path):
    two = {"--dense-epochs": "2", "--reg-epochs": "2", "--finetune-epochs": "2"}
    tiny = [two.get(TINY[i - 1], a) if i else a for i, a in enumerate(TINY)]
    common = ["cifar", "--data-dir", str(tiny_cifar), "--keep", "4", "--no-export"] + tiny
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(common + ["--out", str(a)]) == 0
    # "kill" after 3 epochs (inside the reg stage), then again after 2 more (inside finetune)
    assert run_cli(common + ["--out", str(b), "--halt-after", "3"]) == 3
    assert load_checkpoint(b / "checkpoint.pt")["stage"] == "reg"
    assert run_cli(common + ["--out", str(b), "--resume", "--halt-after", "2"]) == 3
    assert load_checkpoint(b / "checkpoint.pt")["stage"] == "finetune"
    assert run_cli(common + ["--out", str(b), "--resume"]) == 0
    wa, wb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert wa["model"].keys() == wb["model"].keys()
    for k in wa["model"]:
        assert torch.equal(wa["model"][k], wb["model"][k]), k
    assert [h["test_top1"] for h in wa["history"]] == [h["test_top1"] for h in wb["history"]]


@pytest.mark.parametrize("method", ["filter-l1", "magnitude", "dense"])
def test_baselines_run_from_pretrained(run_cli, tiny_cifar, tmp_path, method):
    dense = tmp_path / "d"
    assert run_cli(["cifar", "--data-dir", str(tiny_cifar), "--out", str(dense), "--method",
                    "dense", "--no-export"] + TINY) == 0
    out = tmp_path / method
    assert run_cli(["cifar", "--data-dir", str(tiny_cifar), "--out", str(out), "--method", method,
                    "--pretrained", str(dense / "dense.pt"), "--no-export"] + TINY) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["history"][0]["stage"] == "pretrained"
    red = rep["totals"]["macs_reduction"]
    if method == "dense":
        assert red == 0
    else:
        kep_kept = 1 - rep["totals"]["pruned_layers_macs_reduction"]
        assert red > 0.4 and kep_kept < 1


@pytest.mark.parametrize("extra, needle", [
    (["--model", "resnet7"], "unknown model"),
    (["--keep", "0"], "--keep"),
    (["--keep", "10"], "--keep"),
    (["--method", "nope"], "--method"),
    (["--target-macs", "1.5"], "--target-macs"),
    (["--keep", "4", "--target-macs", "0.5"], "only one of"),
])
def test_bad_options_give_one_line(run_cli, tiny_cifar, tmp_path, extra, needle, one_line_error):
    code = run_cli(["cifar", "--data-dir", str(tiny_cifar), "--out", str(tmp_path / "x")]
                   + TINY + extra)
    assert needle in one_line_error(code)


def test_corrupt_checkpoint_gives_one_line(run_cli, tiny_cifar, tmp_path, one_line_error):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    code = run_cli(["cifar", "--data-dir", str(tiny_cifar), "--out", str(tmp_path / "x"),
                    "--pretrained", str(bad)] + TINY)
    assert "corrupt" in one_line_error(code)
    # a truncated real checkpoint placed for --resume
    out = tmp_path / "r"
    assert run_cli(["cifar", "--data-dir", str(tiny_cifar), "--out", str(out), "--no-export",
                    "--halt-after", "1"] + TINY) == 3
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    code = run_cli(["cifar", "--data-dir", str(tiny_cifar), "--out", str(out), "--resume"]
                   + TINY)
    assert "corrupt" in one_line_error(code)


def test_missing_data_gives_one_line_naming_both_layouts(run_cli, tmp_path, one_line_error):
    code = run_cli(["cifar", "--data-dir", str(tmp_path / "nothing"), "--out",
                    str(tmp_path / "x"), "--no-download"] + TINY)
    line = one_line_error(code)
    assert "cifar-10-batches-py" in line and "train/<class>" in line


def test_existing_run_is_not_overwritten(run_cli, tiny_cifar, tmp_path, one_line_error):
    out = tmp_path / "o"
    assert run_cli(["cifar", "--data-dir", str(tiny_cifar), "--out", str(out), "--no-export",
                    "--halt-after", "1"] + TINY) == 3
    before = (out / "checkpoint.pt").read_bytes()
    code = run_cli(["cifar", "--data-dir", str(tiny_cifar), "--out", str(out)] + TINY)
    assert "--resume" in one_line_error(code)
    assert (out / "checkpoint.pt").read_bytes() == before


def test_module_entry_point_help():
    r = subprocess.run([sys.executable, "-m", "kep_train", "cifar", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for opt in ("--keep", "--target-macs", "--method", "--resume", "--schedule", "--pretrained"):
        assert opt in r.stdout


def test_pipeline_exports_kep_model(run_cli, tiny_cifar, tmp_path):
    from kep_train.export.kepfile import load_kep
    out = tmp_path / "e"
    assert run_cli(["cifar", "--data-dir", str(tiny_cifar), "--out", str(out), "--keep", "2",
                    "--calib-batches", "1"] + TINY) == 0
    kep = load_kep(out / "model.kep")
    rep = json.loads((out / "report.json").read_text())
    assert rep["export"]["bytes"] == (out / "model.kep").stat().st_size
    sparse = [ly for ly in kep.layers if ly.op == "conv" and ly.sparse]
    assert len(sparse) == 18 and all(ly.K == 2 for ly in sparse)
    ck = load_checkpoint(out / "checkpoint.pt")
    for ly in sparse:
        kept = ck["masks"][ly.name].flatten(2)
        pos = torch.arange(9).expand_as(kept)
        assert torch.equal(ly.index.long(), pos[kept].view(kept.shape[0], kept.shape[1], 2))
