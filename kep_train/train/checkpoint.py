# SPDX-License-Identifier: Apache-2.0
"""Training checkpoints: written atomically, read without pickle (``weights_only=True``).

A checkpoint is a dict with these keys (all plain tensors, numbers, strings, lists, dicts):

``format`` ("kep-checkpoint"), ``version`` (1), ``model_name``, ``num_classes``, ``dataset``,
``mean``/``std`` (input normalisation, per channel, of [0, 1] pixels),
``model`` (plain ``state_dict``; pruned elements are exactly zero in it),
``masks`` (``{conv module name: bool tensor shaped like its weight}``, True = kept; only layers
that were pruned), ``kep`` (pruning settings and per-layer K), ``stage`` and ``epoch`` (where the
run stands), ``optimizer``/``scheduler`` state, ``rng`` state, ``args`` and ``history``.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from kep_common.errors import KepError
from kep_train.models import build_model

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "load_checkpoint", "model_from_checkpoint"]

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
    if not os.path.isfile(path):
        raise KepError(f"{label} {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt input
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KepError(f"{label} {str(path)!r} is corrupt or not {kind} ({msg})")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load and validate a checkpoint without unpickling arbitrary objects.

    Raises
    ------
    KepError
        Missing, truncated, corrupt or foreign file.
    """
    ckpt = load_tensors_file(path, "checkpoint", "a KEP checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise KepError(f"{str(path)!r} is not a KEP checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise KepError(f"checkpoint {str(path)!r} has version {ckpt.get('version')!r}, "
                       f"this toolkit reads version {CHECKPOINT_VERSION}")
    for key in ("model_name", "num_classes", "model"):
        if key not in ckpt:
            raise KepError(f"checkpoint {str(path)!r} lacks {key!r}")
    return ckpt


def model_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint, weights loaded, in eval mode.

    Returns
    -------
    model : nn.Module
        Plain module (no parametrizations); pruned elements are zero.
    ckpt : dict
        The checkpoint dict (see module docstring), e.g. ``ckpt["masks"]``.
    """
    ckpt = load_checkpoint(path)
    model = build_model(ckpt["model_name"], int(ckpt["num_classes"]))
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0]
        raise KepError(f"checkpoint {str(path)!r} does not fit model "
                       f"{ckpt['model_name']!r}: {first}")
    masks = ckpt.get("masks") or {}
    modules = dict(model.named_modules())
    for name, m in masks.items():
        mod = modules.get(name)
        if mod is None or not hasattr(mod, "weight") or mod.weight.shape != m.shape:
            raise KepError(f"checkpoint {str(path)!r}: mask {name!r} does not match the model")
    model.eval()
    return model, ckpt
