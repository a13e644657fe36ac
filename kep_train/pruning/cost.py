# SPDX-License-Identifier: Apache-2.0
"""Parameter and MAC counts per layer, dense and after pruning (non-zero elements)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["LayerCost", "count_costs"]


@dataclass
class LayerCost:
    """Costs of one conv or linear layer for one input image."""

    name: str
    kind: str            # "conv" or "linear"
    kernel: int          # k (square kernels), 1 for linear
    in_channels: int
    out_channels: int
    out_hw: tuple        # (H_out, W_out), (1, 1) for linear
    params: int          # weight elements, dense
    params_kept: int     # non-zero weight elements
    macs: int            # dense multiply-accumulates
    macs_kept: int       # MACs on non-zero weights only

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def count_costs(model: nn.Module, input_shape, *, masks: dict | None = None) -> list[LayerCost]:
    """Count params and MACs of every ``Conv2d``/``Linear`` by one forward pass.

    Parameters
    ----------
    model : nn.Module
        The model (its current, possibly masked, weights are counted).
    input_shape : tuple
        ``(C, H, W)`` of one input image.
    masks : dict, optional
        Extra ``{name: kept mask}`` to count as if applied.

    Returns
    -------
    list of LayerCost
        In forward order.
    """
    masks = masks or {}
    costs, hooks = [], []
    names = {m: n for n, m in model.named_modules()}

    def hook(mod, inp, out):
        name = names[mod]
        w = mod.weight.detach()
        nz = (w != 0)
        if name in masks:
            nz = nz & masks[name].to(nz.device)
        if isinstance(mod, nn.Conv2d):
            hw = (out.shape[-2], out.shape[-1])
            pix = hw[0] * hw[1]
            costs.append(LayerCost(name, "conv", mod.kernel_size[0], mod.in_channels,
                                   mod.out_channels, hw, w.numel(), int(nz.sum()),
                                   w.numel() * pix, int(nz.sum()) * pix))
        else:
            costs.append(LayerCost(name, "linear", 1, mod.in_features, mod.out_features, (1, 1),
                                   w.numel(), int(nz.sum()), w.numel(), int(nz.sum())))

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        model(torch.zeros(1, *input_shape, device=dev))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return costs
