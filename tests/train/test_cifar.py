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
    std = capsys.readouterr()
    assert code == 0, std.err
    rep = json.loads((out / "report.json").read_text())
    # the user's result on stdout; the epoch lines are progress (stderr)
    assert std.out.splitlines() == [f"dense top-1 {rep['top1']['dense']}  pruned top-1 "
                                    f"{rep['top1']['pruned']}  -> {out}/report.json"]
    assert [json.loads(ln) for ln in std.err.splitlines() if ln.startswith("{")] == rep["history"]
    # top-1 from the counts, rounded to 4 decimals
    last = rep["history"][-1]
    assert last["test_images"] == 20 and rep["top1"]["images"] == 20
    assert rep["top1"]["pruned_correct"] == last["test_correct"]
    assert rep["top1"]["pruned"] == round(100 * last["test_correct"] / 20, 4)
    assert rep["top1"]["dense_correct"] == rep["history"][0]["test_correct"]
    assert rep["top1"]["dense"] == round(100 * rep["top1"]["dense_correct"] / 20, 4)
    assert rep["kep"]["keep"]["layer1.0.conv1"] == 3
    # the cut (start of fine-tuning): accuracy before any training of the pruned model, and the
    # masked share of the weight norm, the same as the last reg epoch measured
    cut = rep["kep"]["cut"]
    assert cut["stage"] == "finetune" and cut["test_images"] == 20
    assert 0 <= cut["test_correct"] <= 20
    assert cut["test_top1"] == pytest.approx(100 * cut["test_correct"] / 20, abs=1e-3)
    assert cut["masked_share"] == rep["history"][1]["masked_share"] and 0 < cut["masked_share"] < 1
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
    assert [(m["stage"], m["epoch"]) for m in _metrics(b)] == [("dense", 1), ("dense", 2),
                                                                 ("reg", 1)]
    assert run_cli(common + ["--out", str(b), "--resume", "--halt-after", "2"]) == 3
    assert load_checkpoint(b / "checkpoint.pt")["stage"] == "finetune"
    # an epoch logged but killed before its checkpoint was written: the resume drops it
    with open(b / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"stage": "finetune", "epoch": 2, "test_top1": -1.0}) + "\n")
    assert run_cli(common + ["--out", str(b), "--resume"]) == 0
    wa, wb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    ma, mb = _metrics(a), _metrics(b)
    assert ma == wa["history"] and mb == wb["history"]
    steps = [(m["stage"], m["epoch"]) for m in mb]
    assert steps == [(s, e) for s in ("dense", "reg", "finetune") for e in (1, 2)]
    assert steps == [(m["stage"], m["epoch"]) for m in ma]
    assert [m["test_top1"] for m in ma] == [m["test_top1"] for m in mb]
    assert wa["model"].keys() == wb["model"].keys()
    for k in wa["model"]:
        assert torch.equal(wa["model"][k], wb["model"][k]), k
    assert [h["test_top1"] for h in wa["history"]] == [h["test_top1"] for h in wb["history"]]


def test_eval_every_skips_tests_not_training(run_cli, tiny_cifar, tmp_path):
    """``--eval-every`` leaves the test out of a stage's inner epochs (``test_top1`` null, no
    counts) and changes no weight, loss or final top-1."""
    two = {"--dense-epochs": "2", "--reg-epochs": "2", "--finetune-epochs": "2"}
    tiny = [two.get(TINY[i - 1], a) if i else a for i, a in enumerate(TINY)]
    common = ["cifar", "--data-dir", str(tiny_cifar), "--keep", "4", "--no-export"] + tiny
    every, sparse = tmp_path / "every", tmp_path / "sparse"
    assert run_cli(common + ["--out", str(every), "--eval-every", "1"]) == 0
    assert run_cli(common + ["--out", str(sparse), "--eval-every", "2"]) == 0
    assert run_cli(common + ["--out", str(tmp_path / "x"), "--eval-every", "0"]) == 2
    e, s = (json.loads((d / "report.json").read_text()) for d in (every, sparse))
    assert [h["test_top1"] is None for h in e["history"]] == [False] * 6
    # stages of 2 epochs, every 2nd evaluated: the last epoch of each stage, never the first
    assert [h["test_top1"] is None for h in s["history"]] == [True, False] * 3
    assert all("test_correct" not in h for h in s["history"][::2])
    for he, hs in zip(e["history"], s["history"]):
        assert (he["train_loss"], he["train_top1"]) == (hs["train_loss"], hs["train_top1"])
        if hs["test_top1"] is not None:
            assert he["test_top1"] == hs["test_top1"]
    assert e["top1"] == s["top1"] and e["kep"]["cut"] == s["kep"]["cut"]
    we, ws = (load_checkpoint(d / "checkpoint.pt")["model"] for d in (every, sparse))
    assert all(torch.equal(we[k], ws[k]) for k in we)


def _metrics(out):
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_metrics_file_grows_per_epoch(run_cli, tiny_cifar, tmp_path):
    out = tmp_path / "m"
    args = ["cifar", "--data-dir", str(tiny_cifar), "--out", str(out), "--no-export"] + TINY
    assert run_cli(args + ["--halt-after", "1"]) == 3
    (rec,) = _metrics(out)            # written as the run goes, before it ends
    assert (rec["stage"], rec["epoch"]) == ("dense", 1)
    for key in ("train_loss", "train_top1", "test_top1", "test_correct", "test_images", "lr",
                "seconds"):
        assert isinstance(rec[key], (int, float)), key
    assert rec["test_images"] == 20 and 0 < rec["lr"] <= 0.2
    assert rec["test_top1"] == round(100 * rec["test_correct"] / 20, 3)
    assert run_cli(args + ["--resume"]) == 0
    ms = _metrics(out)
    assert ms == json.loads((out / "report.json").read_text())["history"]
    assert ms[0] == rec and [m["stage"] for m in ms] == ["dense", "reg", "finetune"]
    assert "lambda" in ms[1] and "masked_share" in ms[1]      # the reg stage's penalty


def test_quiet_run_prints_only_the_result(run_cli, tiny_cifar, tmp_path, capsys):
    out = tmp_path / "q"
    assert run_cli(["cifar", "--data-dir", str(tiny_cifar), "--out", str(out), "--no-export",
                    "--quiet"] + TINY) == 0
    std = capsys.readouterr()
    assert std.err == ""
    assert len(std.out.splitlines()) == 1 and std.out.startswith("dense top-1 ")
    assert len(_metrics(out)) == 3


def test_plots_have_labels_legends_and_integer_epochs():
    import numpy as np
    from matplotlib.figure import Figure

    from kep_train.train.report import (accuracy_figure, kernel_heatmap_figure,
                                        kept_fraction_figure)
    history = ([{"stage": "pretrained", "epoch": 0, "test_top1": 50.0}]
               + [{"stage": s, "epoch": e, "train_top1": 40.0 + e, "test_top1": 45.0 + e}
                  for s, n in (("reg", 3), ("finetune", 4)) for e in range(1, n + 1)])
    fig = accuracy_figure(history)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"pretrained: test", "reg: test", "reg: training", "finetune: test"} <= set(labels)
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    xs = sorted({x for line in ax.get_lines() for x in line.get_xdata()})
    assert xs == list(range(0, 8))    # pretrained at 0, then 7 whole epochs

    layers = [{"name": "conv1", "kept_fraction": 1.0, "pruned": False},
              {"name": "layer1.0.conv1", "kept_fraction": 0.44, "pruned": True}]
    fig = kept_fraction_figure(layers)
    (ax,) = fig.axes
    assert ax.get_xlabel() and ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pruned", "not pruned"]

    g = torch.Generator().manual_seed(0)
    masks = {f"c{i}": torch.rand(8, 8, 3, 3, generator=g) < 0.3 + 0.1 * i for i in range(3)}
    fig = kernel_heatmap_figure(masks)
    ax, cbar = fig.axes                                   # the map and its colour bar
    assert ax.get_xlabel() and ax.get_ylabel() and cbar.get_ylabel()
    data = np.stack([m.float().mean(dim=(0, 1)).flatten().numpy() for m in masks.values()])
    (im,) = ax.get_images()
    assert im.get_clim() == pytest.approx((data.min(), data.max()))
    assert data.max() - data.min() < 0.9                  # so a fixed 0..1 scale would fail
    assert kernel_heatmap_figure({"fc": torch.ones(4, 4, 1, 1, dtype=torch.bool)}) is None


def test_plots_do_not_switch_the_matplotlib_backend(tmp_path, monkeypatch):
    import matplotlib

    from kep_train.train.report import plot_accuracy, plot_kernel_heatmap, plot_kept_fraction

    def refuse(*args, **kwargs):
        raise AssertionError("library code called matplotlib.use()")
    monkeypatch.setattr(matplotlib, "use", refuse)
    backend = matplotlib.rcParams["backend"]
    plot_accuracy([{"stage": "dense", "epoch": 1, "test_top1": 10.0}], tmp_path / "a.png")
    plot_kept_fraction([{"name": "c", "kept_fraction": 0.5, "pruned": True}], tmp_path / "k.png")
    plot_kernel_heatmap({"c": torch.rand(4, 4, 3, 3) < 0.5}, tmp_path / "h.png")
    assert matplotlib.rcParams["backend"] == backend
    for name in ("a.png", "k.png", "h.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
    first = rep["history"][0]
    assert rep["top1"]["dense_correct"] == first["test_correct"]
    assert rep["top1"]["dense"] == round(100 * first["test_correct"] / first["test_images"], 4)
    metrics = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics == rep["history"] and len(metrics) == 3      # pretrained, reg, finetune
    red = rep["totals"]["macs_reduction"]
    if method == "dense":
        assert red == 0 and "cut" not in rep["kep"]
    else:
        kep_kept = 1 - rep["totals"]["pruned_layers_macs_reduction"]
        assert red > 0.4 and kep_kept < 1
        cut = rep["kep"]["cut"]      # cut right at the start of the reg stage
        assert cut["stage"] == "reg" and 0 < cut["masked_share"] < 1
        assert 0 <= cut["test_correct"] <= cut["test_images"] == first["test_images"]


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


def test_corrupt_checkpoint_gives_one_line(run_cli, tiny_cifar, tmp_path, one_line_error,
                                          capsys):
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
    capsys.readouterr()     # the first run's progress lines
    code = run_cli(["cifar", "--data-dir", str(tiny_cifar), "--out", str(out), "--resume"]
                   + TINY)
    assert "corrupt" in one_line_error(code)


def test_missing_data_gives_one_line_naming_both_layouts(run_cli, tmp_path, one_line_error):
    code = run_cli(["cifar", "--data-dir", str(tmp_path / "nothing"), "--out",
                    str(tmp_path / "x"), "--no-download"] + TINY)
    line = one_line_error(code)
    assert "cifar-10-batches-py" in line and "train/<class>" in line


def test_existing_run_is_not_overwritten(run_cli, tiny_cifar, tmp_path, one_line_error, capsys):
    out = tmp_path / "o"
    assert run_cli(["cifar", "--data-dir", str(tiny_cifar), "--out", str(out), "--no-export",
                    "--halt-after", "1"] + TINY) == 3
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()     # the first run's progress lines
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
