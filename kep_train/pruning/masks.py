# SPDX-License-Identifier: Apache-2.0
"""Masks as ``torch.nn.utils.parametrize`` parametrizations.

The mask is a buffer of the parametrization (it follows ``.to()`` and lands in ``state_dict``);
the original Parameter stays, so optimizers keep working, and its gradient is the masked gradient,
so pruned elements stay exactly zero through momentum and weight decay. A new mask is ANDed with
an existing one: pruned elements never come back.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["ElementMask", "apply_masks", "bake_masks", "current_masks"]


class ElementMask(nn.Module):
    """Parametrization ``w -> w * mask`` (mask: True = kept)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool).clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def _mask_of(module: nn.Module) -> ElementMask | None:
    if parametrize.is_parametrized(module, "weight"):
        for p in module.parametrizations.weight:
            if isinstance(p, ElementMask):
                return p
    return None


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Mask the ``weight`` of each named module (ANDed with a mask already there) and zero the
    pruned elements of the original parameter.

    Raises
    ------
    KeyError
        If a name is not a module of ``model``.
    ValueError
        If a mask's shape differs from the weight's.
    """
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        if name not in modules:
            raise KeyError(f"no module named {name!r}")
        mod = modules[name]
        if tuple(mask.shape) != tuple(mod.weight.shape):
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, weight has "
                             f"{tuple(mod.weight.shape)}")
        mask = mask.to(device=mod.weight.device, dtype=torch.bool)
        existing = _mask_of(mod)
        if existing is not None:
            existing.mask &= mask
        else:
            parametrize.register_parametrization(mod, "weight", ElementMask(mask))
            existing = _mask_of(mod)
        with torch.no_grad():
            mod.parametrizations.weight.original.mul_(existing.mask)


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{module name: kept mask}`` of every masked module (cpu tensors)."""
    out = {}
    for name, mod in model.named_modules():
        m = _mask_of(mod)
        if m is not None:
            out[name] = m.mask.detach().cpu().clone()
    return out


def bake_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Remove the parametrizations, leaving the masked weights as plain parameters.

    Returns the masks that were applied.
    """
    masks = current_masks(model)
    for name, mod in model.named_modules():
        if parametrize.is_parametrized(mod, "weight"):
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)
    return masks


def removed_share(modules: dict[str, nn.Module], keep_masks: dict[str, torch.Tensor]) -> float:
    """Share of the weight norm a cut removes: ``||W * (1 - M)|| / ||W||`` over the layers of
    ``keep_masks`` (``M`` = 1 where an element is kept), the same measure as
    :meth:`kep_train.pruning.KEPPruner.masked_share` before its cut.

    Parameters
    ----------
    modules : dict
        ``{name: module}`` holding at least the layers named in ``keep_masks``.
    keep_masks : dict
        ``{name: bool or 0/1 tensor of the weight's shape}``.
    """
    num = den = 0.0
    for name, mask in keep_masks.items():
        w = modules[name].weight.detach()
        cut = ~mask.to(device=w.device, dtype=torch.bool)
        num += float(w[cut].pow(2).sum())
        den += float(w.pow(2).sum())
    return math.sqrt(num / den) if den > 0 else 0.0
