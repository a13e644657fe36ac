# SPDX-License-Identifier: Apache-2.0
"""``benchmarks/repeatability.py`` without training: the history comparison and the weights
digest on synthetic data, the variants' commands, and the skip / restart decisions (the
kep_train subprocess replaced by a stub)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

@pytest.fixture(scope="module")
def rep(bench_script):
    return bench_script("repeatability")


def history(losses, correct=None):
    stages = ["dense", "dense", "reg", "finetune"]
    correct = correct or [100 + i for i in range(len(losses))]
    out, seen = [], {}
    for i, loss in enumerate(losses):
        st = stages[i]
        seen[st] = seen.get(st, 0) + 1
        out.append({"stage": st, "epoch": seen[st], "train_loss": loss, "train_top1": 10.0,
                    "test_top1": correct[i] / 10, "test_correct": correct[i]})
    return out


def test_identical_histories(rep):
    h = history([2.5, 2.1, 1.9, 1.8])
    c = rep.compare_histories(h, [dict(x) for x in h])
    assert c == {"losses_identical": True, "first_loss_diff": None, "first_any_diff": None,
                 "max_abs_loss_diff": 0.0}


def test_first_parting_epoch_and_largest_difference(rep):
    ref = history([2.5, 2.1, 1.9, 1.8])
    other = history([2.5, 2.10001, 1.9, 1.75])
    c = rep.compare_histories(ref, other)
    assert not c["losses_identical"]
    assert c["first_loss_diff"] == "dense 2" and c["first_any_diff"] == "dense 2"
    assert c["max_abs_loss_diff"] == pytest.approx(0.05)


def test_equal_losses_but_other_test_counts(rep):
    ref = history([2.5, 2.1, 1.9], correct=[100, 200, 300])
    other = history([2.5, 2.1, 1.9], correct=[100, 200, 301])
    c = rep.compare_histories(ref, other)
    assert c["losses_identical"] and c["first_loss_diff"] is None
    assert c["first_any_diff"] == "reg 1"


def test_an_epoch_one_run_did_not_evaluate_is_no_difference(rep):
    ref = history([2.5, 2.1, 1.9], correct=[100, 200, 300])
    other = history([2.5, 2.1, 1.9], correct=[100, 200, 300])
    other[0].update(test_top1=None)
    del other[0]["test_correct"]                     # --eval-every skipped dense 1
    assert rep.compare_histories(ref, other)["first_any_diff"] is None
    other[2]["test_correct"] = 301                   # an epoch both evaluated still counts
    assert rep.compare_histories(ref, other)["first_any_diff"] == "reg 1"


def test_missing_epoch_is_a_difference(rep):
    ref = history([2.5, 2.1, 1.9, 1.8])
    c = rep.compare_histories(ref, ref[:3])
    assert not c["losses_identical"] and c["first_loss_diff"] == "finetune 1"
    c = rep.compare_histories(ref[:3], ref)
    assert not c["losses_identical"] and c["first_loss_diff"] == "finetune 1"


def test_weights_digest_is_bit_exact_and_order_free(rep):
    w = torch.randn(4, 3, 3, 3)
    sd = {"conv.weight": w, "bn.num_batches_tracked": torch.tensor(7),
          "bn.running_mean": torch.zeros(4)}
    d = rep.tensors_digest(sd)
    assert d == rep.tensors_digest(dict(reversed(list(sd.items()))))
    one_ulp = w.clone()
    one_ulp.view(-1)[5] = torch.nextafter(w.view(-1)[5], torch.tensor(float("inf")))
    assert rep.tensors_digest({**sd, "conv.weight": one_ulp}) != d
    assert rep.tensors_digest({**sd, "bn.num_batches_tracked": torch.tensor(8)}) != d
    # same bytes under another name or shape are other weights
    assert rep.tensors_digest({**sd, "conv.weight": w.reshape(4, 27)}) != d
    assert rep.max_abs_diff(sd, {**sd, "conv.weight": one_ulp}) > 0
    assert rep.max_abs_diff(sd, sd) == 0


def opts(tmp_path, **kw):
    base = dict(data_dir="DATA", runs=str(tmp_path), seed=0, subset=2048, test_subset=1000,
                epochs=1)
    return SimpleNamespace(**{**base, **kw})


def test_variant_commands(rep, tmp_path):
    o = opts(tmp_path)
    cmd = lambda n: rep.run_command(rep.BY_NAME[n], o, tmp_path / n)  # noqa: E731
    assert cmd("t1")[cmd("t1").index("--threads") + 1] == "1"
    assert "--threads" not in cmd("t0-default")
    assert "--no-cache" in cmd("t2-nocache") and "--no-cache" not in cmd("t2-a")
    assert cmd("t2-nomkldnn")[1] == "-c" and "mkldnn.enabled = False" in cmd("t2-nomkldnn")[2]
    assert cmd("t2-a")[1:3] == ["-m", "kep_train"]
    assert rep.run_env(rep.BY_NAME["t2-freshcache"], tmp_path)["KEP_CACHE"].endswith(
        rep.FRESH_CACHE)
    assert rep.run_env(rep.BY_NAME["t2-a"], tmp_path) == {}
    # the reference always runs first, once
    assert rep._variant_names("t1,t2-a,t1") == ["t2-a", "t1"]
    with pytest.raises(rep.KepError):
        rep._variant_names("t3")


def test_skip_finished_restart_unfinished(rep, tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, env=None, stdout=None, stderr=None):
        out = Path(cmd[cmd.index("--out") + 1])
        assert not (out / "checkpoint.pt").exists()     # the killed run's folder is gone
        out.mkdir(parents=True)
        (out / "report.json").write_text("{}")
        calls.append((cmd, env))
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(rep.subprocess, "run", fake_run)
    o = opts(tmp_path)
    (tmp_path / "t2-a").mkdir()
    (tmp_path / "t2-a" / "report.json").write_text("{}")
    (tmp_path / "t1").mkdir()
    (tmp_path / "t1" / "checkpoint.pt").write_text("killed")
    (tmp_path / rep.FRESH_CACHE).mkdir()
    (tmp_path / rep.FRESH_CACHE / "old.pt").write_text("stale")
    log = lambda msg: None  # noqa: E731
    assert rep.run_variant(rep.BY_NAME["t2-a"], o, log)["rc"] == 0
    assert calls == []
    rec = rep.run_variant(rep.BY_NAME["t1"], o, log)
    assert rec["rc"] == 0 and len(calls) == 1
    assert json.loads((tmp_path / "t1.run.json").read_text())["rc"] == 0
    rep.run_variant(rep.BY_NAME["t2-freshcache"], o, log)
    assert calls[-1][1]["KEP_CACHE"] == str((tmp_path / rep.FRESH_CACHE).resolve())
    assert list((tmp_path / rep.FRESH_CACHE).iterdir()) == []     # emptied before the run
