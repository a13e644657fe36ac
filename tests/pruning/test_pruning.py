# SPDX-License-Identifier: Apache-2.0
"""The pruning API: budgets, prior masks, penalty, masks that stay, MAC counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kep_train.models import build_model
from kep_train.pruning import (KEPPruner, MagnitudeImportance, PenaltySchedule, TaylorImportance,
                               allocate_keep, apply_masks, bake_masks, count_costs,
                               current_masks, filter_l1_masks, magnitude_masks,
                               penalty_lambda, plane_topk_masks, prunable_convs)


class TinyNet(nn.Module):
    """conv3x3(3->4) -> conv3x3(4->6, stride 2) -> conv1x1(6->5) -> pool -> linear(5->3)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.c2 = nn.Conv2d(4, 6, 3, 2, 1, bias=False)
        self.c3 = nn.Conv2d(6, 5, 1, 1, 0, bias=False)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = F.relu(self.c2(F.relu(self.c1(x))))
        x = F.relu(self.c3(x))
        return self.fc(x.mean((2, 3)))


def test_mac_counts_match_hand_computed():
    net = TinyNet()
    costs = {c.name: c for c in count_costs(net, (3, 8, 8))}
    # c1: 8x8 output, 4*3*9 weights; c2: 4x4 output, 6*4*9; c3: 4x4 output, 5*6; fc 3*5
    assert costs["c1"].macs == 64 * 4 * 3 * 9
    assert costs["c2"].macs == 16 * 6 * 4 * 9
    assert costs["c3"].macs == 16 * 5 * 6
    assert costs["fc"].macs == 15
    apply_masks(net, {"c2": plane_topk_masks({"c2": net.c2.weight.detach().abs()},
                                             {"c2": 4})["c2"]})
    costs = {c.name: c for c in count_costs(net, (3, 8, 8))}
    assert costs["c2"].macs_kept == 16 * 6 * 4 * 4
    assert costs["c2"].params_kept == 6 * 4 * 4


def test_prunable_convs_defaults():
    net = TinyNet()
    assert list(prunable_convs(net)) == ["c2"]  # first conv (3 in) and 1x1 stay dense
    assert list(prunable_convs(net, prune_first=True, prune_1x1=True)) == ["c1", "c2", "c3"]
    assert list(prunable_convs(net, ignored_layers=["c2"])) == []


@pytest.mark.parametrize("keep", [1, 4, 9])
def test_exactly_k_nonzeros_per_plane(keep):
    torch.manual_seed(0)
    model = build_model("resnet20")
    pruner = KEPPruner(model, MagnitudeImportance(), keep=keep)
    pruner.estimate()
    pruner.prune()
    for name, m in pruner.layers.items():
        nnz = (m.weight != 0).flatten(2).sum(2)
        assert torch.all(nnz == keep), name


def test_topk_keeps_the_most_significant_and_breaks_ties_low():
    s = torch.tensor([[[[5., 1, 1], [1, 9, 1], [1, 1, 7]]]])
    m = plane_topk_masks({"l": s}, {"l": 3})["l"].flatten()
    assert m.tolist() == [True, False, False, False, True, False, False, False, True]
    m = plane_topk_masks({"l": torch.ones(1, 1, 3, 3)}, {"l": 2})["l"].flatten()
    assert m.tolist() == [True, True] + [False] * 7
    with pytest.raises(ValueError):
        plane_topk_masks({"l": s}, {"l": 10})


def test_masks_survive_finetuning_with_momentum_and_weight_decay():
    torch.manual_seed(0)
    net = TinyNet()
    pruner = KEPPruner(net, MagnitudeImportance(), keep=2)
    pruner.estimate()
    kept = pruner.prune()["c2"]
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=0.1,
                          nesterov=True)
    for _ in range(20):
        loss = (net(torch.randn(4, 3, 8, 8)) - 1).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = net.c2.weight.detach()
    assert torch.all(w[~kept] == 0)
    assert torch.all(w[kept] != 0)
    masks = bake_masks(net)
    assert torch.equal(masks["c2"], kept)
    assert torch.all(net.c2.weight[~kept] == 0)
    assert isinstance(net.c2.weight, nn.Parameter)


def test_new_masks_are_anded():
    net = TinyNet()
    a = torch.ones_like(net.c2.weight, dtype=torch.bool)
    a[0] = False
    b = torch.ones_like(a)
    b[1] = False
    apply_masks(net, {"c2": a})
    apply_masks(net, {"c2": b})
    m = current_masks(net)["c2"]
    assert not m[0].any() and not m[1].any() and m[2:].all()


def test_penalty_only_touches_masked_elements():
    torch.manual_seed(0)
    net = TinyNet()
    pruner = KEPPruner(net, MagnitudeImportance(), keep=3,
                       penalty=PenaltySchedule(init=0.5, step=0.0, every=1, cap=1.0))
    prior = pruner.estimate()["c2"]
    net.zero_grad()
    pruner.penalty().backward()
    g = net.c2.weight.grad
    assert torch.all(g[~prior] == 0)
    assert torch.allclose(g[prior], 0.5 * net.c2.weight.detach()[prior])


def test_penalty_schedule_grows_caps_and_stops():
    s = PenaltySchedule(init=0.1, step=0.05, every=2, cap=0.2, threshold=0.0)
    assert [penalty_lambda(s, k) for k in range(4)] == pytest.approx([0.1, 0.15, 0.2, 0.2])
    net = TinyNet()
    pruner = KEPPruner(net, MagnitudeImportance(), keep=3, penalty=s)
    pruner.estimate()
    for _ in range(4):
        pruner.step()
    assert pruner.lam == pytest.approx(0.2)
    # threshold above the current masked share: growth stops at the next check
    stop = KEPPruner(net, MagnitudeImportance(), keep=3,
                     penalty=PenaltySchedule(init=0.1, step=0.05, every=1, cap=1, threshold=2.0))
    stop.estimate()
    for _ in range(3):
        stop.step()
    assert stop.growth_stopped and stop.lam == pytest.approx(0.1)


def test_taylor_importance_is_w_times_grad():
    torch.manual_seed(0)
    net = TinyNet()
    x = torch.randn(2, 3, 8, 8)
    imp = TaylorImportance(lambda m, b: m(b).sum(), [x])
    scores = imp(net, {"c2": net.c2})["c2"]
    net.zero_grad()
    net.eval()
    net(x).sum().backward()
    assert torch.allclose(scores, (net.c2.weight * net.c2.weight.grad).abs())


def test_allocate_keep_meets_mac_target():
    torch.manual_seed(0)
    scores = {"a": torch.rand(8, 8, 3, 3), "b": torch.rand(16, 8, 3, 3)}
    per = {"a": 64, "b": 16}
    dense = 8 * 8 * 9 * 64 + 16 * 8 * 9 * 16
    keep = allocate_keep(scores, per, 0.5)
    used = 8 * 8 * keep["a"] * 64 + 16 * 8 * keep["b"] * 16
    assert used <= 0.5 * dense
    # one step less pruning anywhere would break the budget or K=9 already
    assert all(1 <= k <= 9 for k in keep.values())
    with pytest.raises(ValueError):
        allocate_keep(scores, per, 0.05)


def test_magnitude_masks_keep_count():
    net = TinyNet()
    m = magnitude_masks({"c2": net.c2}, {"c2": 50})["c2"]
    assert int(m.sum()) == 50
    thresh = net.c2.weight.detach().abs()[m].min()
    assert torch.all(net.c2.weight.detach().abs()[~m] <= thresh)


def test_filter_l1_removes_filters_and_consumer_channels():
    torch.manual_seed(0)
    model = build_model("resnet20")
    dense = sum(c.macs for c in count_costs(model, (3, 32, 32)))
    masks, frac = filter_l1_masks(model, int(0.6 * dense), (3, 32, 32))
    m1, m2 = masks["layer1.0.conv1"], masks["layer1.0.conv2"]
    dead = ~m1.flatten(1).any(1)
    assert dead.any()
    assert not m2[:, dead].any()           # consumer's input channels removed too
    assert m1[~dead].all()
    apply_masks(model, masks)
    assert sum(c.macs_kept for c in count_costs(model, (3, 32, 32))) <= 0.6 * dense
    assert m2.flatten(1).any(1).all()      # the block's output filters are all kept


def test_removed_share_is_the_cut_norm_over_the_norm():
    from kep_train.pruning import removed_share
    conv = nn.Conv2d(1, 1, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[3.0, 4.0], [0.0, 0.0]]]]))
    keep_first = torch.tensor([[[[True, False], [True, True]]]])
    assert removed_share({"c": conv}, {"c": keep_first}) == pytest.approx(0.8)   # 4 / 5
    assert removed_share({"c": conv}, {"c": torch.ones(1, 1, 2, 2)}) == 0.0
    assert removed_share({"c": conv}, {"c": torch.zeros(1, 1, 2, 2)}) == pytest.approx(1.0)
