# SPDX-License-Identifier: Apache-2.0
"""``cifar --resume``: malformed run state in the checkpoint (one line), a finished run (exit 0,
nothing redone), and a run killed while its outputs were being written (temp files left,
outputs missing or damaged: the resume writes them again)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from kep_train.__main__ import main as kep_main
from kep_train.export.kepfile import load_kep
from kep_train.testing import deadline
from kep_train.train.checkpoint import load_checkpoint

TINY = ["--model", "resnet20", "--batch-size", "16", "--dense-epochs", "1", "--reg-epochs", "1",
        "--finetune-epochs", "1", "--subset", "48", "--test-subset", "20", "--no-progress",
        "--seed", "3", "--threads", "1", "--calib-batches", "1", "-q"]

def _run(args) -> int:
    try:
        with deadline(120):
            return kep_main([str(a) for a in args])
    except SystemExit as e:
        return e.code


def _cifar(data, out, *extra, quiet=True):
    tiny = TINY if quiet else [a for a in TINY if a != "-q"]
    return ["cifar", "--data-dir", data, "--out", out] + tiny + list(extra)


@pytest.fixture(scope="module")
def halted(tiny_cifar, tmp_path_factory):
    """A run stopped after two epochs: the dense one and the first of the reg stage (the
    checkpoint holds the pruner and the optimizer)."""
    out = tmp_path_factory.mktemp("halted") / "run"
    assert _run(_cifar(tiny_cifar, out, "--halt-after", "2")) == 3
    return out


@pytest.fixture(scope="module")
def finished(tiny_cifar, tmp_path_factory):
    """A complete run with model.kep and report.json."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert _run(_cifar(tiny_cifar, out)) == 0
    return out


@pytest.fixture
def copy_of(tmp_path):
    def copy(src):
        dst = tmp_path / "run"
        shutil.copytree(src, dst)
        return dst
    return copy


def test_halted_fixture_is_mid_run(halted):
    ck = load_checkpoint(halted / "checkpoint.pt", resume=True)
    assert (ck["stage"], ck["epoch"]) == ("reg", 1) and ck["pruner"] is not None


# ------------------------------------------------------------------------------------------
# malformed run state

def _ck_edit(key, value):
    def edit(ck, model_keys):
        ck[key] = value
    return edit


def _opt_group(**changes):
    def edit(ck, model_keys):
        ck["optimizer"]["param_groups"][0].update(changes)
    return edit


def _opt_buffer_shape(ck, model_keys):
    st = ck["optimizer"]["state"]
    k = next(iter(st))
    st[k] = {"momentum_buffer": torch.zeros(7, 7)}


def _pruner_field(key, value):
    def edit(ck, model_keys):
        ck["pruner"][key] = value
    return edit


def _pruner_prior_shape(ck, model_keys):
    name = next(iter(ck["pruner"]["prior"]))
    ck["pruner"]["prior"][name] = torch.zeros(1, 1, 3, 3, dtype=torch.bool)


BAD_STATE = {
    "stage-unknown": (_ck_edit("stage", "warmup"), "stage"),
    "stage-int": (_ck_edit("stage", 2), "stage"),
    "stage-missing": (lambda ck, _: ck.pop("stage"), "stage"),
    "epoch-string": (_ck_edit("epoch", "1"), "epoch"),
    "epoch-negative": (_ck_edit("epoch", -1), "epoch"),
    "epoch-beyond-stage": (_ck_edit("epoch", 99), "epoch"),
    "history-string": (_ck_edit("history", "abc"), "history"),
    "history-record-int": (_ck_edit("history", [1]), "history"),
    "history-no-top1": (_ck_edit("history", [{"stage": "dense", "epoch": 1}]), "history"),
    "stage-seconds-list": (_ck_edit("stage_seconds", [1.0]), "stage_seconds"),
    "stage-seconds-negative": (_ck_edit("stage_seconds", {"dense": -1.0}), "stage_seconds"),
    "stage-seconds-unknown": (_ck_edit("stage_seconds", {"warmup": 1.0}), "stage_seconds"),
    "optimizer-string": (_ck_edit("optimizer", "abc"), "optimizer"),
    "optimizer-lr-string": (_opt_group(lr="fast"), "optimizer"),
    "optimizer-momentum": (_opt_group(momentum=0.5), "optimizer"),
    "optimizer-params": (_opt_group(params=[0, 1]), "optimizer"),
    "optimizer-buffer-shape": (_opt_buffer_shape, "optimizer"),
    "pruner-string": (_ck_edit("pruner", "abc"), "pruner"),
    "pruner-missing-in-reg": (_ck_edit("pruner", None), "pruner"),
    "pruner-steps-float": (_pruner_field("growth_steps", 1.5), "pruner"),
    "pruner-keep-zero": (_pruner_field("keep", {"layer1.0.conv1": 0}), "pruner"),
    "pruner-prior-shape": (_pruner_prior_shape, "pruner"),
    "pruner-prior-layers": (_pruner_field("prior", {}), "pruner"),
    "args-list": (_ck_edit("args", [1]), "args"),
    "dense-top1-string": (_ck_edit("dense_top1", "high"), "dense_top1"),
}


@pytest.mark.parametrize("case", sorted(BAD_STATE))
def test_malformed_run_state_gives_one_line(halted, copy_of, tiny_cifar, one_line_error, case):
    out = copy_of(halted)
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    edit, needle = BAD_STATE[case]
    edit(ck, ck["model"].keys())
    torch.save(ck, out / "checkpoint.pt")
    code = _run(_cifar(tiny_cifar, out, "--resume"))
    assert needle in one_line_error(code)


def test_unmodified_halted_run_resumes(halted, copy_of, tiny_cifar):
    """The cases above fail for their defect: the same checkpoint, re-saved unchanged,
    resumes to the end."""
    out = copy_of(halted)
    torch.save(torch.load(out / "checkpoint.pt", weights_only=True), out / "checkpoint.pt")
    assert _run(_cifar(tiny_cifar, out, "--resume")) == 0
    assert load_checkpoint(out / "checkpoint.pt")["stage"] == "done"


# ------------------------------------------------------------------------------------------
# a finished run

def test_resume_of_a_finished_run_says_so_and_exits_0(finished, copy_of, tiny_cifar, capsys):
    out = copy_of(finished)
    before = {n: (out / n).read_bytes() for n in ("report.json", "model.kep", "checkpoint.pt")}
    capsys.readouterr()
    assert _run(_cifar(tiny_cifar, out, "--resume", quiet=False)) == 0
    captured = capsys.readouterr()
    assert "complete" in captured.err and "Traceback" not in captured.err
    assert "pruned top-1" in captured.out
    assert {n: (out / n).read_bytes() for n in before} == before


def test_resume_of_a_finished_run_without_export(finished, copy_of, tiny_cifar, capsys):
    out = copy_of(finished)
    (out / "model.kep").unlink()
    rep = json.loads((out / "report.json").read_text())
    rep.pop("export", None)
    (out / "report.json").write_text(json.dumps(rep))
    assert _run(_cifar(tiny_cifar, out, "--resume", "--no-export", quiet=False)) == 0
    assert "complete" in capsys.readouterr().err
    assert not (out / "model.kep").exists()


@pytest.mark.parametrize("damage", ["both-missing", "kep-missing", "report-missing",
                                    "report-truncated", "kep-truncated"])
def test_kill_while_writing_outputs_then_resume(finished, copy_of, tiny_cifar, capsys, damage):
    """A kill during write_outputs: the checkpoint says done, temp files are left beside the
    outputs, which are missing (atomic writes) or damaged (a disk-level loss)."""
    out = copy_of(finished)
    report, kep = out / "report.json", out / "model.kep"
    if damage in ("both-missing", "report-missing"):
        report.unlink()
    if damage in ("both-missing", "kep-missing"):
        kep.unlink()
    if damage == "report-truncated":
        report.write_bytes(report.read_bytes()[:20])
    if damage == "kep-truncated":
        kep.write_bytes(kep.read_bytes()[:100])
    temps = [out / ".report.json.tmp-k1ll3d00", out / ".model.kep.tmp-k1ll3d00",
             out / ".accuracy.png.tmp-k1ll3d00"]
    for t in temps:
        t.write_bytes(b"")
    capsys.readouterr()
    assert _run(_cifar(tiny_cifar, out, "--resume")) == 0, capsys.readouterr().err
    assert "writing them again" in capsys.readouterr().err
    rep = json.loads(report.read_text())
    assert rep["top1"]["pruned"] is not None and rep["export"]["path"].endswith("model.kep")
    assert load_kep(kep).layers
    assert not any(t.exists() for t in temps)
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]


def test_kill_while_writing_the_checkpoint_then_resume(halted, copy_of, tiny_cifar, capsys):
    out = copy_of(halted)
    temp = out / ".checkpoint.pt.tmp-k1ll3d00"
    temp.write_bytes(b"")
    assert _run(_cifar(tiny_cifar, out, "--resume")) == 0, capsys.readouterr().err
    assert not temp.exists()
    assert load_checkpoint(out / "checkpoint.pt")["stage"] == "done"
    assert load_kep(out / "model.kep").layers
