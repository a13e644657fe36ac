# SPDX-License-Identifier: Apache-2.0
"""The methods KEP is compared with, as masks for the same training loop.

* :func:`magnitude_masks`: unstructured magnitude pruning, per layer, at a given number of kept
  weights (same sparsity as KEP, no regularity).
* :func:`filter_l1_masks`: L1-norm filter pruning (Li et al. 2017) at a MAC budget: whole filters
  of a conv are removed together with the matching input channels of the convs that consume them
  (only convs whose output reaches other convs through BN/ReLU/pooling alone, e.g. the first conv
  of a ResNet block, as in Li et al.).
"""

from __future__ import annotations

import torch
from torch import fx, nn

from kep_train.pruning.cost import count_costs

__all__ = ["magnitude_masks", "filter_l1_masks", "filter_consumers"]

_PASSTHROUGH = (nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Dropout, nn.Identity)


def magnitude_masks(layers: dict[str, nn.Module], kept: dict[str, int]) -> dict[str, torch.Tensor]:
    """Keep the ``kept[name]`` largest ``|w|`` of each layer (anywhere in the layer)."""
    masks = {}
    for n, m in layers.items():
        w = m.weight.detach().abs().flatten().cpu()
        k = int(kept[n])
        if not 1 <= k <= w.numel():
            raise ValueError(f"kept count for {n!r} must be in 1..{w.numel()}, got {k}")
        mask = torch.zeros(w.numel(), dtype=torch.bool)
        mask[torch.topk(w, k).indices] = True
        masks[n] = mask.view_as(m.weight)
    return masks


def filter_consumers(model: nn.Module) -> dict[str, list[str]]:
    """``{conv name: [consumer conv names]}`` for every conv whose output channels can be removed
    (its output reaches only convs, through BN/ReLU/max-pool/dropout)."""
    gm = fx.symbolic_trace(model)
    mods = dict(model.named_modules())
    out = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods[node.target], nn.Conv2d):
            continue
        if mods[node.target].groups != 1:
            continue
        consumers, ok, frontier = [], True, list(node.users)
        while frontier and ok:
            u = frontier.pop()
            if u.op == "call_module" and isinstance(mods[u.target], nn.Conv2d):
                if mods[u.target].groups != 1:
                    ok = False
                consumers.append(u.target)
            elif u.op == "call_module" and isinstance(mods[u.target], _PASSTHROUGH):
                frontier.extend(u.users)
            else:
                ok = False
        if ok and consumers:
            out[node.target] = sorted(set(consumers))
    return out


def _filter_masks_at(model, consumers, fraction):
    mods = dict(model.named_modules())
    masks = {}
    for name, cons in consumers.items():
        w = mods[name].weight.detach().cpu()
        n_prune = int(fraction * w.shape[0])
        n_prune = min(n_prune, w.shape[0] - 1)
        if n_prune <= 0:
            continue
        norms = w.abs().flatten(1).sum(1)
        # stable: smallest L1 first, lower index first on ties
        order = torch.argsort(norms, stable=True)
        dead = order[:n_prune]
        m = masks.setdefault(name, torch.ones_like(w, dtype=torch.bool))
        m[dead] = False
        for c in cons:
            cw = mods[c].weight
            cm = masks.setdefault(c, torch.ones(cw.shape, dtype=torch.bool))
            cm[:, dead] = False
    return masks


def filter_l1_masks(model: nn.Module, target_macs: int, input_shape) -> tuple[dict, float]:
    """Masks removing the same fraction of filters in every removable conv so that the
    network's MACs fall to at most ``target_macs`` (bisection on the fraction).

    Returns
    -------
    masks : dict
        ``{conv name: kept mask}``.
    fraction : float
        The fraction of filters removed per layer.
    """
    consumers = filter_consumers(model)
    if not consumers:
        raise ValueError("no conv of this model has removable filters")

    def macs_at(frac):
        masks = _filter_masks_at(model, consumers, frac)
        return sum(c.macs_kept for c in count_costs(model, input_shape, masks=masks)), masks

    lo, hi = 0.0, 1.0
    best = None
    for _ in range(30):
        mid = (lo + hi) / 2
        macs, masks = macs_at(mid)
        if macs <= target_macs:
            best, hi = (masks, mid), mid
        else:
            lo = mid
    if best is None:
        raise ValueError(f"filter pruning cannot reach {target_macs} MACs")
    return best
