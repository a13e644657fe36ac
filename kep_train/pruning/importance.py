# SPDX-License-Identifier: Apache-2.0
"""Element significance: callables that score every element of the given layers' weights."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["Importance", "MagnitudeImportance", "TaylorImportance", "FilterL1Importance"]


class Importance:
    """Base class: ``importance(model, layers) -> {name: score tensor shaped like the weight}``.

    Higher score = more important. ``layers`` maps module names to modules of ``model``.
    """

    def __call__(self, model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class MagnitudeImportance(Importance):
    """``|w|``."""

    def __call__(self, model, layers):
        return {n: m.weight.detach().abs().float().cpu() for n, m in layers.items()}


class TaylorImportance(Importance):
    """First-order Taylor score ``sum_batches |w * dL/dw|`` (the loss change when an element is
    removed, to first order), accumulated over ``batches``.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(model, batch) -> scalar loss``.
    batches : iterable
        Batches passed to ``loss_fn`` (e.g. a few training batches).
    """

    def __init__(self, loss_fn: Callable[[nn.Module, object], torch.Tensor],
                 batches: Iterable):
        self.loss_fn = loss_fn
        self.batches = batches

    def __call__(self, model, layers):
        scores = {n: torch.zeros_like(m.weight, dtype=torch.float32, device="cpu")
                  for n, m in layers.items()}
        was_training = model.training
        model.eval()  # BN statistics stay as they are; the score is about the weights
        seen = 0
        for batch in self.batches:
            model.zero_grad(set_to_none=True)
            self.loss_fn(model, batch).backward()
            for n, m in layers.items():
                if m.weight.grad is not None:
                    scores[n] += (m.weight.detach() * m.weight.grad).abs().float().cpu()
            seen += 1
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        if seen == 0:
            raise ValueError("TaylorImportance got no batches")
        return scores


class FilterL1Importance(Importance):
    """L1 norm of each output filter (Li et al. 2017), broadcast to the weight's shape."""

    def __call__(self, model, layers):
        out = {}
        for n, m in layers.items():
            w = m.weight.detach().abs().float().cpu()
            norms = w.flatten(1).sum(1)
            out[n] = norms.view(-1, *([1] * (w.dim() - 1))).expand_as(w).clone()
        return out
