# SPDX-License-Identifier: Apache-2.0
"""``python -m kep_train imagenet``: the KEP pipeline on torchvision's ImageNet models.

Data: the standard image-folder layout ``DATA/train/<wnid>/*.JPEG`` and ``DATA/val/<wnid>/*``
(:mod:`kep_train.data.imagenet`; the number of class folders sets the classifier's size).
Images are decoded by DataLoader worker processes and travel as uint8; normalisation happens on
the device (:meth:`ImageNetPipeline.prepare`).

Every random augmentation is seeded from (seed, stage, epoch, image index), not from the
worker or the process: the same command gives the same training on 1 or N processes, with
any number of workers, and after ``--resume``.

Multi-process runs (``torchrun --nproc_per_node N -m kep_train imagenet ...``): ``--batch-size``
is the global batch, split evenly over the processes by a DistributedSampler; the model is
wrapped in DistributedDataParallel, batch norms are synchronised (``--no-sync-bn`` to opt out),
Taylor scores are summed over processes and the masks broadcast from rank 0, metrics are
all-reduced, and only rank 0 writes checkpoints, reports and exports.
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from kep_common.errors import KepError, cli_errors
from kep_common.fileio import atomic_torch_save
from kep_common.log import add_logging_args
from kep_train.data.imagenet import (ImageFolderData, ImageNetData, imagenet_transforms,
                                     load_imagenet_data)
from kep_train.models import IMAGENET_MODELS, build_model
from kep_train.pruning import (TaylorImportance, apply_masks, count_costs, current_masks,
                               prunable_convs)
from kep_train.train import distributed as kdist
from kep_train.train.checkpoint import CHECKPOINT_FORMAT, load_tensors_file
from kep_train.train.pipeline import (STAGES, Pipeline, base_args_parser, parse_command_args,
                                      positive_int,
                                      run_command)

__all__ = ["ImageNetPipeline", "get_args_parser", "main", "mac_shares", "touchable_macs",
           "load_torchvision_state_dict", "taylor_scores_float64"]

log = logging.getLogger(__name__)

_HEADS = ("fc.", "classifier.6.")   # final classifiers of the torchvision models used here


# ------------------------------------------------------------------------------------------
# data loading

def _loader_errors(it):
    """Iterate a DataLoader; a worker's KepError becomes one line again."""
    try:
        yield from it
    except KepError as e:
        line = str(e).strip().splitlines()[-1]
        raise KepError(line.split("KepError: ", 1)[-1]) from None


# ------------------------------------------------------------------------------------------
# MAC shares

def mac_shares(costs, layers) -> dict:
    """Share of a network's MACs in the layers KEP prunes, and per kernel size.

    Parameters
    ----------
    costs : list of LayerCost
        :func:`kep_train.pruning.count_costs` of the dense model.
    layers : iterable of str
        Names of the layers KEP prunes.

    Returns
    -------
    dict
        ``total_macs``, ``touchable_macs``, ``touchable_share`` and ``by_kernel``:
        ``{"3x3": {"macs", "share", "pruned_share"}, "1x1": ..., "7x7": ..., "linear": ...}``.
    """
    names = set(layers)
    total = sum(c.macs for c in costs)
    touch = sum(c.macs for c in costs if c.name in names)
    by = {}
    for c in costs:
        k = "linear" if c.kind == "linear" else f"{c.kernel}x{c.kernel}"
        d = by.setdefault(k, {"macs": 0, "pruned_macs": 0})
        d["macs"] += c.macs
        d["pruned_macs"] += c.macs if c.name in names else 0
    for d in by.values():
        d["share"] = round(d["macs"] / total, 6)
        d["pruned_share"] = round(d.pop("pruned_macs") / total, 6)
    return {"total_macs": total, "touchable_macs": touch,
            "touchable_share": round(touch / total, 6) if total else 0.0, "by_kernel": by}


def touchable_macs(model_name: str, *, image_size: int = 224, num_classes: int = 1000,
                   prune_first: bool = False, prune_1x1: bool = False) -> dict:
    """:func:`mac_shares` of a freshly built model (no training), e.g. resnet50 at 224x224.

    Raises
    ------
    KepError
        Unknown model name.
    """
    model = build_model(model_name, num_classes)
    layers = prunable_convs(model, prune_first=prune_first, prune_1x1=prune_1x1)
    out = mac_shares(count_costs(model, (3, image_size, image_size)), layers)
    out["input"] = [3, image_size, image_size]
    return out


# ------------------------------------------------------------------------------------------
# pretrained weights

def load_torchvision_state_dict(path: str | os.PathLike) -> dict:
    """A plain ``state_dict`` (.pth as torchvision publishes them), read with
    ``weights_only=True``; ``{"state_dict": ...}``/``{"model": ...}`` wrappers and DDP's
    ``module.`` prefixes are accepted. A KEP checkpoint is returned as it is (it has
    ``format``).

    Raises
    ------
    KepError
        Missing, corrupt or non-tensor file.
    """
    obj = load_tensors_file(path, "--pretrained", "a weights file")
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise KepError(f"--pretrained {str(path)!r} is not a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


# ------------------------------------------------------------------------------------------
# Taylor scores that do not depend on the number of processes

def taylor_scores_float64(loss_fn, batches, model, layers) -> dict[str, torch.Tensor]:
    """Taylor scores ``sum_batches |w * dL/dw|`` of ``batches``, summed in float64.

    One batch's float32 score does not depend on the process count (the same computation on
    the same weights); only the order of the sum over batches does, when N processes each sum
    their share and the shares are then added. In float64 (usually exact for 16 float32
    terms) that order moves a score by at most about 1e-16 of its value, which the float32
    result of :class:`~kep_train.train.distributed.SummedImportance` does not see: 1 and N
    processes rank the elements alike.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(model, batch) -> scalar loss``.
    batches : list
        This process's Taylor batches (may be empty on a process without a share).
    model : nn.Module
        The model (a copy without DDP hooks).
    layers : dict
        ``{name: module}`` of ``model`` to score.

    Returns
    -------
    dict
        ``{name: float64 score tensor}`` shaped like each weight (zeros without batches).
    """
    total = {n: torch.zeros(m.weight.shape, dtype=torch.float64) for n, m in layers.items()}
    for batch in batches:
        one = TaylorImportance(loss_fn, [batch])(model, layers)
        for n, s in one.items():
            total[n] += s.to(torch.float64)
    return total


# ------------------------------------------------------------------------------------------
# the pipeline

class ImageNetPipeline(Pipeline):
    """:class:`~kep_train.train.pipeline.Pipeline` on ImageNet-layout folders, one or many
    processes."""

    strict_export = False   # torchvision graphs the exporter does not know: results still count

    def __init__(self, args):
        if ":" in args.model:
            raise KepError(f"--model {args.model!r}: your own module.path:callable models "
                           "run with the cifar command only")
        if args.model not in IMAGENET_MODELS:
            raise KepError(f"unknown model {args.model!r}; choose one of "
                           f"{', '.join(IMAGENET_MODELS)}")
        if args.image_size < 16:
            raise KepError(f"--image-size must be >= 16, got {args.image_size}")
        self.dist = kdist.init_from_env(args.device)
        try:
            super().__init__(args)
        except BaseException:
            kdist.cleanup()
            raise
        self.device = self.dist.device
        w = self.dist.world_size
        if self.sched.batch_size % w:
            kdist.cleanup()
            raise KepError(f"--batch-size {self.sched.batch_size} (the global batch) must be "
                           f"a multiple of the {w} processes")
        self.local_batch = self.sched.batch_size // w

    # -- data ---------------------------------------------------------------------------------
    def load_data(self) -> ImageNetData:
        a = self.args
        if not a.data_dir:
            raise KepError("--data-dir is required")
        data = load_imagenet_data(a.data_dir, image_size=a.image_size, seed=a.seed,
                                  subset=a.subset, test_subset=a.test_subset)
        if len(data.train) < self.sched.batch_size:
            raise KepError(f"{len(data.train)} training images, fewer than one batch "
                           f"(--batch-size {self.sched.batch_size})")
        return data

    def _loader(self, dataset, batch_size, *, sampler=None, drop_last=False):
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
            num_workers=self.args.workers, drop_last=drop_last,
            pin_memory=self.device.type == "cuda", persistent_workers=False)

    def _sampler(self):
        return torch.utils.data.distributed.DistributedSampler(
            self.data.train, num_replicas=self.dist.world_size, rank=self.dist.rank,
            shuffle=True, seed=self.args.seed * 1_000_003, drop_last=False)

    def batches(self, stage, epoch):
        key = (STAGES.index(stage) + 1) * 100_000 + epoch
        self.data.train.key = key
        sampler = self._sampler()
        sampler.set_epoch(key)
        return _loader_errors(iter(self._loader(self.data.train, self.local_batch,
                                                sampler=sampler, drop_last=True)))

    def steps_per_epoch(self):
        per_rank = -(-len(self.data.train) // self.dist.world_size)
        return max(1, per_rank // self.local_batch)

    def prepare(self, xb):
        mean = torch.tensor(self.data.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.data.std, device=self.device).view(1, 3, 1, 1)
        x = xb.to(self.device, non_blocking=True).float().div_(255)
        return (x - mean) / std

    @torch.inference_mode()
    def evaluate_model(self, model) -> float:
        """Top-1 (%) on the validation images; each process takes every N-th image."""
        model.eval()
        w, rk = self.dist.world_size, self.dist.rank
        part = torch.utils.data.Subset(self.data.val, range(rk, len(self.data.val), w))
        correct = seen = 0
        if len(part):
            bs = max(1, min(2 * self.local_batch, 250))
            for xb, yb in _loader_errors(iter(self._loader(part, bs))):
                out = model(self.prepare(xb))
                correct += int((out.argmax(1).cpu() == yb).sum())
                seen += yb.numel()
        correct, seen = kdist.all_reduce_sum(torch.tensor([correct, seen])).tolist()
        return 100.0 * correct / max(seen, 1)

    def calibration_batch(self) -> torch.Tensor:
        """Normalised float images (validation transform) of training images for int8
        calibration: ``32 * --calib-batches`` of them, chosen by the seed."""
        g = torch.Generator().manual_seed(self.args.seed + 777)
        n = min(len(self.data.train), 32 * max(1, self.args.calib_batches))
        idx = torch.randperm(len(self.data.train), generator=g)[:n].tolist()
        data = ImageFolderData([self.data.train.samples[i] for i in idx],
                               imagenet_transforms(self.args.image_size, False),
                               self.args.seed)
        xs = [data[i][0] for i in range(len(data))]
        x = torch.stack(xs).float().div_(255)
        mean = torch.tensor(self.data.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.data.std).view(1, 3, 1, 1)
        return (x - mean) / std

    # -- model and processes ------------------------------------------------------------------
    def build(self):
        model = build_model(self.args.model, self.data.num_classes).to(self.device)
        if self.dist.world_size > 1 and not self.args.no_sync_bn:
            model = kdist.convert_sync_batchnorm(model, self.device)
        return model

    def wrap(self, model):
        self._release_ddp()
        if self.dist.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [self.device.index] if self.device.type == "cuda" else None
        self._ddp = DDP(model, device_ids=ids)
        return self._ddp

    def _release_ddp(self):
        """Destroy the previous stage's DDP wrapper: its gradient hooks stay on the parameters
        while it lives and would average the (per-process) Taylor gradients."""
        if getattr(self, "_ddp", None) is not None:
            self._ddp = None
            gc.collect()

    def _start_pruning(self, r):
        self._release_ddp()
        out = super()._start_pruning(r)
        if self.args.rank_states and r.pruner is not None:
            self._rank_scores = {n: s.detach().cpu().clone() for n, s in r.pruner.scores.items()}
        return out

    def reduce(self, values):
        return kdist.all_reduce_sum(values)

    def sync_masks(self, r):
        """Rank 0's prior masks, K and applied masks on every process."""
        if self.dist.world_size == 1:
            return
        if r.pruner is not None and r.pruner.prior:
            r.pruner.prior = kdist.broadcast_tensors(r.pruner.prior)
        applied = current_masks(r.model)
        if applied:
            apply_masks(r.model, kdist.broadcast_tensors(applied))

    def taylor_importance(self):
        """Taylor scores over fixed batches; process ``r`` of ``N`` scores batches
        ``i % N == r`` and the scores are summed over processes (same as one process)."""
        a, w, rk = self.args, self.dist.world_size, self.dist.rank
        n = max(self.sched.taylor_batches, w)
        tb = min(128, len(self.data.train))
        g = torch.Generator().manual_seed(a.seed + 12345)
        order = torch.cat([torch.randperm(len(self.data.train), generator=g)
                           for _ in range(-(-n * tb // len(self.data.train)))])
        data = ImageFolderData(self.data.train.samples, self.data.train.transform, a.seed)
        data.key = 99 * 100_000
        mine = [order[i * tb:(i + 1) * tb].tolist() for i in range(rk, n, w)]

        def batches():
            for idx in mine:
                loader = self._loader(torch.utils.data.Subset(data, idx), len(idx))
                yield from _loader_errors(iter(loader))

        def loss_fn(m, batch):
            xb, yb = batch
            return F.cross_entropy(m(self.prepare(xb)), yb.to(self.device))
        mine_batches = list(batches())

        def on_a_copy(model, layers):
            # a copy's parameters carry no gradient hook of a DDP wrapper, so each process's
            # gradients stay its own until the scores are summed
            clone = copy.deepcopy(model)
            mods = dict(clone.named_modules())
            return taylor_scores_float64(loss_fn, mine_batches, clone,
                                         {n: mods[n] for n in layers})
        return kdist.SummedImportance(on_a_copy)

    # -- pretrained weights -------------------------------------------------------------------
    def _load_pretrained(self, r):
        obj = load_torchvision_state_dict(self.args.pretrained)
        if obj.get("format") == CHECKPOINT_FORMAT:
            return super()._load_pretrained(r)
        own = r.model.state_dict()
        dropped = []
        for k in list(obj):
            if k in own and own[k].shape != obj[k].shape and k.startswith(_HEADS):
                dropped.append(k)   # another number of classes: keep the new head
                del obj[k]
        res = r.model.load_state_dict(obj, strict=False)
        missing = [k for k in res.missing_keys if k not in dropped]
        if missing or res.unexpected_keys:
            bad = (missing or res.unexpected_keys)[:3]
            raise KepError(f"--pretrained does not fit {self.args.model!r}: keys {bad}")
        r.stage, r.epoch = "reg", 0
        r.kep["pretrained"] = str(self.args.pretrained)
        if dropped:
            r.kep["pretrained_head_reinitialised"] = sorted(dropped)
            if kdist.is_main():
                log.warning("--pretrained: classifier re-initialised for %d classes",
                            self.data.num_classes)
        r.dense_top1 = self.evaluate_model(r.model)
        r.history.append({"stage": "pretrained", "epoch": 0, "test_top1": r.dense_top1})

    # -- run and outputs ----------------------------------------------------------------------
    def run(self) -> dict:
        try:
            return super().run()
        finally:
            kdist.cleanup()

    def report_extra(self, r) -> dict:
        a = self.args
        ours = mac_shares(self.costs_dense, self.layers)
        ours["input"] = list(self.data.input_shape)
        ref = touchable_macs(a.model, image_size=224, num_classes=self.data.num_classes,
                             prune_first=a.prune_first, prune_1x1=a.prune_1x1)
        return {"mac_share": {"this_run": ours, "at_224": ref},
                "processes": self.dist.world_size, "backend": self.dist.backend,
                "sync_bn": self.dist.world_size > 1 and not a.no_sync_bn}

    def _finish(self, r) -> dict:
        r.model = kdist.revert_sync_batchnorm(r.model)
        if self.args.rank_states:   # tests: every process's weights, masks, scores
            plain = {k: v.detach().cpu().clone() for k, v in r._plain_state().items()}
            atomic_torch_save({"model": plain, "masks": current_masks(r.model),
                               "scores": getattr(self, "_rank_scores", {})},
                              Path(self.args.out) / f"rank{self.dist.rank}.pt")
        return super()._finish(r)


# ------------------------------------------------------------------------------------------
# command line

def get_args_parser() -> argparse.ArgumentParser:
    """The options of ``python -m kep_train imagenet``."""
    p = base_args_parser(
        "imagenet", model_default="resnet18", model_names=IMAGENET_MODELS,
        data_dir=dict(default=None, required=True,
                      help="ImageNet layout: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG"))
    g = p.add_argument_group("ImageNet data and multi-process runs (torchrun)")
    g.add_argument("--image-size", type=positive_int, default=224,
                   help="training crop and validation size in pixels (default: %(default)s; "
                        "small values for smoke runs)")
    g.add_argument("--workers", type=positive_int, default=min(8, os.cpu_count() or 1),
                   help="data-loading worker processes per training process "
                        "(default: %(default)s)")
    g.add_argument("--no-sync-bn", action="store_true",
                   help="multi-process runs: batch norm over each process's share of the "
                        "batch instead of the whole batch (faster, not equal to one process)")
    g.add_argument("--rank-states", action="store_true", help=argparse.SUPPRESS)
    add_logging_args(p)
    return p


@cli_errors
def main(argv: list[str] | None = None) -> int:
    """Entry of ``python -m kep_train imagenet`` (one process, or one of ``torchrun``'s)."""
    args = parse_command_args(get_args_parser(), argv)
    return run_command(ImageNetPipeline(args))
