# SPDX-License-Identifier: Apache-2.0
"""``python -m kep_train golden``: per-image records (int32 logits equal to ``run_network``),
image order (first N sorted, ``--shuffle``), a test folder without ``train/``, the decoded-image
cache (keyed on names, sizes and modification times; ``--no-cache``), rounded top-1, progress."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from kep_train.data.cifar import CIFAR10_CLASSES, cache_dir, cache_file
from kep_train.export.kepfile import save_kep
from kep_train.golden.evaluate import percent, quantize_input, run_network
from kep_train.testing import random_kep


@pytest.fixture(scope="module")
def kep_file(tmp_path_factory):
    """A random K=4 ResNet-20 ``.kep`` (no checkpoint named in it)."""
    kep = random_kep("resnet20", K=4, seed=5, n_calib=4)
    path = tmp_path_factory.mktemp("kep") / "m.kep"
    save_kep(path, kep)
    return path, kep


def _sorted_files(data_dir):
    """``test/<class>/<file>`` of every test image: class folders sorted, files sorted."""
    return [f"test/{c}/{f}" for c in sorted(CIFAR10_CLASSES)
            for f in sorted(os.listdir(data_dir / "test" / c))]


def _expected_logits(kep, data_dir, files):
    """The golden model's logits for ``files``, decoded here with Pillow (not through the
    data loader or its cache)."""
    arrs = [np.asarray(Image.open(data_dir / f).convert("RGB")) for f in files]
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()
    return run_network(kep, quantize_input(kep, x))


def _run(run_cli, kep_path, data_dir, out, *extra):
    code = run_cli(["golden", "--model", str(kep_path), "--data-dir", str(data_dir),
                    "--out", str(out), *extra])
    assert code == 0
    return json.loads(out.read_text())


def _test_only_copy(src, dst):
    """A copy of ``src/test`` alone (no ``train/``)."""
    shutil.copytree(src / "test", dst / "test")
    return dst


def test_per_image_records_equal_run_network(run_cli, kep_file, tiny_cifar, tmp_path, capsys):
    kep_path, kep = kep_file
    rep = _run(run_cli, kep_path, tiny_cifar, tmp_path / "g.json", "--batch-size", "7")
    files = _sorted_files(tiny_cifar)
    recs = rep["per_image"]
    assert [r["file"] for r in recs] == files
    assert [r["index"] for r in recs] == list(range(30))
    assert [r["label"] for r in recs] == [CIFAR10_CLASSES.index(f.split("/")[1]) for f in files]
    expect = _expected_logits(kep, tiny_cifar, files)
    assert expect.dtype == torch.int32
    assert [r["logits"] for r in recs] == expect.tolist()
    assert all(isinstance(v, int) for r in recs for v in r["logits"])
    assert [r["prediction"] for r in recs] == expect.to(torch.int64).argmax(1).tolist()
    correct = sum(r["prediction"] == r["label"] for r in recs)
    assert rep["images"] == 30 and rep["int8_correct"] == correct
    assert rep["int8_top1"] == round(100 * correct / 30, 4)
    assert rep["order"] == "sorted" and "float_top1" not in rep
    # the existing keys stay
    for key in ("model", "images", "int8_top1", "int8_seconds", "environment"):
        assert key in rep
    out = capsys.readouterr()
    assert f"({correct}/30 images" in out.out
    assert "int8 golden: 30/30 images" in out.err      # progress with elapsed time, on stderr


def test_top1_is_rounded_not_float32():
    assert percent(9, 40) == 22.5                       # float32 mean gives 22.499999403953552
    assert percent(1, 3) == 33.3333 and percent(2, 3) == 66.6667
    assert percent(0, 0) == 0.0


def test_top1_in_json_has_at_most_four_decimals(run_cli, kep_file, tiny_cifar, tmp_path):
    kep_path, _ = kep_file
    out = tmp_path / "g.json"
    rep = _run(run_cli, kep_path, tiny_cifar, out, "--n", "7", "--shuffle", "--seed", "4")
    text = out.read_text()
    line = next(ln for ln in text.splitlines() if '"int8_top1"' in ln)
    value = line.split(":", 1)[1].strip().rstrip(",")
    assert len(value.split(".")[1]) <= 4, value
    assert rep["int8_top1"] == round(100 * rep["int8_correct"] / 7, 4)


def test_first_n_is_sorted_order(run_cli, kep_file, tiny_cifar, tmp_path):
    kep_path, kep = kep_file
    rep = _run(run_cli, kep_path, tiny_cifar, tmp_path / "g.json", "--n", "5")
    files = _sorted_files(tiny_cifar)[:5]
    assert [r["file"] for r in rep["per_image"]] == files
    assert files[0] == "test/airplane/0000.png" and rep["images"] == 5
    assert [r["logits"] for r in rep["per_image"]] == \
        _expected_logits(kep, tiny_cifar, files).tolist()


def test_shuffle_is_a_seeded_random_subset(run_cli, kep_file, tiny_cifar, tmp_path):
    kep_path, kep = kep_file
    a = _run(run_cli, kep_path, tiny_cifar, tmp_path / "a.json", "--n", "6", "--shuffle",
             "--seed", "1")
    b = _run(run_cli, kep_path, tiny_cifar, tmp_path / "b.json", "--n", "6", "--shuffle",
             "--seed", "1")
    c = _run(run_cli, kep_path, tiny_cifar, tmp_path / "c.json", "--n", "6", "--shuffle",
             "--seed", "2")
    files = _sorted_files(tiny_cifar)
    idx = torch.randperm(30, generator=torch.Generator().manual_seed(1))[:6].tolist()
    fa = [r["file"] for r in a["per_image"]]
    assert fa == [files[i] for i in idx] and [r["index"] for r in a["per_image"]] == idx
    assert fa == [r["file"] for r in b["per_image"]]
    assert fa != [r["file"] for r in c["per_image"]]
    assert fa != files[:6]
    assert a["order"] == "shuffled" and a["seed"] == 1
    assert [r["logits"] for r in a["per_image"]] == _expected_logits(kep, tiny_cifar, fa).tolist()


def test_no_train_folder_needed(run_cli, kep_file, tiny_cifar, tmp_path):
    kep_path, _ = kep_file
    data = _test_only_copy(tiny_cifar, tmp_path / "d")
    assert not (data / "train").exists()
    rep = _run(run_cli, kep_path, data, tmp_path / "g.json", "--n", "4")
    assert [r["file"] for r in rep["per_image"]] == _sorted_files(data)[:4]


def _write_png(path, pixels, **kw):
    Image.fromarray(pixels).save(path, **kw)


def test_cache_follows_images_replaced_in_place(run_cli, kep_file, tiny_cifar, tmp_path):
    kep_path, kep = kep_file
    data = _test_only_copy(tiny_cifar, tmp_path / "d")
    first, second = data / "test/airplane/0000.png", data / "test/airplane/0001.png"
    rng = np.random.default_rng(7)
    # uncompressed PNGs: a same-size replacement of `first` is possible below
    _write_png(first, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), compress_level=0)
    out = tmp_path / "g.json"
    before = _run(run_cli, kep_path, data, out, "--n", "2")
    cached = cache_file(data, train=False)
    assert cached.is_file()
    old = [r["logits"] for r in before["per_image"]]

    # same name, same size, new pixels, later modification time
    st = first.stat()
    _write_png(first, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), compress_level=0)
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    assert first.stat().st_size == st.st_size
    after = _run(run_cli, kep_path, data, out, "--n", "2")
    expect = _expected_logits(kep, data, ["test/airplane/0000.png", "test/airplane/0001.png"])
    assert after["per_image"][0]["logits"] == expect[0].tolist() != old[0]
    assert not cached.exists() and cache_file(data, train=False).is_file()  # old entry removed

    # same name, same modification time, other size, new pixels
    st = second.stat()
    _write_png(second, np.full((32, 32, 3), 200, dtype=np.uint8))
    os.utime(second, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert second.stat().st_size != st.st_size and second.stat().st_mtime_ns == st.st_mtime_ns
    again = _run(run_cli, kep_path, data, out, "--n", "2")
    expect = _expected_logits(kep, data, ["test/airplane/0000.png", "test/airplane/0001.png"])
    assert [r["logits"] for r in again["per_image"]] == expect.tolist()
    assert again["per_image"][1]["logits"] != old[1]
    stem = cache_file(data, train=False).name.rsplit("-", 1)[0]
    assert len(list(cache_dir().glob(stem + "-*.pt"))) == 1


def test_no_cache_neither_reads_nor_writes(run_cli, kep_file, tiny_cifar, tmp_path):
    kep_path, kep = kep_file
    data = _test_only_copy(tiny_cifar, tmp_path / "d")
    path = cache_file(data, train=False)
    stem = path.name.rsplit("-", 1)[0]
    out = tmp_path / "g.json"
    real = _run(run_cli, kep_path, data, out, "--n", "3", "--no-cache")
    assert list(cache_dir().glob(stem + "-*.pt")) == []               # nothing written
    _run(run_cli, kep_path, data, out, "--n", "3")
    assert path.is_file()
    # plant other pixels in the (valid) cache entry: the cached run reads them, --no-cache not
    d = torch.load(path, weights_only=True)
    d["images"] = 255 - d["images"]
    torch.save(d, path)
    planted = _run(run_cli, kep_path, data, out, "--n", "3")
    assert [r["logits"] for r in planted["per_image"]] == \
        run_network(kep, quantize_input(kep, d["images"][:3])).tolist()
    fresh = _run(run_cli, kep_path, data, out, "--n", "3", "--no-cache")
    assert [r["logits"] for r in fresh["per_image"]] == [r["logits"] for r in real["per_image"]]
    assert [r["logits"] for r in fresh["per_image"]] != \
        [r["logits"] for r in planted["per_image"]]


def test_quiet_silences_progress(run_cli, kep_file, tiny_cifar, tmp_path, capsys):
    kep_path, _ = kep_file
    _run(run_cli, kep_path, tiny_cifar, tmp_path / "g.json", "--n", "3", "--quiet")
    out = capsys.readouterr()
    assert out.err == "" and "int8 golden top-1" in out.out
    _run(run_cli, kep_path, tiny_cifar, tmp_path / "g.json", "--n", "3")
    assert "int8 golden: 3/3 images" in capsys.readouterr().err


def test_help_documents_order_and_cache(run_cli, capsys):
    assert run_cli(["golden", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("--shuffle", "--no-cache", "sorted order", "KEP_CACHE", "modification",
                   "per_image", "no train/ folder is needed"):
        assert needle in text, needle


@pytest.mark.parametrize("extra, needle", [
    (["--n", "0"], "--n"),
    (["--n", "x"], "--n"),
    (["--seed", "3"], "--shuffle"),
    (["--batch-size", "0"], "--batch-size"),
])
def test_bad_options_give_one_line(run_cli, kep_file, tiny_cifar, extra, needle,
                                   one_line_error):
    kep_path, _ = kep_file
    code = run_cli(["golden", "--model", str(kep_path), "--data-dir", str(tiny_cifar)] + extra)
    assert needle in one_line_error(code)


def test_missing_test_folder_gives_one_line(run_cli, kep_file, tmp_path, one_line_error):
    kep_path, _ = kep_file
    (tmp_path / "d" / "train").mkdir(parents=True)
    code = run_cli(["golden", "--model", str(kep_path), "--data-dir", str(tmp_path / "d")])
    assert "test" in one_line_error(code)
