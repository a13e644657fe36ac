# SPDX-License-Identifier: Apache-2.0
"""Training checkpoints: written atomically, read without pickle (``weights_only=True``).

A checkpoint is a dict with these keys (all plain tensors, numbers, strings, lists, dicts):

``format`` ("kep-checkpoint"), ``version`` (1), ``model_name``, ``num_classes``, ``dataset``,
``mean``/``std`` (input normalisation, per channel, of [0, 1] pixels),
``model`` (plain ``state_dict``; pruned elements are exactly zero in it),
``masks`` (``{conv module name: bool tensor shaped like its weight}``, True = kept; only layers
that were pruned), ``kep`` (pruning settings and per-layer K), ``stage`` and ``epoch`` (where the
run stands), ``optimizer``/``scheduler`` state, ``rng`` state, ``args`` and ``history``.

:func:`load_checkpoint` checks every field's type and range in one place
(:func:`validate_checkpoint`: e.g. ``masks`` a dict of bool tensors shaped like their weights,
``num_classes`` an integer >= 1, ``mean``/``std`` one finite number per input channel with
``std > 0``, no NaN weights, a known ``stage``); every command that reads a checkpoint
(``export``, ``golden --checkpoint``, ``cifar``/``imagenet`` with ``--pretrained`` or
``--resume``) fails on a malformed one with one line, before its work.

``model_name`` is a zoo name or the user's model spec ``package.module:callable``
(:mod:`kep_train.models`). A checkpoint never causes an import by itself: rebuilding a
user model (:func:`model_from_checkpoint`, ``--resume``) needs the same spec given again on
the command line (:func:`check_model_arg`).
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from kep_common.errors import KepError
from kep_train.models import (CIFAR_MODELS, IMAGENET_MODELS, build_model, is_user_model,
                              parse_model_spec)

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "load_checkpoint", "validate_checkpoint",
           "checkpoint_from_object", "model_from_checkpoint", "load_tensors_file",
           "check_model_arg"]

CHECKPOINT_FORMAT = "kep-checkpoint"
CHECKPOINT_VERSION = 1


def load_tensors_file(path: str | os.PathLike, label: str, kind: str):
    """``torch.load(weights_only=True)`` on CPU with one-line errors.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    label : str
        How the error names the file (e.g. ``"checkpoint"``, ``"--pretrained"``).
    kind : str
        What the file should be, for the corrupt-file error (e.g. ``"a KEP checkpoint"``).

    Raises
    ------
    KepError
        Missing file, or one that torch cannot load without unpickling arbitrary objects.
    """
    if not os.path.exists(path):
        raise KepError(f"{label} {str(path)!r} does not exist")
    if not os.path.isfile(path):
        raise KepError(f"{label} {str(path)!r} is not a regular file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt input
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KepError(f"{label} {str(path)!r} is corrupt or not {kind} ({msg})")


def load_checkpoint(path: str | os.PathLike, *, resume: bool = False) -> dict:
    """Load and validate a checkpoint without unpickling arbitrary objects.

    Every field is checked here, once, for its type and range (:func:`validate_checkpoint`),
    so the commands that read checkpoints (``export``, ``golden --checkpoint``, ``cifar`` /
    ``imagenet`` with ``--pretrained`` or ``--resume``) fail with one line, not later.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    resume : bool
        Also require the fields that ``--resume`` needs (``stage``, ``epoch``).

    Raises
    ------
    KepError
        Missing, truncated, corrupt or foreign file, or a malformed field.
    """
    ckpt = load_tensors_file(path, "checkpoint", "a KEP checkpoint")
    return checkpoint_from_object(ckpt, path, resume=resume)


def checkpoint_from_object(ckpt, path: str | os.PathLike, *, resume: bool = False) -> dict:
    """:func:`load_checkpoint` on an object already loaded from ``path`` (format, version and
    every field checked)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise KepError(f"{str(path)!r} is not a KEP checkpoint")
    if type(ckpt.get("version")) is not int or ckpt["version"] != CHECKPOINT_VERSION:
        raise KepError(f"checkpoint {str(path)!r} has version {_short(ckpt.get('version'))}, "
                       f"this toolkit reads version {CHECKPOINT_VERSION}")
    validate_checkpoint(ckpt, f"checkpoint {str(path)!r}", resume=resume)
    return ckpt


# --------------------------------------------------------------------------------------------
# validation of the fields

MAX_CLASSES = 2**16
_RUN_STAGES = ("dense", "reg", "finetune")     # kep_train.train.pipeline.STAGES
_MAX_EPOCH = 10**7


def _short(v, limit: int = 50) -> str:
    """``repr(v)`` on one line, cut to about ``limit`` characters."""
    r = repr(v) if not isinstance(v, torch.Tensor) else f"a tensor of shape {list(v.shape)}"
    r = " ".join(r.split())     # a tensor inside a list prints on several lines
    return r if len(r) <= limit else r[:limit] + "..."


def _is_number(v) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _is_plain_json(v, depth: int = 0) -> bool:
    """``v`` is made of dicts with string keys, lists, strings, numbers, bools and None."""
    if depth > 32:
        return False
    if v is None or type(v) in (bool, int, float, str):
        return True
    if isinstance(v, (list, tuple)):
        return all(_is_plain_json(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _is_plain_json(x, depth + 1) for k, x in v.items())
    return False


def _check_tensor_dict(d, what, fail, *, finite: bool) -> None:
    if not isinstance(d, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                          for k, v in d.items()):
        fail(f"{what} must map names to tensors")
    if finite:
        for k, v in d.items():
            if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all()):
                fail(f"{what} {k!r} holds NaN or infinite values")


def _check_optimizer(opt, fail) -> None:
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict) \
            or not isinstance(opt.get("param_groups"), list):
        fail("'optimizer' must be an optimizer state (state, param_groups)")
    for group in opt["param_groups"]:
        if not isinstance(group, dict) or not isinstance(group.get("params"), list) \
                or not all(type(i) is int for i in group["params"]):
            fail("'optimizer' has a malformed param_groups entry")
        for k, v in group.items():
            if k != "params" and not (v is None or type(v) is bool
                                      or (_is_number(v) and v >= 0)):
                fail(f"'optimizer' setting {k!r} is {_short(v)}")
    for k, st in opt["state"].items():
        if type(k) is not int or not isinstance(st, dict) or not all(
                isinstance(n, str) and (v is None or isinstance(v, torch.Tensor) or _is_number(v))
                for n, v in st.items()):
            fail("'optimizer' has a malformed state entry")


def _check_pruner(pr, fail) -> None:
    if not isinstance(pr, dict):
        fail("'pruner' must be a dict")
    for key in ("growth_steps", "iterations"):
        if type(pr.get(key)) is not int or pr[key] < 0:
            fail(f"'pruner' {key} must be an integer >= 0, got {_short(pr.get(key))}")
    if type(pr.get("growth_stopped")) is not bool:
        fail(f"'pruner' growth_stopped must be true or false, got "
             f"{_short(pr.get('growth_stopped'))}")
    keep = pr.get("keep")
    if not isinstance(keep, dict) or not all(
            isinstance(k, str) and type(v) is int and v >= 1 for k, v in keep.items()):
        fail("'pruner' keep must map layer names to integers >= 1")
    prior = pr.get("prior")
    if not isinstance(prior, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) and v.dtype == torch.bool
            for k, v in prior.items()):
        fail("'pruner' prior must map layer names to bool tensors")


def validate_checkpoint(ckpt: dict, where: str = "checkpoint", *, resume: bool = False) -> None:
    """Check the type and range of every field of a checkpoint dict (see the module docstring).

    Parameters
    ----------
    ckpt : dict
        As loaded by :func:`load_tensors_file`.
    where : str
        How errors name the checkpoint.
    resume : bool
        Also require ``stage`` and ``epoch`` (``--resume``).

    Raises
    ------
    KepError
        One line naming the first malformed field.
    """
    def fail(msg):
        raise KepError(f"{where}: {msg}")

    for key in ("model_name", "num_classes", "model") + (("stage", "epoch") if resume else ()):
        if key not in ckpt:
            fail(f"lacks {key!r}")
    name = ckpt["model_name"]
    if is_user_model(name):         # the spec's syntax only: nothing is imported here
        try:
            parse_model_spec(name)
        except KepError:
            fail(f"model_name {_short(name)} is no module.path:callable")
    elif not isinstance(name, str) or name not in (*CIFAR_MODELS, *IMAGENET_MODELS):
        fail(f"unknown model_name {_short(name)} (known: "
             f"{', '.join((*CIFAR_MODELS, *IMAGENET_MODELS))}, or module.path:callable)")
    n = ckpt["num_classes"]
    if type(n) is not int or not 1 <= n <= MAX_CLASSES:
        fail(f"num_classes must be an integer in [1, {MAX_CLASSES}], got {_short(n)}")
    _check_tensor_dict(ckpt["model"], "'model' weight", fail, finite=True)
    if not ckpt["model"]:
        fail("'model' holds no weights")
    shape = ckpt.get("input_shape")
    if shape is not None and (not isinstance(shape, (list, tuple)) or len(shape) != 3 or not all(
            type(v) is int and 1 <= v <= 2**16 for v in shape)):
        fail(f"input_shape must be 3 positive integers, got {_short(shape)}")
    channels = shape[0] if shape is not None else 3
    for key, positive in (("mean", False), ("std", True)):
        v = ckpt.get(key)
        if v is None and key not in ckpt:
            continue
        if (not isinstance(v, (list, tuple)) or len(v) != channels
                or not all(_is_number(x) and (x > 0 or not positive) for x in v)):
            what = "finite positive numbers" if positive else "finite numbers"
            fail(f"{key} must be a list of {channels} {what} (one per input channel), "
                 f"got {_short(v)}")
    masks = ckpt.get("masks")
    if masks is not None:
        if not isinstance(masks, dict):
            fail(f"masks must map layer names to bool tensors, got {_short(masks)}")
        for k, m in masks.items():
            if not isinstance(k, str) or not isinstance(m, torch.Tensor) \
                    or m.dtype != torch.bool:
                fail(f"mask {_short(k)} must be a bool tensor, got {_short(m)}")
            w = ckpt["model"].get(f"{k}.weight")
            if w is None or tuple(w.shape) != tuple(m.shape):
                fail(f"mask {k!r} does not match a weight of the model")
    for key in ("dataset",):
        if key in ckpt and not isinstance(ckpt[key], str):
            fail(f"{key} must be a string, got {_short(ckpt[key])}")
    for key in ("kep", "args"):
        if ckpt.get(key) is not None and not (isinstance(ckpt[key], dict)
                                              and _is_plain_json(ckpt[key])):
            fail(f"{key!r} must be a dict of plain values, got {_short(ckpt[key])}")
    keep = (ckpt.get("kep") or {}).get("keep")
    if keep is not None and not (isinstance(keep, dict) and all(
            type(v) is int and v >= 1 for v in keep.values())):
        fail(f"kep.keep must map layer names to integers >= 1, got {_short(keep)}")
    # -- where a run stands (read by --resume) -------------------------------------------------
    if "stage" in ckpt and ckpt["stage"] not in (*_RUN_STAGES, "done"):
        fail(f"stage must be one of {', '.join(_RUN_STAGES)}, done; got {_short(ckpt['stage'])}")
    if "epoch" in ckpt and (type(ckpt["epoch"]) is not int
                            or not 0 <= ckpt["epoch"] <= _MAX_EPOCH):
        fail(f"epoch must be an integer >= 0, got {_short(ckpt['epoch'])}")
    history = ckpt.get("history")
    if "history" in ckpt:
        if not isinstance(history, list) or not _is_plain_json(history):
            fail(f"history must be a list of epoch records, got {_short(history)}")
        for rec in history:
            if (not isinstance(rec, dict) or rec.get("stage") not in (*_RUN_STAGES, "pretrained")
                    or "test_top1" not in rec
                    or not (rec["test_top1"] is None or _is_number(rec["test_top1"]))):
                fail(f"malformed history record {_short(rec)}")
    secs = ckpt.get("stage_seconds")
    if "stage_seconds" in ckpt:
        if not isinstance(secs, dict) or not all(
                k in _RUN_STAGES and _is_number(v) and v >= 0 for k, v in secs.items()):
            fail(f"stage_seconds must map stages to seconds >= 0, got {_short(secs)}")
    top1 = ckpt.get("dense_top1")
    if top1 is not None and not (_is_number(top1) and 0 <= top1 <= 100):
        fail(f"dense_top1 must be a percentage or null, got {_short(top1)}")
    if ckpt.get("optimizer") is not None:
        _check_optimizer(ckpt["optimizer"], fail)
    if ckpt.get("pruner") is not None:
        _check_pruner(ckpt["pruner"], fail)


def check_model_arg(recorded: str, given: str | None, where: str,
                    option: str = "--model") -> None:
    """Check the model given on the command line against the one a checkpoint records, before
    anything is built.

    A user model spec (``module:callable``) recorded in a checkpoint is never imported on the
    checkpoint's word: it must be given again, the same, as ``option``. A zoo name needs no
    option; when one is given it must match.

    Raises
    ------
    KepError
        One line: a user model without ``option``, or ``option`` naming another model.
    """
    if given == recorded or (given is None and not is_user_model(recorded)):
        return
    if is_user_model(recorded):
        got = "" if given is None else f" (not {given!r})"
        raise KepError(f"{where} was made with the user model {recorded!r}: give {option} "
                       f"{recorded} again{got} to rebuild it (a checkpoint never imports code "
                       "by itself)")
    raise KepError(f"{where} was made with {recorded!r}, not {option} {given!r}")


def model_from_checkpoint(path: str | os.PathLike, model_spec: str | None = None, *,
                          option: str = "--model") -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint, weights loaded, in eval mode.

    Parameters
    ----------
    path : path
        The checkpoint.
    model_spec : str, optional
        The model the user gave on the command line (``option``); required, and equal to the
        recorded one, when the checkpoint records a user model spec (:func:`check_model_arg`):
        the checkpoint alone never causes an import.
    option : str
        How errors name that command-line option.

    Returns
    -------
    model : nn.Module
        Plain module (no parametrizations); pruned elements are zero.
    ckpt : dict
        The checkpoint dict (see module docstring), e.g. ``ckpt["masks"]``.
    """
    ckpt = load_checkpoint(path)
    check_model_arg(ckpt["model_name"], model_spec, f"checkpoint {str(path)!r}", option)
    shape = tuple(ckpt.get("input_shape") or (3, 32, 32))
    model = build_model(ckpt["model_name"], ckpt["num_classes"], input_shape=shape,
                        option=option)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise KepError(f"checkpoint {str(path)!r} does not fit model "
                       f"{ckpt['model_name']!r}: {first}") from None
    masks = ckpt.get("masks") or {}
    modules = dict(model.named_modules())
    for name, m in masks.items():
        mod = modules.get(name)
        if mod is None or not isinstance(getattr(mod, "weight", None), torch.Tensor) \
                or mod.weight.shape != m.shape:
            raise KepError(f"checkpoint {str(path)!r}: mask {name!r} does not match the model")
    model.eval()
    return model, ckpt
