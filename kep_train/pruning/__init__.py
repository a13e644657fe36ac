# SPDX-License-Identifier: Apache-2.0
"""The KEP pruning API: importance scores, per-layer budgets, prior masks, the controllable
penalty, and masks that keep pruned elements at exactly zero.

Typical use::

    pruner = KEPPruner(model, TaylorImportance(loss_fn, batches), keep=4)
    pruner.estimate()                   # scores -> per-layer K -> prior masks
    loss = task_loss + pruner.penalty() # during the regularization stage
    pruner.step()                       # once per iteration: grows lambda on its schedule
    pruner.prune()                      # masked elements -> 0, forever (parametrizations)
"""

from kep_train.pruning.importance import Importance, MagnitudeImportance, TaylorImportance, FilterL1Importance
from kep_train.pruning.masks import (ElementMask, apply_masks, bake_masks, current_masks,
                                     removed_share)
from kep_train.pruning.pruner import KEPPruner, prunable_convs, plane_topk_masks, allocate_keep
from kep_train.pruning.schedule import PenaltySchedule, penalty_lambda, cosine_lr
from kep_train.pruning.baselines import magnitude_masks, filter_l1_masks
from kep_train.pruning.cost import LayerCost, count_costs

__all__ = ["Importance", "MagnitudeImportance", "TaylorImportance", "FilterL1Importance",
           "ElementMask", "apply_masks", "bake_masks", "current_masks", "removed_share",
           "KEPPruner",
           "prunable_convs", "plane_topk_masks", "allocate_keep", "PenaltySchedule",
           "penalty_lambda", "cosine_lr", "magnitude_masks", "filter_l1_masks", "LayerCost",
           "count_costs"]
