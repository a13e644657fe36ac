# SPDX-License-Identifier: Apache-2.0
"""Hostile and odd input files: malformed ``.kep`` metadata, malformed checkpoints, image
folders holding decompression bombs or FIFOs, unusable output paths, and the temp files a killed
write leaves behind. Every case ends with exit code 2 and one ``error: ...`` line (or the
documented success), within a deadline."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import time
import zlib

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from kep_common.errors import KepError
from kep_common.fileio import (atomic_write_bytes, check_output_dir, check_output_file,
                               remove_stale_temps)
from kep_train.export.kepfile import (MAX_ACTIVATION, MAX_SPATIAL, KepFormatError, dumps_kep,
                                      load_kep, save_kep)
from kep_train.models import VGG, build_model
from kep_train.testing import deadline, random_kep, random_pruned_model
from kep_train.train.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint

DEADLINE_S = 60      # any single command: a hang fails the test instead of blocking the run

@pytest.fixture
def cli(run_cli):
    """``run_cli`` under the deadline."""
    def run(args):
        with deadline(DEADLINE_S):
            return run_cli([str(a) for a in args])
    return run


# ------------------------------------------------------------------------------------------
# valid inputs that the cases below damage

@pytest.fixture(scope="module")
def tiny_kep():
    """A tiny valid classifier for 3x32x32 inputs (sparse and dense convs, maxpool, avgpool,
    linear)."""
    return random_kep(VGG([4, "M", 6]), K=3, seed=1, n_calib=4)


@pytest.fixture(scope="module")
def kep_parts(tiny_kep):
    """(tensors, string metadata) of the tiny model's file."""
    data = dumps_kep(tiny_kep)
    n = int.from_bytes(data[:8], "little")
    return st_load(data), json.loads(data[8:8 + n])["__metadata__"]


def kep_with_meta(kep_parts, path, edit) -> str:
    """Write the tiny model with ``edit(meta)`` applied to its ``meta`` object (no validation
    on the way: that is the reader's job)."""
    tensors, md = kep_parts
    meta = json.loads(md["meta"])
    edit(meta)
    md = dict(md, meta=json.dumps(meta))
    path.write_bytes(st_save({k: v.contiguous() for k, v in tensors.items()}, metadata=md))
    return str(path)


def valid_checkpoint() -> dict:
    """A KEP checkpoint of a randomly pruned ResNet-20 that ``export`` accepts."""
    torch.manual_seed(0)
    model, masks = random_pruned_model(build_model("resnet20"), K=4, seed=0)
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "model_name": "resnet20", "num_classes": 10, "dataset": "cifar",
            "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26], "input_shape": [3, 32, 32],
            "model": model.state_dict(), "masks": masks,
            "kep": {"method": "kep", "keep": {n: 4 for n in masks}}, "stage": "done",
            "epoch": 1, "optimizer": None, "pruner": None, "args": {},
            "history": [{"stage": "finetune", "epoch": 1, "test_top1": 10.0}],
            "stage_seconds": {"dense": 1.0, "reg": 1.0, "finetune": 1.0}, "dense_top1": 10.0}


@pytest.fixture(scope="module")
def good_ckpt():
    return valid_checkpoint()


def _set(key, value):
    def edit(ck):
        ck[key] = value
    return edit


def _first_mask(value):
    def edit(ck):
        name = next(iter(ck["masks"]))
        ck["masks"] = dict(ck["masks"], **{name: value})
    return edit


def _nan_weight(ck):
    k = next(k for k, v in ck["model"].items() if v.is_floating_point())
    w = ck["model"][k].clone()
    w.view(-1)[0] = math.nan
    ck["model"] = dict(ck["model"], **{k: w})


BAD_CHECKPOINTS = {
    "masks-list": (_set("masks", [1, 2]), "masks"),
    "masks-string": (_set("masks", "abc"), "masks"),
    "mask-int": (_first_mask(1), "mask"),
    "mask-shape": (_first_mask(torch.ones(2, 2, dtype=torch.bool)), "mask"),
    "num-classes-string": (_set("num_classes", "abc"), "num_classes"),
    "num-classes-negative": (_set("num_classes", -1), "num_classes"),
    "model-name-list": (_set("model_name", ["resnet20"]), "model_name"),
    "mean-length": (_set("mean", [0.5, 0.5]), "mean"),
    "mean-string": (_set("mean", "abc"), "mean"),
    "std-zero": (_set("std", [0.0, 0.2, 0.2]), "std"),
    "weights-nan": (_nan_weight, "NaN"),
    "model-list": (_set("model", [1]), "model"),
    "kep-tensor": (_set("kep", {"keep": torch.zeros(2)}), "kep"),
}


def _bad_checkpoint(good, tmp_path, case) -> str:
    edit, _ = BAD_CHECKPOINTS[case]
    ck = dict(good)
    edit(ck)
    path = tmp_path / f"{case}.pt"
    torch.save(ck, path)
    return str(path)


# ------------------------------------------------------------------------------------------
# 1. .kep metadata

BAD_META = {
    "mean-string": (_set("mean", "abc"), "mean"),
    "mean-two-values": (_set("mean", [0.5, 0.5]), "mean"),
    "mean-missing": (lambda m: m.pop("mean"), "mean"),
    "std-missing": (lambda m: m.pop("std"), "std"),
    "mean-nan": (_set("mean", [math.nan, 0.5, 0.5]), "mean"),
    "std-zero": (_set("std", [0.0, 0.25, 0.25]), "std"),
    "std-negative": (_set("std", [-0.25, 0.25, 0.25]), "std"),
    "std-inf": (_set("std", [math.inf, 0.25, 0.25]), "std"),
    "checkpoint-list": (_set("checkpoint", [1]), "checkpoint"),
    "num-classes-string": (_set("num_classes", "ten"), "num_classes"),
    "model-name-dict": (_set("model_name", {}), "model_name"),
    "input-absurd": (_set("input_shape", [3, 1048576, 1048576]), "input_shape"),
    "input-huge-channels": (_set("input_shape", [100000, 32, 32]), "input_shape"),
}


@pytest.mark.parametrize("case", sorted(BAD_META))
def test_kep_bad_meta_is_rejected_by_the_reader(kep_parts, tmp_path, case):
    edit, needle = BAD_META[case]
    path = kep_with_meta(kep_parts, tmp_path / "bad.kep", edit)
    with deadline(DEADLINE_S), pytest.raises(KepFormatError, match=needle) as e:
        load_kep(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("case", ["mean-string", "std-zero", "checkpoint-list", "input-absurd"])
def test_kep_bad_meta_one_line_in_golden_and_inspect(cli, kep_parts, tiny_cifar, tmp_path,
                                                      one_line_error, case):
    edit, needle = BAD_META[case]
    path = kep_with_meta(kep_parts, tmp_path / "bad.kep", edit)
    t0 = time.perf_counter()
    code = cli(["golden", "-q", "--model", path, "--data-dir", tiny_cifar])
    assert needle in one_line_error(code)
    assert time.perf_counter() - t0 < 10   # refused before any work or allocation
    assert needle in one_line_error(cli(["inspect", path]))


def test_valid_kep_meta_edit_still_loads(kep_parts, tmp_path):
    """The helper itself: an edit that keeps the metadata valid loads (so the cases above fail
    for their defect, not for the way they are built)."""
    path = kep_with_meta(kep_parts, tmp_path / "ok.kep", _set("mean", [0.1, 0.2, 0.3]))
    assert load_kep(path).meta["mean"] == [0.1, 0.2, 0.3]


def test_size_bounds_are_documented():
    text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "kep-format.md")).read()
    assert MAX_ACTIVATION == 2**24 and "`C * H * W <= 2^24`" in text
    assert MAX_SPATIAL == 4096 and "`H, W <= 4096`" in text


def test_conv_only_network_is_refused_by_golden_in_one_line(cli, tiny_cifar, tmp_path,
                                                            one_line_error):
    kep = random_kep(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4),
                                   nn.ReLU()), n_calib=4)
    assert [ly.op for ly in kep.layers] == ["conv"]     # the format allows it
    save_kep(tmp_path / "conv.kep", kep)
    assert load_kep(tmp_path / "conv.kep").layers[0].op == "conv"
    code = cli(["golden", "-q", "--model", tmp_path / "conv.kep", "--data-dir", tiny_cifar])
    assert "classifier" in one_line_error(code)


def test_golden_runs_the_valid_tiny_model(cli, tiny_kep, tiny_cifar, tmp_path, capsys):
    save_kep(tmp_path / "ok.kep", tiny_kep)
    assert cli(["golden", "-q", "--model", tmp_path / "ok.kep", "--data-dir", tiny_cifar,
                "--out", tmp_path / "r.json"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["images"] == 30


# ------------------------------------------------------------------------------------------
# 2. checkpoints with wrong-typed fields, in every command that reads them

def test_valid_checkpoint_exports(cli, good_ckpt, tiny_cifar, tmp_path, capsys):
    torch.save(good_ckpt, tmp_path / "good.pt")
    assert load_checkpoint(tmp_path / "good.pt")["model_name"] == "resnet20"
    code = cli(["export", "-q", "--checkpoint", tmp_path / "good.pt", "--out",
                tmp_path / "m.kep", "--data-dir", tiny_cifar, "--calib-batches", "1",
                "--calib-batch-size", "8"])
    assert code == 0, capsys.readouterr().err
    assert load_kep(tmp_path / "m.kep").meta["model_name"] == "resnet20"


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_in_export(cli, good_ckpt, tiny_cifar, tmp_path, one_line_error, case):
    path = _bad_checkpoint(good_ckpt, tmp_path, case)
    code = cli(["export", "-q", "--checkpoint", path, "--out", tmp_path / "m.kep",
                "--data-dir", tiny_cifar, "--calib-batches", "1", "--calib-batch-size", "8"])
    assert BAD_CHECKPOINTS[case][1] in one_line_error(code)
    assert not (tmp_path / "m.kep").exists()


@pytest.mark.parametrize("case", ["masks-list", "mask-int", "num-classes-negative",
                                  "model-name-list", "mean-length"])
def test_bad_checkpoint_in_golden(cli, good_ckpt, tiny_kep, tiny_cifar, tmp_path,
                                  one_line_error, case):
    path = _bad_checkpoint(good_ckpt, tmp_path, case)
    save_kep(tmp_path / "ok.kep", tiny_kep)
    code = cli(["golden", "-q", "--model", tmp_path / "ok.kep", "--data-dir", tiny_cifar,
                "--checkpoint", path])
    assert BAD_CHECKPOINTS[case][1] in one_line_error(code)


TRAIN = ["--batch-size", "16", "--dense-epochs", "1", "--reg-epochs", "1", "--finetune-epochs",
         "1", "--subset", "48", "--test-subset", "20", "--no-progress", "--threads", "1", "-q"]


@pytest.mark.parametrize("case", ["masks-string", "num-classes-string", "model-name-list",
                                  "mean-length", "weights-nan"])
def test_bad_checkpoint_as_pretrained(cli, good_ckpt, tiny_cifar, tmp_path, one_line_error,
                                      case):
    path = _bad_checkpoint(dict(good_ckpt, masks=None), tmp_path, case)
    code = cli(["cifar", "--data-dir", tiny_cifar, "--out", tmp_path / "run", "--pretrained",
                path, "--no-export"] + TRAIN)
    assert BAD_CHECKPOINTS[case][1] in one_line_error(code)


@pytest.mark.parametrize("case", ["masks-list", "mask-int", "num-classes-negative",
                                  "mean-string"])
def test_bad_checkpoint_for_resume(cli, good_ckpt, tiny_cifar, tmp_path, one_line_error, case):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(_bad_checkpoint(good_ckpt, tmp_path, case), out / "checkpoint.pt")
    code = cli(["cifar", "--data-dir", tiny_cifar, "--out", out, "--resume", "--no-export"]
               + TRAIN)
    assert BAD_CHECKPOINTS[case][1] in one_line_error(code)


# ------------------------------------------------------------------------------------------
# 4. numeric options and layer names

CIFAR_BAD_OPTIONS = [
    (["--penalty-every", "0"], "--penalty-every"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "64"], "fewer than one batch"),     # 48 training images
    (["--lr", "0"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "-1"], "--lr"),
    (["--prune-lr", "inf"], "--prune-lr"),
    (["--penalty-cap", "nan"], "--penalty-cap"),
    (["--penalty-step", "-1e-3"], "--penalty-step"),
    (["--calib-batches", "0"], "--calib-batches"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(10**30)], "--seed"),
    (["--threads", str(10**12)], "--threads"),
    (["--subset", "-5"], "--subset"),
    (["--target-macs", "nan"], "--target-macs"),
    (["--dense-epochs", "1.5"], "--dense-epochs"),
    (["--ignore", "no.such.layer"], "no.such.layer"),
    (["--ignore", "layer1.0.conv1,bogus"], "bogus"),
]


@pytest.mark.parametrize("extra, needle", CIFAR_BAD_OPTIONS,
                         ids=[" ".join(x)[:30] for x, _ in CIFAR_BAD_OPTIONS])
def test_cifar_bad_numeric_options(cli, tiny_cifar, tmp_path, one_line_error, extra, needle):
    code = cli(["cifar", "--data-dir", tiny_cifar, "--out", tmp_path / "run", "--no-export"]
               + TRAIN + extra)
    line = one_line_error(code)
    assert needle in line
    if needle == "no.such.layer":
        assert "layer1.0.conv1" in line      # a few valid names are listed
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_cifar_known_ignored_layer_is_accepted(cli, tiny_cifar, tmp_path, capsys):
    code = cli(["cifar", "--data-dir", tiny_cifar, "--out", tmp_path / "run", "--no-export",
                "--ignore", "layer1.0.conv1", "--halt-after", "2"] + TRAIN)
    assert code == 3, capsys.readouterr().err
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    keep = ck["pruner"]["keep"]
    assert "layer1.0.conv1" not in keep and "layer1.0.conv2" in keep


@pytest.mark.parametrize("extra, needle", [
    (["--image-size", "0"], "--image-size"),
    (["--penalty-every", "0"], "--penalty-every"),
    (["--lr", "nan"], "--lr"),
])
def test_imagenet_bad_numeric_options(cli, tmp_path, one_line_error, extra, needle):
    code = cli(["imagenet", "--data-dir", tmp_path, "--out", tmp_path / "run", "-q"] + extra)
    assert needle in one_line_error(code)


@pytest.mark.parametrize("extra, needle", [
    (["--calib-batches", "0"], "--calib-batches"),
    (["--calib-batch-size", "-1"], "--calib-batch-size"),
    (["--calib-batches", "abc"], "--calib-batches"),
    (["--percentile", "nan"], "--percentile"),
    (["--percentile", "0"], "--percentile"),
    (["--seed", "-1"], "--seed"),
])
def test_export_bad_numeric_options(cli, good_ckpt, tiny_cifar, tmp_path, one_line_error, extra,
                                    needle):
    torch.save(good_ckpt, tmp_path / "good.pt")
    code = cli(["export", "-q", "--checkpoint", tmp_path / "good.pt", "--out",
                tmp_path / "m.kep", "--data-dir", tiny_cifar] + extra)
    assert needle in one_line_error(code)


@pytest.mark.parametrize("extra, needle", [
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "abc"], "--batch-size"),
    (["--n", "0"], "--n"),
    (["--n", "-3"], "--n"),
    (["--shuffle", "--seed", "-1"], "--seed"),
])
def test_golden_bad_numeric_options(cli, tiny_kep, tiny_cifar, tmp_path, one_line_error, extra,
                                    needle):
    save_kep(tmp_path / "ok.kep", tiny_kep)
    code = cli(["golden", "-q", "--model", tmp_path / "ok.kep", "--data-dir", tiny_cifar]
               + extra)
    assert needle in one_line_error(code)


# ------------------------------------------------------------------------------------------
# 5. data folders: decompression bombs and FIFOs

def png_declaring(width: int, height: int) -> bytes:
    """A small PNG file whose header declares ``width x height`` pixels."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture
def data_copy(tiny_cifar, tmp_path):
    """A private copy of the tiny data set, free to be damaged."""
    dst = tmp_path / "data"
    shutil.copytree(tiny_cifar, dst)
    return dst


def _commands(data, tmp_path, good_ckpt, tiny_kep):
    torch.save(good_ckpt, tmp_path / "good.pt")
    save_kep(tmp_path / "ok.kep", tiny_kep)
    return {
        "golden": ["golden", "-q", "--model", tmp_path / "ok.kep", "--data-dir", data,
                   "--no-cache"],
        "export": ["export", "-q", "--checkpoint", tmp_path / "good.pt", "--out",
                   tmp_path / "m.kep", "--data-dir", data, "--calib-batches", "1",
                   "--calib-batch-size", "8", "--no-cache"],
        "cifar": ["cifar", "--data-dir", data, "--out", tmp_path / "run", "--no-export",
                  "--no-cache"] + TRAIN,
    }


@pytest.mark.parametrize("pixels", [(30000, 30000), (10000, 10000)])
@pytest.mark.parametrize("command", ["golden", "export", "cifar"])
def test_decompression_bomb_is_refused_naming_the_file(cli, data_copy, tmp_path, good_ckpt,
                                                       tiny_kep, one_line_error, command,
                                                       pixels):
    split = "train" if command in ("export", "cifar") else "test"
    bomb = data_copy / split / "cat" / "0001.png"
    bomb.write_bytes(png_declaring(*pixels))
    code = cli(_commands(data_copy, tmp_path, good_ckpt, tiny_kep)[command])
    line = one_line_error(code)
    assert "0001.png" in line and "bomb" in line


@pytest.mark.parametrize("command", ["golden", "export", "cifar"])
def test_fifo_named_like_an_image_is_never_opened(cli, data_copy, tmp_path, good_ckpt,
                                                  tiny_kep, one_line_error, command):
    split = "train" if command in ("export", "cifar") else "test"
    fifo = data_copy / split / "dog" / "0000.png"
    fifo.unlink()
    os.mkfifo(fifo)
    code = cli(_commands(data_copy, tmp_path, good_ckpt, tiny_kep)[command])
    assert "not a regular file" in one_line_error(code)


@pytest.mark.parametrize("command", ["golden", "inspect", "export", "pretrained"])
def test_fifo_given_as_model_or_checkpoint(cli, good_ckpt, tiny_kep, tiny_cifar, tmp_path,
                                           one_line_error, command):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    torch.save(good_ckpt, tmp_path / "good.pt")
    save_kep(tmp_path / "ok.kep", tiny_kep)
    argv = {"golden": ["golden", "-q", "--model", fifo, "--data-dir", tiny_cifar],
            "inspect": ["inspect", fifo],
            "export": ["export", "-q", "--checkpoint", fifo, "--out", tmp_path / "m.kep",
                       "--data-dir", tiny_cifar],
            "pretrained": ["cifar", "--data-dir", tiny_cifar, "--out", tmp_path / "run",
                           "--pretrained", fifo] + TRAIN}[command]
    assert "not a regular file" in one_line_error(cli(argv))


@pytest.mark.parametrize("content", [b"", b"garbage, not an image", png_declaring(32, 32)[:40]])
def test_empty_or_garbage_image(cli, data_copy, tmp_path, good_ckpt, tiny_kep, one_line_error,
                                content):
    (data_copy / "test" / "cat" / "0002.png").write_bytes(content)
    code = cli(_commands(data_copy, tmp_path, good_ckpt, tiny_kep)["golden"])
    assert "0002.png" in one_line_error(code)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "PPM", "TIFF", "GIF"])
def test_common_formats_are_read_whatever_the_suffix(tmp_path, fmt):
    from PIL import Image

    from kep_train.data.folders import read_rgb
    Image.new("RGB", (5, 4), (10, 20, 30)).save(tmp_path / "x.png", format=fmt)
    assert read_rgb(tmp_path / "x.png").size == (5, 4)


def test_eps_content_is_not_handed_to_ghostscript(tmp_path):
    from kep_train.data.folders import read_rgb
    (tmp_path / "x.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n")
    with pytest.raises(KepError, match="x.png"):
        read_rgb(tmp_path / "x.png")


# ------------------------------------------------------------------------------------------
# 6. outputs that cannot be written are refused before the work

def test_output_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    for bad in (tmp_path / "dir", str(tmp_path / "new") + os.sep, tmp_path / "file" / "x.json"):
        with pytest.raises(KepError):
            check_output_file(bad)
    for bad in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(KepError):
            check_output_dir(bad)
    assert check_output_file(tmp_path / "new" / "deeper" / "x.json")
    assert check_output_file(tmp_path / "file")          # replaced when written
    assert check_output_dir(tmp_path / "dir") and check_output_dir(tmp_path / "a" / "b")


def test_golden_out_checked_before_the_work(cli, tiny_kep, tiny_cifar, tmp_path,
                                            one_line_error):
    save_kep(tmp_path / "ok.kep", tiny_kep)
    (tmp_path / "somedir").mkdir()
    (tmp_path / "file").write_text("x")
    for out in (str(tmp_path / "somedir") + os.sep, tmp_path / "somedir",
                tmp_path / "file" / "r.json"):
        code = cli(["golden", "-q", "--model", tmp_path / "ok.kep", "--data-dir",
                    tmp_path / "no-data", "--out", out])
        assert "--out" in one_line_error(code)   # not "data folder does not exist": out first


def test_export_and_inspect_out_checked(cli, good_ckpt, tiny_kep, tiny_cifar, tmp_path,
                                        one_line_error):
    torch.save(good_ckpt, tmp_path / "good.pt")
    save_kep(tmp_path / "ok.kep", tiny_kep)
    (tmp_path / "somedir").mkdir()
    (tmp_path / "file").write_text("x")
    code = cli(["export", "-q", "--checkpoint", tmp_path / "good.pt", "--out",
                tmp_path / "somedir", "--data-dir", tiny_cifar])
    assert "--out" in one_line_error(code)
    code = cli(["inspect", tmp_path / "ok.kep", "--out", tmp_path / "file" / "t.json"])
    assert "--out" in one_line_error(code)


@pytest.mark.parametrize("case", ["out-is-file", "out-under-file", "report-is-dir"])
def test_cifar_out_checked_before_training(cli, tiny_cifar, tmp_path, one_line_error, case):
    (tmp_path / "file").write_text("x")
    out = {"out-is-file": tmp_path / "file", "out-under-file": tmp_path / "file" / "run",
           "report-is-dir": tmp_path / "run"}[case]
    if case == "report-is-dir":
        (out / "report.json").mkdir(parents=True)
    t0 = time.perf_counter()
    code = cli(["cifar", "--data-dir", tiny_cifar, "--out", out] + TRAIN)
    one_line_error(code)
    assert time.perf_counter() - t0 < 10
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# ------------------------------------------------------------------------------------------
# 7. temp files of killed writes, and file modes

def test_temp_files_are_named_and_removed_by_the_next_run(cli, good_ckpt, tiny_cifar,
                                                          tmp_path, capsys):
    torch.save(good_ckpt, tmp_path / "good.pt")
    stale = tmp_path / ".m.kep.tmp-abcd1234"
    other = tmp_path / ".notes.txt.tmp-abcd1234"
    stale.write_bytes(b"")
    other.write_bytes(b"")
    code = cli(["export", "-q", "--checkpoint", tmp_path / "good.pt", "--out",
                tmp_path / "m.kep", "--data-dir", tiny_cifar, "--calib-batches", "1",
                "--calib-batch-size", "8"])
    assert code == 0, capsys.readouterr().err
    assert not stale.exists() and other.exists()   # only the temps of this output
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name and p != other]


def test_temp_file_name_and_cleanup(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", spy)
    atomic_write_bytes(tmp_path / "out.bin", b"1")
    assert seen[0].startswith(".out.bin.tmp-") and len(seen[0]) == len(".out.bin.tmp-") + 8
    (tmp_path / ".out.bin.tmp-zzzz9999").write_bytes(b"")
    (tmp_path / "out.bin.tmp-zzzz9999").write_bytes(b"")    # not ours: no leading dot
    assert [p.name for p in remove_stale_temps(tmp_path)] == [".out.bin.tmp-zzzz9999"]
    assert (tmp_path / "out.bin.tmp-zzzz9999").exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "x.bin", b"data")
    finally:
        os.umask(old)
    assert (tmp_path / "x.bin").stat().st_mode & 0o777 == mode


def test_output_dir_check_removes_only_old_foreign_temps(tmp_path):
    fresh = tmp_path / ".metrics.jsonl.tmp-abcd1234"     # perhaps being written right now
    old = tmp_path / ".plot.png.tmp-abcd1234"
    for p in (fresh, old):
        p.write_bytes(b"")
    t = time.time() - 3600
    os.utime(old, (t, t))
    check_output_dir(tmp_path)
    assert fresh.exists() and not old.exists()
