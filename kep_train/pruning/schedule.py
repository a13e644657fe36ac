# SPDX-License-Identifier: Apache-2.0
"""Schedules as pure functions: the penalty strength and the learning rate."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["PenaltySchedule", "penalty_lambda", "cosine_lr"]


@dataclass(frozen=True)
class PenaltySchedule:
    """The controllable regularization penalty ``(lambda_t / 2) * sum((M * W)^2)``.

    Attributes
    ----------
    init : float
        lambda at the first iteration of the regularization stage.
    step : float
        Added to lambda every ``every`` iterations ...
    every : int
        ... (iterations) ...
    cap : float
        ... up to this cap.
    threshold : float
        Growth stops once the masked elements' share of the weight L2 norm,
        ``||M * W|| / ||W||`` over all pruned layers, falls below this.
    """

    init: float = 0.0
    step: float = 2e-3
    every: int = 15
    cap: float = 0.1
    threshold: float = 0.02

    def __post_init__(self):
        for name in ("init", "step", "cap", "threshold"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"penalty {name} must be finite and >= 0, got {v!r}")
        if self.every < 1:
            raise ValueError(f"penalty 'every' must be >= 1 iteration, got {self.every!r}")


def penalty_lambda(schedule: PenaltySchedule, growth_steps: int) -> float:
    """lambda after ``growth_steps`` growth events: ``min(cap, init + growth_steps * step)``."""
    return min(schedule.cap, schedule.init + growth_steps * schedule.step)


def cosine_lr(base_lr: float, progress: float, *, warmup: float = 0.0,
              final_lr: float = 0.0) -> float:
    """Learning rate at ``progress`` in [0, 1] of a stage: linear warm-up over the first
    ``warmup`` fraction (from base_lr/10), then cosine from ``base_lr`` to ``final_lr``."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return base_lr * (0.1 + 0.9 * progress / warmup)
    t = (progress - warmup) / max(1e-12, 1.0 - warmup)
    return final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * t))
