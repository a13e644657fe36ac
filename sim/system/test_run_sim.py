# SPDX-License-Identifier: Apache-2.0
"""End to end through the host runtime CLI: ``python -m kep_hw.run --sim`` classifies images
on the Verilator simulation of the whole top level (UART included) and must agree with the
golden model on every image: its int32 logits, computed on chip by the head (global average
pooling and classifier), equal the golden model's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from kep_hw.testing import random_network
from kep_hw.host.run import main as run_main
from kep_train.data.cifar import CIFAR10_CLASSES
from kep_train.export.kepfile import save_kep


def _fake_cifar(root, per_class=1, seed=0):
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for cls in CIFAR10_CLASSES:
            d = root / split / cls
            d.mkdir(parents=True)
            for n in range(per_class):
                arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{n}.png")


@pytest.mark.slow
def test_run_cli_sim_matches_golden(tmp_path, monkeypatch, capsys, tmp_path_factory):
    monkeypatch.setenv("KEP_CACHE", str(tmp_path / "cache"))
    _fake_cifar(tmp_path / "data")
    model = tmp_path / "tiny.kep"
    save_kep(model, random_network(2, size=32))
    out = tmp_path / "run.json"
    root = tmp_path_factory.getbasetemp().parent / "kep-run-sim"
    rc = run_main(["--sim", "--model", str(model), "--data-dir", str(tmp_path / "data"),
                   "--n", "3", "--pes", "8", "--build-root", str(root), "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    rep = json.loads(out.read_text())
    assert rep["n"] == 3 and rep["disagreements"] == []
    assert rep["top1_board"] == rep["top1_golden"]
    # the on-chip head's int32 logits, equal to the golden model's on every image
    assert rep["head"] == "board" and rep["logits_equal"] == 3 and rep["bit_exact"]
    assert [len(r["logits"]) for r in rep["images"]] == [10, 10, 10]
    assert all(r["logits"] == r["golden_logits"] for r in rep["images"])
    assert len(set(rep["cycles"])) == 1 and rep["cycles"][0] > rep["ideal_cycles"] > 0
    assert "disagreements: 0" in text and "environment" in rep


def test_run_cli_bad_input_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(["--sim", "--model", str(tmp_path / "missing.kep"), "--data-dir",
                  str(tmp_path), "--n", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
