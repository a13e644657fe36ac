# SPDX-License-Identifier: Apache-2.0
"""The KEP pruner: per-layer budgets K, prior masks per kernel plane, the penalty, pruning."""

from __future__ import annotations

import math

import torch
from torch import nn

from kep_train.pruning.importance import Importance
from kep_train.pruning.masks import apply_masks
from kep_train.pruning.schedule import PenaltySchedule, penalty_lambda

__all__ = ["prunable_convs", "plane_topk_masks", "allocate_keep", "KEPPruner"]


def prunable_convs(model: nn.Module, *, ignored_layers=(), prune_first: bool = False,
                   prune_1x1: bool = False) -> dict[str, nn.Conv2d]:
    """The 2-D convolutions KEP prunes by default.

    Skipped: grouped/depthwise convs, the first conv (3 input channels, unless
    ``prune_first``), 1x1 convs (unless ``prune_1x1``), names in ``ignored_layers``.
    Linear layers are never pruned here.
    """
    ignored = set(ignored_layers)
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d) or name in ignored or m.groups != 1:
            continue
        k = m.kernel_size[0] * m.kernel_size[1]
        if k == 1 and not prune_1x1:
            continue
        if m.in_channels <= 3 and not prune_first:
            continue
        out[name] = m
    return out


def plane_topk_masks(scores: dict[str, torch.Tensor], keep: dict[str, int]) -> dict[str, torch.Tensor]:
    """Keep the ``keep[name]`` highest-scoring elements of every kernel plane ``W[o, i, :, :]``.

    Ties are broken towards the lower position index ``r*k + c`` (deterministic).
    """
    masks = {}
    for name, s in scores.items():
        cout, cin = s.shape[:2]
        kk = s[0, 0].numel()
        k = int(keep[name])
        if not 1 <= k <= kk:
            raise ValueError(f"K for {name!r} must be in 1..{kk}, got {k!r}")
        flat = s.reshape(cout, cin, kk).float()
        # stable tie-break: a tiny bonus for lower positions
        bonus = torch.linspace(1e-6, 0, kk) * (flat.abs().max() + 1e-30)
        idx = torch.topk(flat + bonus, k, dim=2).indices
        m = torch.zeros(cout, cin, kk, dtype=torch.bool)
        m.scatter_(2, idx, True)
        masks[name] = m.view_as(s)
    return masks


def allocate_keep(scores: dict[str, torch.Tensor], macs_per_element: dict[str, int],
                  target_macs: float, *, other_macs: int = 0, min_keep: int = 1) -> dict[str, int]:
    """Per-layer K meeting a global MAC budget.

    Greedy: starting from dense, repeatedly lower K by one in the layer whose next-removed
    elements (the K-th highest score of each plane, summed) cost the least importance per MAC
    saved, until ``other_macs + sum_l macs_l(K_l) <= target_macs * (other_macs + dense MACs)``.

    Parameters
    ----------
    scores : dict
        Element scores per layer (shaped like the weights).
    macs_per_element : dict
        MACs that one kept element of a layer costs (= output pixels of the layer).
    target_macs : float
        Fraction of the whole network's MACs to keep, in (0, 1].
    other_macs : int
        MACs of layers that are not pruned (they count against the budget).
    min_keep : int
        Smallest K allowed.
    """
    if not 0 < target_macs <= 1:
        raise ValueError(f"target fraction must be in (0, 1], got {target_macs!r}")
    sorted_scores, keep, planes = {}, {}, {}
    for n, s in scores.items():
        cout, cin = s.shape[:2]
        flat = s.reshape(cout, cin, -1).float()
        sorted_scores[n] = flat.sort(dim=2, descending=True).values.sum(dim=(0, 1))  # [kk]
        keep[n] = flat.shape[2]
        planes[n] = cout * cin
    total = other_macs + sum(planes[n] * keep[n] * macs_per_element[n] for n in scores)
    budget = target_macs * total
    current = total
    while current > budget:
        best, best_cost = None, math.inf
        for n in scores:
            if keep[n] <= min_keep:
                continue
            saved = planes[n] * macs_per_element[n]
            cost = float(sorted_scores[n][keep[n] - 1]) / saved
            if cost < best_cost:
                best, best_cost = n, cost
        if best is None:
            raise ValueError(f"cannot reach {target_macs:.3f} of the MACs with K >= {min_keep}")
        keep[best] -= 1
        current -= planes[best] * macs_per_element[best]
    return keep


class KEPPruner:
    """Kernel Elements Pruning of a model's convolutions.

    Parameters
    ----------
    model : nn.Module
        Any module with 2-D convolutions.
    importance : Importance
        Element scorer (e.g. :class:`TaylorImportance`).
    keep : int, optional
        Uniform K (kept elements per plane) for every pruned layer.
    keep_per_layer : dict, optional
        Explicit K per layer name (overrides ``keep``).
    layers : dict, optional
        Layers to prune; default :func:`prunable_convs` with ``ignored_layers``.
    ignored_layers : sequence of str
        Names never pruned.
    penalty : PenaltySchedule
        The controllable penalty's schedule.
    """

    def __init__(self, model: nn.Module, importance: Importance, *, keep: int | None = None,
                 keep_per_layer: dict[str, int] | None = None, layers=None, ignored_layers=(),
                 penalty: PenaltySchedule | None = None):
        self.model = model
        self.importance = importance
        self.layers = dict(layers) if layers is not None else prunable_convs(
            model, ignored_layers=ignored_layers)
        if not self.layers:
            raise ValueError("the model has no prunable convolution")
        self.keep = dict(keep_per_layer) if keep_per_layer else (
            {n: int(keep) for n in self.layers} if keep is not None else None)
        self.penalty_schedule = penalty or PenaltySchedule()
        self.growth_steps = 0
        self.iterations = 0
        self.growth_stopped = False
        self.prior: dict[str, torch.Tensor] = {}   # True = masked (to be pruned)
        self.scores: dict[str, torch.Tensor] = {}

    # -- scores, budgets, masks -------------------------------------------------------------
    def estimate(self, keep: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
        """Score the elements, fix K per layer and build the prior masks (True = penalised)."""
        if keep is not None:
            self.keep = dict(keep)
        if self.keep is None:
            raise ValueError("no budget: give keep, keep_per_layer or call estimate(keep=...)")
        self.scores = self.importance(self.model, self.layers)
        kept = plane_topk_masks(self.scores, self.keep)
        self.prior = {n: ~m for n, m in kept.items()}
        return self.prior

    def kept_masks(self) -> dict[str, torch.Tensor]:
        """``{layer: kept mask}`` (the complement of the prior masks)."""
        return {n: ~m for n, m in self.prior.items()}

    # -- the controllable penalty -----------------------------------------------------------
    @property
    def lam(self) -> float:
        return penalty_lambda(self.penalty_schedule, self.growth_steps)

    def penalty(self) -> torch.Tensor:
        """``(lambda / 2) * sum((M * W)^2)`` over the masked elements only."""
        total = None
        for n, m in self.layers.items():
            mask = self.prior[n].to(m.weight.device)
            term = (m.weight * mask).pow(2).sum()
            total = term if total is None else total + term
        return 0.5 * self.lam * total

    @torch.no_grad()
    def masked_share(self) -> float:
        """``||M * W|| / ||W||`` over all pruned layers."""
        num = den = 0.0
        for n, m in self.layers.items():
            w = m.weight.detach()
            num += float((w * self.prior[n].to(w.device)).pow(2).sum())
            den += float(w.pow(2).sum())
        return math.sqrt(num / den) if den > 0 else 0.0

    def step(self) -> None:
        """Advance one iteration: every ``every`` iterations lambda grows by ``step`` (up to
        ``cap``) unless the masked share has fallen below ``threshold``."""
        self.iterations += 1
        s = self.penalty_schedule
        if self.iterations % s.every == 0 and not self.growth_stopped:
            if self.masked_share() < s.threshold:
                self.growth_stopped = True
            else:
                self.growth_steps += 1

    def state_dict(self) -> dict:
        return {"growth_steps": self.growth_steps, "iterations": self.iterations,
                "growth_stopped": self.growth_stopped, "keep": dict(self.keep or {}),
                "prior": {n: m.clone() for n, m in self.prior.items()}}

    def load_state_dict(self, d: dict) -> None:
        self.growth_steps = int(d["growth_steps"])
        self.iterations = int(d["iterations"])
        self.growth_stopped = bool(d["growth_stopped"])
        self.keep = dict(d["keep"])
        self.prior = {n: m.clone().to(torch.bool) for n, m in d["prior"].items()}

    # -- pruning ------------------------------------------------------------------------------
    def prune(self) -> dict[str, torch.Tensor]:
        """Zero the masked elements for good (ANDed parametrization masks). Returns kept masks."""
        kept = self.kept_masks()
        apply_masks(self.model, kept)
        return kept
