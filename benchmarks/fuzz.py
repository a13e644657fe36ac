# SPDX-License-Identifier: Apache-2.0
"""Fuzzing of every input the toolkit reads: ``.kep`` files, training checkpoints, board profiles
and image-folder data sets, each run the way the command line runs it.

    python benchmarks/fuzz.py --cases 2000 --seed 0 --out fuzz.json
    python benchmarks/fuzz.py --cases 200 --classes kep,profile

Every case starts from a valid input, mutates it (bit flips, truncation, metadata edits with
random JSON values, field type/value changes, decompression bombs, FIFOs, ...) and runs one
command on it (``python -m kep_train inspect/golden/export/cifar`` as an in-process call of the
command's ``main(argv)``, or ``kep_hw.board.profiles.parse_profile``) in a forked child process,
with stdout/stderr captured and a per-case deadline. Each case ends as one of:

- ``ok``: refused with exit code 2 and exactly one ``error: ...`` line, or accepted (exit 0)
  where the mutated input may be valid;
- ``traceback``: an exception escaped ``main`` (or ``Traceback`` appeared on stderr);
- ``crash``: the child died on a signal (segfault, out of memory) or with another exit code;
- ``hang``: no answer within ``--deadline`` seconds (the child is killed);
- ``silent``: exit 0 for an input the mutator knows to be invalid (each mutator decides, from
  the format's specification, whether its result must be refused, must be accepted, or may be
  either);
- ``messy``: exit code 2 without exactly one ``error:`` line;
- ``false_refusal``: a refusal of an input the mutator knows to be valid;
- ``harness``: the fuzzer failed to build the case (a defect of this script).

Adding a class of inputs (e.g. the serial link) is one subclass of :class:`FuzzClass` registered
with ``@register("name")``: ``setup`` builds its valid inputs once, ``case`` makes one mutated
case. Exit code 1 when any case is not ``ok``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path

OUTCOMES = ("ok", "traceback", "crash", "hang", "silent", "messy", "false_refusal", "harness")
REJECT, ACCEPT, EITHER = "reject", "accept", "either"


# ------------------------------------------------------------------------------------------
# cases and the registry of classes

@dataclass
class Case:
    """One mutated input and how to run it.

    ``run`` is called in the child process and returns the exit code (``SystemExit`` is caught);
    ``expect`` is :data:`REJECT`, :data:`ACCEPT` or :data:`EITHER`; ``ok_codes`` are the exit
    codes that mean "accepted" (0, and 3 for a training run stopped by ``--halt-after``).
    """

    run: object
    expect: str
    mutator: str
    detail: str
    argv: list = field(default_factory=list)
    ok_codes: tuple = (0,)


class FuzzClass:
    """A class of inputs: valid ones built once by :meth:`setup`, mutated per case."""

    name = "?"
    #: whether the cases read the shared valid inputs (:class:`Assets`, built once)
    needs_assets = True

    def __init__(self, assets: "Assets"):
        self.assets = assets

    def setup(self) -> None:
        """Build this class's valid inputs (runs once, in a child process)."""

    def case(self, rng: random.Random, workdir: Path) -> Case:
        """One mutated case whose files live in ``workdir`` (runs in the child process)."""
        raise NotImplementedError


CLASSES: dict[str, type] = {}


def register(name: str):
    """Class decorator: make a :class:`FuzzClass` available as ``--classes name``."""
    def deco(cls):
        cls.name = name
        CLASSES[name] = cls
        return cls
    return deco


# ------------------------------------------------------------------------------------------
# shared valid inputs

TRAIN = ["--model", "resnet20", "--batch-size", "8", "--dense-epochs", "1", "--reg-epochs", "1",
         "--finetune-epochs", "1", "--test-subset", "10", "--no-progress", "--threads", "1",
         "--seed", "0", "--calib-batches", "1", "-q"]


def kep_cli(argv):
    """``python -m kep_train ARGV`` in this process."""
    from kep_train.__main__ import main
    return main([str(a) for a in argv])


class Assets:
    """Valid inputs shared by the classes, under ``root``: a tiny CIFAR-10 image folder, a tiny
    ``.kep`` classifier, a pruned checkpoint, and a training run stopped in its reg stage
    (``run/checkpoint.pt``, ``run/dense.pt``)."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.kep = root / "tiny.kep"
        self.pruned = root / "pruned.pt"
        self.run_dir = root / "run"
        self.cache = root / "cache"

    def build(self) -> None:
        import numpy as np
        import torch
        from PIL import Image

        from kep_train.data.cifar import CIFAR10_CLASSES
        from kep_train.export.kepfile import save_kep
        from kep_train.models import VGG, build_model
        from kep_train.testing import random_kep, random_pruned_model
        from kep_train.train.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
        gen = np.random.default_rng(0)
        for split, n in (("train", 3), ("test", 1)):
            for c, cls in enumerate(CIFAR10_CLASSES):
                d = self.data / split / cls
                d.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    base = np.array([(c * 25) % 256, (c * 70) % 256, (c * 140) % 256])
                    img = np.clip(base + gen.normal(0, 40, (32, 32, 3)), 0, 255)
                    Image.fromarray(img.astype(np.uint8)).save(d / f"{i:04d}.png")
        save_kep(self.kep, random_kep(VGG([4, "M", 6]), K=3, seed=1, n_calib=4))
        torch.manual_seed(0)
        model, masks = random_pruned_model(build_model("resnet20"), K=4, seed=0)
        torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                    "model_name": "resnet20", "num_classes": 10, "dataset": "cifar",
                    "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26],
                    "input_shape": [3, 32, 32], "model": model.state_dict(), "masks": masks,
                    "kep": {"method": "kep", "keep": {n: 4 for n in masks}}, "stage": "done",
                    "epoch": 1, "optimizer": None, "pruner": None,
                    "args": {"data_dir": str(self.data)},
                    "history": [{"stage": "finetune", "epoch": 1, "test_top1": 10.0}],
                    "stage_seconds": {"dense": 1.0, "reg": 1.0, "finetune": 1.0},
                    "dense_top1": 10.0}, self.pruned)
        code = _call(kep_cli, ["cifar", "--data-dir", self.data, "--out", self.run_dir,
                               "--no-export", "--halt-after", "2"] + TRAIN)
        if code != 3:
            raise RuntimeError(f"the reference training run ended with exit code {code}")


# ------------------------------------------------------------------------------------------
# random values

_STRINGS = ["", "abc", "conv", "linear", "input", "done", "reg", "nan", "resnet20", "x" * 300,
            "\u00e9\u4e2d\U0001f600", "../../etc/passwd", "0", "1e9"]
_INTS = [0, 1, -1, 2, 3, 4, 9, 10, 16, 17, 47, 48, 255, 256, 65535, 65537, 2**24, 2**31 - 1,
         2**31, 2**63 - 1, -2**63, 10**30]
_FLOATS = [0.0, -0.0, 0.5, 1.0, -1.0, 1e-300, 1e300, math.nan, math.inf, -math.inf, 99.99,
           2.5e-3]


def random_scalar(rng: random.Random):
    kind = rng.random()
    if kind < 0.1:
        return None
    if kind < 0.2:
        return rng.random() < 0.5
    if kind < 0.5:
        return rng.choice(_INTS) if rng.random() < 0.7 else rng.randint(-1000, 1000)
    if kind < 0.75:
        return rng.choice(_FLOATS) if rng.random() < 0.7 else rng.uniform(-10, 10)
    return rng.choice(_STRINGS)


def random_json(rng: random.Random, depth: int = 0):
    """A random JSON-like value (NaN and infinities included)."""
    r = rng.random()
    if depth >= 2 or r < 0.6:
        return random_scalar(rng)
    if r < 0.85:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["a", "k", "name", "op", "0"]) + str(i): random_json(rng, depth + 1)
            for i in range(rng.randint(0, 3))}


def random_tensor(rng: random.Random):
    import torch
    dtype = rng.choice([torch.float32, torch.float64, torch.int64, torch.bool, torch.uint8])
    shape = [rng.randint(0, 4) for _ in range(rng.randint(0, 4))]
    t = torch.zeros(shape, dtype=torch.float64)
    if t.numel():
        t = t.uniform_(-2, 2, generator=torch.Generator().manual_seed(rng.randint(0, 999)))
        if rng.random() < 0.3:
            t.view(-1)[0] = rng.choice([math.nan, math.inf])
    return t.to(dtype) if dtype != torch.bool else t > 0


def random_value(rng: random.Random, tensors: bool = True):
    """A random JSON-like value, or (for checkpoints) a tensor or a list of tensors."""
    if tensors and rng.random() < 0.2:
        return random_tensor(rng) if rng.random() < 0.8 else [random_tensor(rng)]
    return random_json(rng)


def is_number(v) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _mutate_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Random bit flips (1 .. 8) anywhere in ``data``."""
    raw = bytearray(data)
    n = rng.randint(1, 8)
    for _ in range(n):
        pos = rng.randrange(len(raw))
        raw[pos] ^= 1 << rng.randrange(8)
    return bytes(raw), f"{n} bit flips"


# ------------------------------------------------------------------------------------------
# .kep files

_KEP_REQUIRED = {"input_shape", "input_scale", "mean", "std"}
_KEP_TYPED = {"model_name": (str, type(None)), "dataset": (str, type(None)),
              "checkpoint": (str, type(None)), "toolkit_version": (str, type(None)),
              "format_version": (str,), "kep": (dict, type(None)),
              "calibration": (dict, type(None))}
_CONV_FIELDS = {"kernel_size", "stride", "padding", "relu", "residual", "sparse", "K"}
_LAYER_FIELDS = {"name", "op", "input", "in_shape", "out_shape", "in_scale", "out_scale"}


def kep_meta_valid(key: str, value, original, channels: int) -> bool:
    """Would ``meta[key] = value`` leave a valid file (docs/kep-format.md section 4)?"""
    if key == "input_shape":
        return value == original and type(value) is list
    if key == "input_scale":
        return is_number(value) and is_number(original) and value == original
    if key in ("mean", "std"):
        return (isinstance(value, list) and len(value) == channels
                and all(is_number(x) and (x > 0 or key == "mean") for x in value))
    if key in _KEP_TYPED:
        return type(value) in _KEP_TYPED[key]
    if key == "num_classes":
        return value is None or (type(value) is int and 1 <= value <= 2**16)
    if key == "float_top1":
        return value is None or (is_number(value) and 0 <= value <= 100)
    return True


def kep_graph_field_invalid(op: str, key: str, value) -> bool:
    """Is ``layer[key] = value`` certainly invalid for a layer of kind ``op``?"""
    if key == "name":
        return not isinstance(value, str) or not value or value == "input"
    if key == "op":
        return value not in ("conv", "maxpool", "avgpool", "linear")
    if key == "input":
        return not isinstance(value, str)
    if key in ("in_shape", "out_shape"):
        return not (isinstance(value, list) and all(type(v) is int and v >= 1 for v in value))
    if key in ("in_scale", "out_scale"):
        return not (is_number(value) and value > 0)
    if op in ("conv", "maxpool") and key in ("kernel_size", "stride"):
        return not (type(value) is int and 1 <= value <= 16)
    if op in ("conv", "maxpool") and key == "padding":
        return not (type(value) is int and value >= 0)
    if op == "conv" and key in ("relu", "sparse"):
        return type(value) is not bool
    if op == "conv" and key == "K":
        return not (type(value) is int and value >= 1)
    if op == "conv" and key == "residual":
        return not (value is None or isinstance(value, str))
    return False


def _kep_required_fields(op: str) -> set:
    extra = {"conv": _CONV_FIELDS, "maxpool": {"kernel_size", "stride", "padding"}}
    return _LAYER_FIELDS | extra.get(op, set())


@register("kep")
class KepFiles(FuzzClass):
    """``.kep`` files: bit flips, truncation, trailing bytes, header length, metadata and graph
    edits with random JSON values, tensor value/dtype/shape edits, missing and extra tensors.
    Run with ``inspect`` (most cases) or ``golden``."""

    def case(self, rng, workdir):
        import torch
        from safetensors.torch import load, save
        data = self.assets.kep.read_bytes()
        n = int.from_bytes(data[:8], "little")
        md = json.loads(data[8:8 + n])["__metadata__"]
        meta, graph = json.loads(md["meta"]), json.loads(md["graph"])
        tensors = load(data)
        kind = rng.choices(["bitflip", "truncate", "append", "header_len", "meta", "graph",
                            "shape", "tensor_value", "tensor_type", "tensor_set",
                            "top_metadata"],
                           [3, 2, 1, 1, 5, 5, 2, 3, 1, 1, 1])[0]
        expect, out = EITHER, None
        if kind == "bitflip":
            out, detail = _mutate_bytes(rng, data)
        elif kind == "truncate":
            cut = rng.randrange(len(data))
            out, detail, expect = data[:cut], f"cut at byte {cut} of {len(data)}", REJECT
        elif kind == "append":
            extra = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
            out, detail, expect = data + extra, f"{len(extra)} bytes appended", REJECT
        elif kind == "header_len":
            v = rng.choice([0, 1, n - 1, n + 1, len(data), 2**23 + 1, 2**63, 2**64 - 1])
            out = struct.pack("<Q", v) + data[8:]
            detail, expect = f"header length {v} (was {n})", REJECT
        elif kind == "meta":
            key = rng.choice(sorted(meta) + ["num_classes", "float_top1", "extra_key"])
            original = meta.get(key)
            if rng.random() < 0.2 and key in meta:
                del meta[key]
                detail = f"meta {key!r} deleted"
                expect = REJECT if key in _KEP_REQUIRED else ACCEPT
            else:
                value = random_json(rng)
                if key in ("mean", "std") and rng.random() < 0.5:   # right type, odd values
                    value = [random_scalar(rng) for _ in range(rng.choice([2, 3, 3, 4]))]
                meta[key] = value
                detail = f"meta {key!r} = {value!r}"[:200]
                valid = kep_meta_valid(key, value, original, channels=3)   # 3x32x32 input
                expect = ACCEPT if valid else REJECT
            md = dict(md, meta=json.dumps(meta))
        elif kind == "graph":
            layer = rng.choice(graph)
            op = layer.get("op")
            key = rng.choice(sorted(layer) + ["extra_key"])
            if rng.random() < 0.2 and key in layer:
                del layer[key]
                detail = f"layer {layer.get('name')!r}: {key!r} deleted"
                expect = REJECT if key in _kep_required_fields(op) else ACCEPT
            else:
                value = random_json(rng)
                layer[key] = value
                detail = f"layer {layer.get('name')!r}: {key!r} = {value!r}"[:200]
                expect = REJECT if kep_graph_field_invalid(op, key, value) else EITHER
            md = dict(md, graph=json.dumps(graph))
        elif kind == "shape":      # absurd and odd sizes: refused before any allocation
            dims = [rng.choice([0, 1, 3, 32, 4096, 4097, 65536, 65537, 2**20, 2**20 + 1,
                                2**31, -1]) for _ in range(rng.choice([1, 3, 3, 4]))]
            if rng.random() < 0.5:
                original = meta["input_shape"]
                meta["input_shape"] = dims
                md = dict(md, meta=json.dumps(meta))
                detail = f"meta input_shape = {dims}"
                expect = ACCEPT if dims == original else REJECT
            else:
                layer = rng.choice(graph)
                key = rng.choice(["in_shape", "out_shape"])
                original = layer[key]
                layer[key] = dims
                md = dict(md, graph=json.dumps(graph))
                detail = f"layer {layer['name']!r}: {key} = {dims}"
                expect = ACCEPT if dims == original else REJECT
        elif kind == "tensor_value":
            name = rng.choice(sorted(tensors))
            t = tensors[name].clone()
            field_ = name.rsplit(".", 1)[1]
            if t.is_floating_point():
                v = rng.choice(_FLOATS)
            else:
                info = torch.iinfo(t.dtype)
                v = rng.choice([info.min, info.max, 0, 1, -1, 9, 15, 47, 48, 2**16, 2**24]
                               + [rng.randint(info.min, info.max)])
                v = min(max(v, info.min), info.max)
            if t.numel():
                i = rng.randrange(t.numel())
                t.view(-1)[i] = torch.tensor(v, dtype=torch.float64).to(t.dtype)
                v = t.view(-1)[i].item()        # as stored (1e-300 is 0.0 in float32)
            tensors[name] = t
            detail = f"tensor {name!r}: one element = {v!r}"
            expect = _tensor_value_expect(field_, v, name, graph, tensors)
        elif kind == "tensor_type":
            name = rng.choice(sorted(tensors))
            new = rng.choice([torch.int8, torch.uint8, torch.int32, torch.float32])
            if rng.random() < 0.5 or new == tensors[name].dtype:
                t = tensors[name].flatten()
                t = t[:-1] if t.numel() > 1 and rng.random() < 0.5 else torch.cat([t, t[:1]])
                tensors[name] = t.contiguous()
                detail = f"tensor {name!r}: shape {list(t.shape)}"
            else:
                tensors[name] = tensors[name].to(new)
                detail = f"tensor {name!r}: dtype {new}"
            expect = REJECT
        elif kind == "tensor_set":
            if rng.random() < 0.5:
                name = rng.choice(sorted(tensors))
                del tensors[name]
                detail = f"tensor {name!r} removed"
            else:
                name = rng.choice(["extra", "conv.values", "features.0.bias2"])
                tensors[name] = torch.zeros(2, dtype=torch.int8)
                detail = f"tensor {name!r} added"
            expect = REJECT
        else:  # top_metadata
            key = rng.choice(["format", "format_version", "graph", "meta"])
            value = rng.choice(["", "2", "kep", "0", "[]", "{}", "null", "[1]", "\u00e9"])
            if md[key] == value:
                value = value + "x"
            md = dict(md, **{key: value})
            detail, expect = f"metadata {key!r} = {value!r}", REJECT
        if out is None:
            out = save({k: v.contiguous() for k, v in tensors.items()}, metadata=md)
        path = workdir / "case.kep"
        path.write_bytes(out)
        if rng.random() < 0.3:
            argv = ["golden", "-q", "--model", path, "--data-dir", self.assets.data]
            if expect == ACCEPT:
                expect = EITHER     # valid but perhaps no classifier: golden may refuse it
        else:
            argv = ["inspect", path]
        return Case(lambda: kep_cli(argv), expect, f"kep/{kind}", detail, argv)


def _tensor_value_expect(field_: str, v, name: str, graph: list, tensors: dict) -> str:
    """Whether a tensor with one element set to ``v`` is still valid (docs section 3)."""
    layer = name.rsplit(".", 1)[0]
    spec = next((d for d in graph if d.get("name") == layer), {})
    if field_ in ("values", "weight", "bias"):
        return ACCEPT
    if field_ == "index":
        kk = spec.get("kernel_size", 3) ** 2
        return REJECT if v >= kk or v < 0 else EITHER
    if field_ == "mult":
        return ACCEPT if 0 <= v < 2**16 else REJECT
    if field_ == "shift":
        return ACCEPT if 1 <= v <= 47 else REJECT
    if field_ == "res_mult":
        if spec.get("residual") is None:
            return ACCEPT if v == 0 else REJECT
        return ACCEPT if 0 <= v < 2**24 else REJECT
    if field_ == "w_scale":
        return ACCEPT if math.isfinite(v) and v > 0 else REJECT
    return EITHER


# ------------------------------------------------------------------------------------------
# checkpoints

_STAGES = ("dense", "reg", "finetune")


def _plain(v, depth=0) -> bool:
    if depth > 32:
        return False
    if v is None or type(v) in (bool, int, float, str):
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(x, depth + 1) for k, x in v.items())
    return False


def checkpoint_field_expect(key: str, value, present: bool, base: dict, command: str) -> str:
    """Whether a checkpoint whose field ``key`` is ``value`` (``present`` False: deleted) must be
    refused, must be accepted, or may be either, by ``command`` (export, golden, pretrained,
    resume). An independent reading of the checkpoint format (kep_train/train/checkpoint.py)."""
    import torch
    resume = command == "resume"
    if not present:
        if key in ("format", "version", "model_name", "num_classes", "model"):
            return REJECT
        if key in ("stage", "epoch"):
            return REJECT if resume else ACCEPT
        if key in ("mean", "std"):
            return REJECT if command == "export" else ACCEPT
        if key == "pruner" and resume:
            return REJECT                   # a KEP run's reg stage needs its pruner
        return EITHER if resume else ACCEPT
    if key == "format":
        return ACCEPT if isinstance(value, str) and value == "kep-checkpoint" else REJECT
    if key == "version":
        return ACCEPT if type(value) is int and value == 1 else REJECT
    if key in ("model_name", "num_classes"):
        return ACCEPT if type(value) is type(base[key]) and value == base[key] else REJECT
    if key == "model":
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()):
            return REJECT
        if set(value) != set(base["model"]):
            return REJECT
        for k, v in value.items():
            if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all()):
                return REJECT
            if v.shape != base["model"][k].shape:
                return REJECT
        return EITHER
    if key == "masks":
        if value is None or (isinstance(value, dict) and not value):
            return EITHER
        if not isinstance(value, dict):
            return REJECT
        for k, m in value.items():
            w = base["model"].get(f"{k}.weight") if isinstance(k, str) else None
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or w is None \
                    or w.shape != m.shape:
                return REJECT
        return EITHER if command != "pretrained" else REJECT
    if key in ("mean", "std"):
        ok = (isinstance(value, (list, tuple)) and len(value) == 3
              and all(is_number(x) and (x > 0 or key == "mean") for x in value))
        return ACCEPT if ok else REJECT
    if key == "input_shape":
        if value is None:
            return ACCEPT
        ok = (isinstance(value, (list, tuple)) and len(value) == 3
              and all(type(v) is int and 1 <= v <= 2**16 for v in value) and value[0] == 3)
        return ACCEPT if ok else REJECT
    if key == "dataset":
        return ACCEPT if isinstance(value, str) else REJECT
    if key in ("kep", "args"):
        if value is None:
            return EITHER if resume else ACCEPT
        if not (isinstance(value, dict) and _plain(value)):
            return REJECT
        keep = value.get("keep") if key == "kep" else None
        if keep is not None and not (isinstance(keep, dict) and all(
                type(v) is int and v >= 1 for v in keep.values())):
            return REJECT
        return EITHER
    if key == "stage":
        ok = isinstance(value, str) and value in (*_STAGES, "done")
        return (EITHER if resume else ACCEPT) if ok else REJECT
    if key == "epoch":
        ok = type(value) is int and 0 <= value <= 10**7
        return (EITHER if resume else ACCEPT) if ok else REJECT
    if key == "history":
        ok = isinstance(value, list) and _plain(value) and all(
            isinstance(r, dict) and r.get("stage") in (*_STAGES, "pretrained")
            and "test_top1" in r and (r["test_top1"] is None or is_number(r["test_top1"]))
            for r in value)
        return (EITHER if resume else ACCEPT) if ok else REJECT
    if key == "stage_seconds":
        ok = isinstance(value, dict) and all(k in _STAGES and is_number(v) and v >= 0
                                             for k, v in value.items())
        return (EITHER if resume else ACCEPT) if ok else REJECT
    if key == "dense_top1":
        return ACCEPT if value is None or (is_number(value) and 0 <= value <= 100) else REJECT
    if key == "optimizer":
        if value is None:
            return EITHER if resume else ACCEPT
        return EITHER if _optimizer_shape_ok(value) else REJECT
    if key == "pruner":
        if value is None:
            return REJECT if resume else ACCEPT
        return EITHER if _pruner_shape_ok(value) else REJECT
    return EITHER if resume else ACCEPT       # unknown keys are ignored


def _optimizer_shape_ok(v) -> bool:
    import torch
    if not (isinstance(v, dict) and isinstance(v.get("state"), dict)
            and isinstance(v.get("param_groups"), list)):
        return False
    for g in v["param_groups"]:
        if not (isinstance(g, dict) and isinstance(g.get("params"), list)
                and all(type(i) is int for i in g["params"])):
            return False
        if not all(k == "params" or x is None or type(x) is bool or (is_number(x) and x >= 0)
                   for k, x in g.items()):
            return False
    return all(type(k) is int and isinstance(s, dict) and all(
        isinstance(n, str) and (x is None or isinstance(x, torch.Tensor) or is_number(x))
        for n, x in s.items()) for k, s in v["state"].items())


def _pruner_shape_ok(v) -> bool:
    import torch
    return (isinstance(v, dict)
            and all(type(v.get(k)) is int and v[k] >= 0 for k in ("growth_steps", "iterations"))
            and type(v.get("growth_stopped")) is bool
            and isinstance(v.get("keep"), dict)
            and all(isinstance(k, str) and type(x) is int and x >= 1
                    for k, x in v["keep"].items())
            and isinstance(v.get("prior"), dict)
            and all(isinstance(k, str) and isinstance(x, torch.Tensor) and x.dtype == torch.bool
                    for k, x in v["prior"].items()))


def _nested_edit(rng, ck: dict, key: str) -> str | None:
    """Change one part inside the field ``key`` (a dict or list); returns a description or
    None when the field has no parts."""
    import torch
    v = ck.get(key)
    if isinstance(v, dict) and v:
        sub = rng.choice(sorted(v, key=str))
        inner = v[sub]
        if key == "optimizer" and sub == "param_groups" and inner:
            g = dict(inner[0])
            name = rng.choice(sorted(g))
            g[name] = random_value(rng)
            ck[key] = dict(v, param_groups=[g] + list(inner[1:]))
            return f"{key}.param_groups[0].{name} = {g[name]!r}"[:200]
        if isinstance(inner, torch.Tensor) and rng.random() < 0.6:
            t = inner.clone()
            if t.is_floating_point() and t.numel():
                t.view(-1)[rng.randrange(t.numel())] = rng.choice([math.nan, math.inf, 0.0,
                                                                  1e30])
                new = t
            else:
                new = random_tensor(rng)
            ck[key] = dict(v, **{sub: new})
            return f"{key}[{sub!r}] = tensor {new.dtype} {list(new.shape)}"
        new = random_value(rng)
        ck[key] = dict(v, **{sub: new})
        return f"{key}[{sub!r}] = {new!r}"[:200]
    if isinstance(v, list) and v:
        i = rng.randrange(len(v))
        new = random_value(rng)
        ck[key] = v[:i] + [new] + v[i + 1:]
        return f"{key}[{i}] = {new!r}"[:200]
    return None


@register("checkpoint")
class Checkpoints(FuzzClass):
    """Training checkpoints: one field deleted, replaced by a random value (JSON-like values,
    tensors), or changed inside (a dict entry, a list element, a tensor element), then read by
    ``export``, ``golden --checkpoint``, ``cifar --pretrained`` or ``cifar --resume``."""

    def case(self, rng, workdir):
        import torch
        a = self.assets
        command = rng.choices(["export", "golden", "pretrained", "resume"], [4, 3, 2, 2])[0]
        src = {"export": a.pruned, "golden": a.pruned, "pretrained": a.run_dir / "dense.pt",
               "resume": a.run_dir / "checkpoint.pt"}[command]
        base = torch.load(src, map_location="cpu", weights_only=True)
        ck = dict(base)
        key = rng.choice(sorted(ck) + ["extra_field"])
        r = rng.random()
        detail = None
        if r < 0.15 and key in ck:
            del ck[key]
            detail = f"{key!r} deleted"
        elif r < 0.5:
            detail = _nested_edit(rng, ck, key)
        if detail is None:
            ck[key] = random_value(rng)
            detail = f"{key!r} = {_short(ck[key])}"
        present = key in ck
        expect = checkpoint_field_expect(key, ck.get(key), present, base, command)
        path = workdir / "case.pt"
        torch.save(ck, path)
        if command == "export":
            argv = ["export", "-q", "--checkpoint", path, "--out", workdir / "m.kep",
                    "--data-dir", a.data, "--calib-batches", "1", "--calib-batch-size", "8"]
            if expect == ACCEPT:
                expect = EITHER    # e.g. other masks: the exporter may refuse unequal K
        elif command == "golden":
            argv = ["golden", "-q", "--model", a.kep, "--data-dir", a.data, "--checkpoint", path]
        elif command == "pretrained":
            argv = ["cifar", "--data-dir", a.data, "--out", workdir / "run", "--pretrained",
                    path, "--no-export", "--halt-after", "1"] + TRAIN
        else:
            out = workdir / "run"
            shutil.copytree(a.run_dir, out)
            torch.save(ck, out / "checkpoint.pt")
            argv = ["cifar", "--data-dir", a.data, "--out", out, "--resume", "--no-export"] + TRAIN
        return Case(lambda: kep_cli(argv), expect, f"checkpoint/{command}", detail, argv,
                    ok_codes=(0, 3))


def _short(v) -> str:
    try:
        import torch
        if isinstance(v, torch.Tensor):
            return f"tensor {v.dtype} {list(v.shape)}"
    except ImportError:
        pass
    return repr(v)[:200]


# ------------------------------------------------------------------------------------------
# board profiles

_PROFILE_STR = {("", "name"), ("", "platform"), ("", "device"), ("clock", "resource"),
                ("uart", "resource"), ("defaults", "weights")}
_PROFILE_OPT_STR = {("", "description"), ("uart", "tx_enable"), ("uart", "rx_pin"),
                    ("uart", "tx_pin"), ("uart", "io_type")}
_PROFILE_NUM = {("clock", "freq_mhz"): (1.0, 1000.0, False),
                ("clock", "default_mhz"): (1.0, 1000.0, False),
                ("uart", "baud"): (300, 50_000_000, True),
                ("budget", "luts"): (1, 10_000_000, True),
                ("budget", "dsps"): (1, 10_000_000, True),
                ("budget", "brams"): (1, 10_000_000, True),
                ("defaults", "pes"): (1, 4096, True), ("defaults", "px"): (1, 4096, True),
                ("defaults", "lanes"): (1, 4096, True)}
_PROFILE_REQUIRED = ({k for k in _PROFILE_STR} | {k for k in _PROFILE_NUM}) - {
    ("uart", "baud"), ("defaults", "px"), ("defaults", "lanes")}
_PROFILE_SECTIONS = ("clock", "uart", "budget", "defaults")


def toml_value(v) -> str:
    """A TOML literal for a JSON-like value (NaN and infinities included)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()
                               if x is not None) + "}"
    raise TypeError(type(v))


def toml_normalize(v):
    """``v`` as :func:`toml_value` writes it (TOML has no null: None values disappear)."""
    if isinstance(v, list):
        return [toml_normalize(x) for x in v if x is not None]
    if isinstance(v, dict):
        return {k: toml_normalize(x) for k, x in v.items() if x is not None}
    return v


def toml_dumps(data: dict) -> str:
    """A minimal TOML writer for profile-shaped data (scalars first, then one table per dict)."""
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in data.items()
             if not isinstance(v, dict) and v is not None]
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"\n[{json.dumps(k)}]")
            lines += [f"{json.dumps(kk)} = {toml_value(vv)}" for kk, vv in v.items()
                      if vv is not None]
    return "\n".join(lines) + "\n"


def profile_value_invalid(section: str, key: str, value) -> bool:
    """Is ``[section] key = value`` certainly invalid (kep_hw/board/profiles.py rules)?"""
    if (section, key) in _PROFILE_STR:
        return not isinstance(value, str) or not value.strip() or (
            key == "weights" and value not in ("embedded", "stream")) or (
            key == "platform" and (value.count(":") != 1 or not all(value.split(":"))))
    if (section, key) in _PROFILE_OPT_STR:
        return not isinstance(value, str) or (key != "description" and not value.strip())
    if (section, key) in _PROFILE_NUM:
        lo, hi, integer = _PROFILE_NUM[(section, key)]
        kinds = (int,) if integer else (int, float)
        return (isinstance(value, bool) or not isinstance(value, kinds)
                or not lo <= value <= hi)
    if (section, key) == ("", "program"):
        return not (isinstance(value, list) and all(isinstance(x, str) for x in value))
    if section == "" and key in _PROFILE_SECTIONS:
        return not isinstance(value, dict)
    return True     # unknown keys are rejected


@register("profile")
class BoardProfiles(FuzzClass):
    """Board profiles (``boards/*.toml``, read only): a key set to a random TOML value, deleted
    or added, or the text mutated (lines deleted or duplicated, truncation, bit flips);
    parsed by :func:`kep_hw.board.profiles.parse_profile` as the ``kep_hw`` commands do."""

    def setup(self):
        import importlib.resources
        root = importlib.resources.files("kep_hw.boards")
        self.texts = {p.name: p.read_text() for p in root.iterdir() if p.name.endswith(".toml")}

    def case(self, rng, workdir):
        import tomllib

        from kep_common.errors import cli_errors
        from kep_hw.board.profiles import parse_profile
        if not hasattr(self, "texts"):
            self.setup()
        name = rng.choice(sorted(self.texts))
        text = self.texts[name]
        kind = rng.choices(["set", "delete", "add", "text"], [6, 2, 1, 3])[0]
        expect = EITHER
        if kind == "text":
            lines = text.splitlines(keepends=True)
            how = rng.choice(["delete_line", "dup_line", "truncate", "bitflip", "empty"])
            if how == "delete_line":
                i = rng.randrange(len(lines))
                out, detail = "".join(lines[:i] + lines[i + 1:]), f"line {i + 1} deleted"
            elif how == "dup_line":
                i = rng.randrange(len(lines))
                out = "".join(lines[:i + 1] + lines[i:])
                detail = f"line {i + 1} duplicated"
                if lines[i].strip() and not lines[i].lstrip().startswith("#"):
                    expect = REJECT         # a key or table defined twice is invalid TOML
            elif how == "truncate":
                cut = rng.randrange(len(text))
                out, detail = text[:cut], f"cut at character {cut}"
            elif how == "bitflip":
                raw, detail = _mutate_bytes(rng, text.encode())
                out = raw.decode("utf-8", errors="replace")
            else:
                out, detail, expect = "", "empty text", REJECT
        else:
            data = tomllib.loads(text)
            section = rng.choice(("",) + _PROFILE_SECTIONS)
            table = data if not section else data[section]
            keys = sorted(k for k, v in table.items() if section or not isinstance(v, dict))
            if kind == "add" or not keys:
                key = rng.choice(["extra", "clock_mhz", "Name", "baud"])
                if key in table:
                    key = "extra"
                value = table[key] = toml_normalize(random_json(rng))
                detail = f"[{section}] {key} = {value!r} added"[:200]
                if value is None:       # TOML has no null: nothing is added
                    expect = EITHER
                else:
                    expect = REJECT if profile_value_invalid(section, key, value) else EITHER
            elif kind == "delete":
                key = rng.choice(keys)
                del table[key]
                detail = f"[{section}] {key} deleted"
                expect = REJECT if (section, key) in _PROFILE_REQUIRED else EITHER
            else:
                key = rng.choice(keys)
                value = toml_normalize(random_json(rng))
                if (section, key) in _PROFILE_NUM and rng.random() < 0.5:
                    value = rng.choice(_INTS + _FLOATS)
                table[key] = value
                detail = f"[{section}] {key} = {value!r}"[:200]
                if value is None:       # TOML has no null: the key disappears
                    expect = REJECT if (section, key) in _PROFILE_REQUIRED else EITHER
                else:
                    expect = REJECT if profile_value_invalid(section, key, value) else EITHER
            out = toml_dumps(data)
        path = workdir / name
        path.write_text(out)
        return Case(cli_errors(lambda: parse_profile(path.read_text(), name) and 0),
                    expect, f"profile/{kind}", f"{name}: {detail}", ["parse_profile", path])


# ------------------------------------------------------------------------------------------
# image-folder data sets

def png_bytes(width: int, height: int, idat: bytes | None = None, color: int = 2) -> bytes:
    """A PNG file declaring ``width x height`` pixels (the data need not match)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64) if idat is None else idat
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND",
                                                                                     b"")


def image_bytes(mode: str, size=(32, 32), fmt="PNG") -> bytes:
    import numpy as np
    from PIL import Image
    arr = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@register("data")
class DataFolders(FuzzClass):
    """Image folders: one image replaced by a decompression bomb, a FIFO, an empty or garbage
    file, a truncated or bit-flipped PNG, an image of the wrong size, other colour modes, a
    folder, a dangling or good symbolic link, EPS content; class folders added or removed;
    read by ``golden`` (test split), ``export`` (train split) or ``cifar`` (both)."""

    def case(self, rng, workdir):
        a = self.assets
        data = workdir / "data"
        shutil.copytree(a.data, data)
        command = rng.choices(["golden", "export", "cifar"], [4, 3, 2])[0]
        split = {"golden": "test", "export": "train"}.get(command) or rng.choice(["train",
                                                                                   "test"])
        cls_dir = data / split / rng.choice(sorted(p.name for p in (data / split).iterdir()))
        victim = rng.choice(sorted(cls_dir.iterdir()))
        good = victim.read_bytes()
        kind = rng.choice(["bomb", "bomb_warn", "fifo", "empty", "garbage", "truncated",
                           "bitflip", "wrong_size", "gray", "rgba", "palette", "other_format",
                           "folder", "dangling_link", "good_link", "eps", "extra_class",
                           "missing_class", "not_an_image_suffix"])
        expect, detail = REJECT, kind
        victim.unlink()
        if kind == "bomb":
            w, h = rng.choice([(30000, 30000), (65535, 65535), (100000, 2000), (9000, 9000)])
            victim.write_bytes(png_bytes(w, h))
            detail = f"PNG declaring {w}x{h}"
        elif kind == "bomb_warn":
            victim.write_bytes(png_bytes(10000, 10000))
        elif kind == "fifo":
            os.mkfifo(victim)
        elif kind == "empty":
            victim.write_bytes(b"")
        elif kind == "garbage":
            victim.write_bytes(b"\0" + bytes(rng.randrange(256) for _ in range(rng.randint(1,
                                                                                            500))))
        elif kind == "truncated":
            cut = rng.randrange(len(good))
            victim.write_bytes(good[:cut])
            detail, expect = f"PNG cut at byte {cut} of {len(good)}", EITHER
        elif kind == "bitflip":
            out, detail = _mutate_bytes(rng, good)
            victim.write_bytes(out)
            expect = EITHER
        elif kind == "wrong_size":
            size = rng.choice([(31, 32), (32, 33), (64, 64), (1, 1)])
            victim.write_bytes(image_bytes("RGB", size))
            detail = f"{size[0]}x{size[1]} image"
        elif kind in ("gray", "rgba", "palette"):
            victim.write_bytes(image_bytes({"gray": "L", "rgba": "RGBA", "palette": "P"}[kind]))
            expect = ACCEPT
        elif kind == "other_format":        # the suffix does not decide the format
            fmt = rng.choice(["JPEG", "WEBP", "BMP", "PPM", "TIFF", "GIF"])
            victim.write_bytes(image_bytes("RGB", fmt=fmt))
            detail, expect = f"{fmt} content", ACCEPT
        elif kind == "folder":
            victim.mkdir()
        elif kind == "dangling_link":
            victim.symlink_to(workdir / "nowhere.png")
        elif kind == "good_link":
            (workdir / "target.png").write_bytes(good)
            victim.symlink_to(workdir / "target.png")
            expect = ACCEPT
        elif kind == "eps":
            victim.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n"
                               b"0 0 moveto 32 32 lineto stroke\nshowpage\n")
        elif kind == "extra_class":
            victim.write_bytes(good)
            extra = data / split / "zebra"
            extra.mkdir()
            (extra / "0000.png").write_bytes(good)
        elif kind == "missing_class":
            victim.write_bytes(good)
            shutil.rmtree(cls_dir)
        else:   # not_an_image_suffix: a stray file next to the images is ignored
            victim.write_bytes(good)
            (cls_dir / "notes.txt").write_text("not an image")
            expect = ACCEPT
        detail = f"{split}/{cls_dir.name}/{victim.name}: {detail}"
        if command == "golden":
            argv = ["golden", "-q", "--model", a.kep, "--data-dir", data, "--no-cache"]
        elif command == "export":
            argv = ["export", "-q", "--checkpoint", a.pruned, "--out", workdir / "m.kep",
                    "--data-dir", data, "--calib-batches", "1", "--calib-batch-size", "8",
                    "--no-cache"]
        else:
            argv = ["cifar", "--data-dir", data, "--out", workdir / "run", "--no-export",
                    "--no-cache", "--halt-after", "1"] + TRAIN
        return Case(lambda: kep_cli(argv), expect, f"data/{kind}", f"{command}: {detail}", argv,
                    ok_codes=(0, 3))


# ------------------------------------------------------------------------------------------
# running cases in forked children

def _call(fn, *args) -> int:
    """``fn(*args)`` as the command line runs it: the exit code, also from ``SystemExit``."""
    try:
        return int(fn(*args) or 0)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


def _limit_memory(extra_gib: float) -> None:
    """Cap the address space of this (child) process at its current size + ``extra_gib``."""
    try:
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        cap = vm + int(extra_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    except (OSError, ValueError, StopIteration):
        pass


def _child(fn, casedir: Path, mem_gib: float) -> None:
    """In the forked child: run ``fn()`` (which returns a :class:`Case` to run, or runs
    setup), stdout/stderr to files, the result to ``result.json``; never returns."""
    code = 99
    try:
        os.setpgid(0, 0)
        out = os.open(casedir / "stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(casedir / "stderr.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(err, 2)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        import torch
        torch.set_num_threads(1)
        _limit_memory(mem_gib)
        result = {"code": None, "escaped": None, "harness": None}
        try:
            case = fn()
        except Exception as e:      # a defect of the fuzzer itself, not of the toolkit
            traceback.print_exc()
            case, result["harness"] = None, type(e).__name__
        if isinstance(case, Case):
            (casedir / "case.json").write_text(json.dumps(
                {"mutator": case.mutator, "detail": case.detail, "expect": case.expect,
                 "argv": [str(a) for a in case.argv], "ok_codes": list(case.ok_codes)}))
            try:
                result["code"] = _call(case.run)
            except BaseException as e:      # an exception escaping main: a traceback
                traceback.print_exc()
                result["escaped"] = type(e).__name__
        sys.stdout.flush()
        sys.stderr.flush()
        (casedir / "result.json").write_text(json.dumps(result))
        code = 0
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
            sys.stderr.flush()
    finally:
        os._exit(code)


def run_forked(fn, casedir: Path, deadline: float, mem_gib: float) -> tuple[str, float]:
    """Run ``fn`` in a forked child; returns ("exited", seconds), ("hang", ..) or
    ("signal N", ..) / ("exit N", ..) when the child itself failed."""
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        _child(fn, casedir, mem_gib)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() - t0 > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hang", time.perf_counter() - t0
        time.sleep(0.005)
    dt = time.perf_counter() - t0
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}", dt
    if os.WEXITSTATUS(status) != 0:
        return f"exit {os.WEXITSTATUS(status)}", dt
    return "exited", dt


def classify(state: str, casedir: Path) -> tuple[str, dict]:
    """The outcome of a finished case and its record."""
    info = {}
    with contextlib.suppress(OSError, ValueError):
        info = json.loads((casedir / "case.json").read_text())
    err = ""
    with contextlib.suppress(OSError):
        err = (casedir / "stderr.txt").read_text(errors="replace")
    rec = dict(info, stderr_tail=err.strip()[-600:])
    if state == "hang":
        return "hang", rec
    if state != "exited":
        return "crash", dict(rec, state=state)
    res = json.loads((casedir / "result.json").read_text())
    rec["code"] = res["code"]
    if res.get("harness"):
        return "harness", rec
    if res["escaped"] or "Traceback" in err:
        return "traceback", rec
    code, expect = res["code"], info.get("expect", EITHER)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if code in info.get("ok_codes", [0]):
        rec["result"] = "accepted"
        return ("silent" if expect == REJECT else "ok"), rec
    if code == 2:
        rec["result"] = "refused"
        if len(lines) != 1 or not lines[0].startswith("error:"):
            return "messy", rec
        return ("false_refusal" if expect == ACCEPT else "ok"), rec
    return "crash", rec


def fuzz(cases: int, seed: int, classes: list[str], workdir: Path, *, deadline: float = 60.0,
         mem_gib: float = 6.0, keep: bool = False, progress: bool = True,
         max_findings: int = 50) -> dict:
    """Run ``cases`` cases round-robin over ``classes``; returns the report (see module
    docstring). Must run in a process that has not yet computed with torch (children are
    forked, and OpenMP thread pools do not survive a fork)."""
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        raise ValueError(f"unknown classes {unknown}; known: {', '.join(CLASSES)}")
    os.environ["KEP_CACHE"] = str(workdir / "assets" / "cache")
    _preload()
    assets = Assets(workdir / "assets")
    if any(CLASSES[name].needs_assets for name in classes):
        state, dt = run_forked(lambda: assets.build(), _mkdir(workdir / "setup"), 600, mem_gib)
        result = workdir / "setup" / "result.json"
        if state != "exited" or not result.exists() or json.loads(result.read_text())["harness"]:
            raise RuntimeError(f"setup failed ({state}): "
                               + (workdir / "setup" / "stderr.txt").read_text()[-2000:])
    objs = {name: CLASSES[name](assets) for name in classes}
    counts = {name: dict.fromkeys(OUTCOMES, 0) for name in classes}
    mutators: dict[str, dict] = {}
    findings = []
    seconds = {name: 0.0 for name in classes}
    t_start = time.perf_counter()
    for i in range(cases):
        name = classes[i % len(classes)]
        rng = random.Random(f"{seed}:{i}")
        casedir = _mkdir(workdir / "cases" / f"{i:06d}")
        obj = objs[name]
        state, dt = run_forked(lambda: obj.case(rng, casedir), casedir, deadline, mem_gib)
        outcome, rec = classify(state, casedir)
        seconds[name] += dt
        counts[name][outcome] += 1
        m = mutators.setdefault(rec.get("mutator", f"{name}/?"),
                                dict.fromkeys(OUTCOMES + ("accepted", "refused"), 0))
        m[outcome] += 1
        if rec.get("result"):
            m[rec["result"]] += 1
        if outcome != "ok" and len(findings) < max_findings:
            findings.append(dict(rec, case=i, cls=name, outcome=outcome, seconds=round(dt, 2)))
        if not keep and (outcome == "ok" or len(findings) >= max_findings):
            shutil.rmtree(casedir, ignore_errors=True)
        if progress and (i + 1) % 50 == 0:
            bad = sum(sum(v for k, v in c.items() if k != "ok") for c in counts.values())
            print(f"{i + 1}/{cases} cases, {bad} findings, "
                  f"{time.perf_counter() - t_start:.0f} s", file=sys.stderr, flush=True)
    total = dict.fromkeys(OUTCOMES, 0)
    for c in counts.values():
        for k, v in c.items():
            total[k] += v
    return {"cases": cases, "seed": seed, "classes": classes, "deadline_s": deadline,
            "counts": counts, "total": total, "by_mutator": mutators, "findings": findings,
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "wall_seconds": round(time.perf_counter() - t_start, 1)}


def _preload() -> None:
    """Import what the cases use once, before forking (imports only: no torch computation)."""
    import importlib
    for name in ("torch", "numpy", "PIL.Image", "PIL.PngImagePlugin", "PIL.JpegImagePlugin",
                 "safetensors.torch", "kep_train.__main__", "kep_train.export.cli",
                 "kep_train.export.quantize", "kep_train.golden.evaluate",
                 "kep_train.train.cifar", "kep_train.train.report", "kep_train.testing",
                 "kep_hw.board.profiles", "matplotlib", "matplotlib.figure", "tqdm"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/fuzz.py",
                                description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="classes: " + ", ".join(CLASSES))
    p.add_argument("--cases", type=int, default=200, help="number of cases (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", default=",".join(CLASSES),
                   help="comma-separated classes (default: all: %(default)s)")
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--deadline", type=float, default=60.0,
                   help="seconds per case before it counts as a hang (default 60)")
    p.add_argument("--mem-gib", type=float, default=6.0,
                   help="address space a case may add, GiB (default 6)")
    p.add_argument("--workdir", help="keep the cases here (default: a temp folder, removed)")
    p.add_argument("--keep", action="store_true", help="keep every case folder")
    args = p.parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if args.cases < 1 or not classes or any(c not in CLASSES for c in classes):
        p.error(f"--cases must be >= 1 and --classes a list of {', '.join(CLASSES)}")
    from kep_common.fileio import atomic_write_json, check_output_file, environment_info
    if args.out:
        check_output_file(args.out, "--out")
    with contextlib.ExitStack() as stack:
        if args.workdir:
            workdir = _mkdir(Path(args.workdir))
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kep-fuzz-")))
        report = fuzz(args.cases, args.seed, classes, workdir, deadline=args.deadline,
                      mem_gib=args.mem_gib, keep=args.keep)
    report["environment"] = environment_info()
    t = report["total"]
    print(f"{report['cases']} cases in {report['wall_seconds']} s: " + ", ".join(
        f"{k} {v}" for k, v in t.items()))
    for name, c in report["counts"].items():
        print(f"  {name:<11}" + "  ".join(f"{k} {v}" for k, v in c.items()))
    for f in report["findings"][:10]:
        print(f"  case {f['case']} {f['outcome']}: {f.get('mutator')} {f.get('detail')}")
    if args.out:
        atomic_write_json(args.out, report)
    return 0 if t["ok"] == report["cases"] else 1


# ------------------------------------------------------------------------------------------
# the serial link (kep_hw.host.run against a scripted, misbehaving board)

_SERIAL_BAD_OPTIONS = [("--timeout", "nan"), ("--timeout", "inf"), ("--timeout", "0"),
                       ("--timeout", "-1"), ("--image-timeout", "nan"),
                       ("--image-timeout", "-2"), ("--baud", "-1"), ("--baud", "0"),
                       ("--pes", "1000000000"), ("--pes", "8x3"), ("--fmax", "nan"),
                       ("--fmax", "-5"), ("--n", "-1"), ("--lanes", "3")]


@register("serial")
class SerialLink(FuzzClass):
    """The host runtime (``python -m kep_hw.run --port``) against
    :class:`kep_hw.testing.ScriptedBoard` on a pseudo-terminal or a ``socket://`` port: a
    random misbehaviour (silent, hang-up, garbage, dripped frames, endless ``NEED``, wrong or
    short ``INFO``, a clock of 0 kHz, ``ERROR``, bad CRC, unexpected frame, short ``RESULT``)
    at ``PING`` or ``IMAGE``, embedded or streamed, sometimes with a bad numeric option. A
    well-behaved board must be accepted (its ``RESULT`` is the golden output)."""

    needs_assets = False

    def case(self, rng, workdir):
        import numpy as np
        from PIL import Image

        from kep_train.data.cifar import CIFAR10_CLASSES
        from kep_train.export.kepfile import save_kep
        from kep_hw.host.run import main as run_main
        from kep_hw.system.plan import plan_network
        from kep_hw.testing import ScriptedBoard, random_network
        gen = np.random.default_rng(rng.randrange(2**32))
        for split in ("train", "test"):
            for cls in CIFAR10_CLASSES:
                d = workdir / "data" / split / cls
                d.mkdir(parents=True)
                Image.fromarray(gen.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    d / "0000.png")
        kep = random_network(rng.randrange(1000), size=32)
        save_kep(workdir / "m.kep", kep)
        plan = plan_network(kep, po=8, lanes=4)
        behaviour = rng.choice(ScriptedBoard.BEHAVIOURS)
        opts = dict(at=rng.choice(["PING", "IMAGE"]), streamed=rng.random() < 0.5,
                    drip=rng.choice([0.005, 0.02, 0.1, 0.4]), garbage=rng.randint(1, 3000),
                    seed=rng.randrange(2**16), transport=rng.choice(["pty", "socket"]),
                    px=1 if rng.random() < 0.9 else 2,
                    cycles=rng.choice([0, 1, 1234, 2**32 - 1]))
        extra = ["--timeout", "0.5", "--image-timeout", str(rng.choice([1.0, 2.0, 3.0]))]
        if behaviour == "zero-clock" and rng.random() < 0.5:
            extra += ["--fmax", "25"]
        bad = rng.choice(_SERIAL_BAD_OPTIONS) if rng.random() < 0.15 else None
        if bad:
            extra += list(bad)
        if bad or opts["px"] != 1:
            expect = REJECT
        elif behaviour == "good" or (behaviour == "zero-clock" and "--fmax" in extra):
            expect = ACCEPT
        elif behaviour == "drip":
            expect = EITHER         # a fast enough drip finishes within the deadline
        else:
            expect = REJECT
        argv = ["--model", workdir / "m.kep", "--data-dir", workdir / "data", "--n", "1",
                "--pes", "8", "--quiet", *extra]

        def run():
            with ScriptedBoard(plan, behaviour, kep=kep, **opts) as board:
                return run_main(["--port", board.port] + [str(a) for a in argv])

        detail = f"{behaviour} " + " ".join(f"{k}={v}" for k, v in opts.items()) + \
            f" {' '.join(extra)}"
        return Case(run, expect, f"serial/{behaviour}", detail, ["run", "--port", "PORT",
                                                                 *argv])


if __name__ == "__main__":
    sys.exit(main())
