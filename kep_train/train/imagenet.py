# SPDX-License-Identifier: Apache-2.0
"""``python -m kep_train imagenet``: the KEP pipeline on torchvision's ImageNet models.

Data: the standard image-folder layout ``DATA/train/<wnid>/*.JPEG`` and ``DATA/val/<wnid>/*``
(the number of class folders sets the classifier's size). Images are decoded by DataLoader
worker processes with the usual transforms (training: RandomResizedCrop + horizontal flip;
validation: Resize(size * 256/224) + CenterCrop(size)) and travel as uint8; normalisation
happens on the device (:meth:`ImageNetPipeline.prepare`).

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

import copy
import gc
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from kep_train.train import distributed as kdist
from kep_train.train.checkpoint import CHECKPOINT_FORMAT, load_tensors_file
from kep_common.errors import KepError
from kep_train.models import IMAGENET_MODELS, build_model
from kep_train.pruning import TaylorImportance, apply_masks, count_costs, current_masks, prunable_convs
from kep_train.train.pipeline import STAGES, Pipeline

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageNetPipeline", "ImageFolderData",
           "find_classes", "make_tiny_imagenet", "mac_shares", "touchable_macs",
           "load_torchvision_state_dict", "taylor_scores_float64"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}
_HEADS = ("fc.", "classifier.6.")   # final classifiers of the torchvision models used here


# ------------------------------------------------------------------------------------------
# data

def find_classes(split_dir: Path) -> list[str]:
    """Sorted class folder names of ``split_dir``.

    Raises
    ------
    KepError
        Missing folder or no class folders.
    """
    if not split_dir.is_dir():
        raise KepError(f"{str(split_dir)!r} is missing: expected the ImageNet layout "
                       "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise KepError(f"{str(split_dir)!r} has no class folders")
    return classes


def _list_images(split_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    samples = []
    for c, cls in enumerate(classes):
        for p in sorted((split_dir / cls).iterdir()):
            if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file():
                samples.append((str(p), c))
    if not samples:
        raise KepError(f"{str(split_dir)!r} holds no images")
    return samples


def _sample_seed(seed: int, key: int, index: int) -> int:
    return ((seed * 1_000_003 + key) * 1_000_000_007 + index) % (2 ** 63)


class ImageFolderData(torch.utils.data.Dataset):
    """Images of an ImageNet-layout split as ``(uint8 CHW tensor, label)``.

    The transform of image ``i`` runs under the seed ``(seed, key, i)``; set ``key`` (e.g.
    stage and epoch) before creating a DataLoader iterator.

    Parameters
    ----------
    samples : list of (path, label)
        The images.
    transform : callable
        PIL image -> uint8 tensor.
    seed : int
        Run seed.
    """

    def __init__(self, samples, transform, seed: int):
        self.samples = list(samples)
        self.transform = transform
        self.seed = int(seed)
        self.key = 0

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image, UnidentifiedImageError
        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise KepError(f"cannot read image {path!r}: {type(e).__name__}") from None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_sample_seed(self.seed, self.key, i))
            x = self.transform(img)
        return x, label


def _transforms(size: int, train: bool):
    from torchvision import transforms as T
    if train:
        return T.Compose([T.RandomResizedCrop(size, antialias=True),
                          T.RandomHorizontalFlip(), T.PILToTensor()])
    return T.Compose([T.Resize(max(size, round(size * 256 / 224)), antialias=True),
                      T.CenterCrop(size), T.PILToTensor()])


def _loader_errors(it):
    """Iterate a DataLoader; a worker's KepError becomes one line again."""
    try:
        yield from it
    except KepError as e:
        line = str(e).strip().splitlines()[-1]
        raise KepError(line.split("KepError: ", 1)[-1]) from None


def make_tiny_imagenet(root: str | os.PathLike, *, classes: int = 4, train_per_class: int = 8,
                       val_per_class: int = 2, size: int = 32, seed: int = 0) -> Path:
    """Write a tiny generated data set in the ImageNet layout (smoke runs and tests).

    ``root/{train,val}/nXXXXXXXX/NNNN.JPEG``: class-coloured noise images, so that a few steps
    of training can learn something.

    Returns
    -------
    Path
        ``root``.
    """
    import numpy as np
    from PIL import Image
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            base = np.array([(c * 67) % 256, (c * 131) % 256, (c * 29 + 90) % 256])
            for i in range(n):
                img = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i:04d}.JPEG", quality=95)
    return root


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
    result of :class:`~kep_train.distributed.SummedImportance` does not see: 1 and N
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
    """:class:`~kep_train.train.Pipeline` on ImageNet-layout folders, one or many processes."""

    def __init__(self, args, dataset: str = "imagenet"):
        if args.model not in IMAGENET_MODELS:
            raise KepError(f"unknown model {args.model!r}; choose one of "
                           f"{', '.join(IMAGENET_MODELS)}")
        if args.image_size < 16:
            raise KepError(f"--image-size must be >= 16, got {args.image_size}")
        self.dist = kdist.init_from_env(args.device)
        try:
            super().__init__(args, dataset)
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
    def load_data(self):
        a = self.args
        if not a.data_dir:
            raise KepError("--data-dir is required")
        root = Path(a.data_dir)
        classes = find_classes(root / "train")
        val_classes = find_classes(root / "val")
        if val_classes != classes:
            raise KepError(f"{str(root / 'val')!r} has {len(val_classes)} class folders, "
                           f"train has {len(classes)}: they must be the same")
        train = _list_images(root / "train", classes)
        val = _list_images(root / "val", classes)
        g = torch.Generator().manual_seed(0)   # fixed: subsets are class-balanced samples
        if a.subset:
            train = [train[i] for i in torch.randperm(len(train), generator=g)[:a.subset]]
        if a.test_subset:
            val = [val[i] for i in torch.randperm(len(val), generator=g)[:a.test_subset]]
        if len(train) < self.sched.batch_size:
            raise KepError(f"{len(train)} training images, fewer than one batch "
                           f"(--batch-size {self.sched.batch_size})")
        self.classes = classes
        self.num_classes = len(classes)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        s = a.image_size
        self.input_shape = (3, s, s)
        self.train_set = ImageFolderData(train, _transforms(s, True), a.seed)
        self.val_set = ImageFolderData(val, _transforms(s, False), a.seed)
        self.train_y = torch.tensor([y for _, y in train])   # sizes and labels only
        self.test_y = torch.tensor([y for _, y in val])

    def _loader(self, dataset, batch_size, *, sampler=None, drop_last=False):
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
            num_workers=self.args.workers, drop_last=drop_last,
            pin_memory=self.device.type == "cuda", persistent_workers=False)

    def _sampler(self):
        return torch.utils.data.distributed.DistributedSampler(
            self.train_set, num_replicas=self.dist.world_size, rank=self.dist.rank,
            shuffle=True, seed=self.args.seed * 1_000_003, drop_last=False)

    def batches(self, stage, epoch):
        key = (STAGES.index(stage) + 1) * 100_000 + epoch
        self.train_set.key = key
        sampler = self._sampler()
        sampler.set_epoch(key)
        return _loader_errors(iter(self._loader(self.train_set, self.local_batch,
                                                sampler=sampler, drop_last=True)))

    def steps_per_epoch(self):
        per_rank = -(-len(self.train_set) // self.dist.world_size)
        return max(1, per_rank // self.local_batch)

    def prepare(self, xb):
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        x = xb.to(self.device, non_blocking=True).float().div_(255)
        return (x - mean) / std

    @torch.inference_mode()
    def evaluate_model(self, model) -> float:
        """Top-1 (%) on the validation images; each process takes every N-th image."""
        model.eval()
        w, rk = self.dist.world_size, self.dist.rank
        part = torch.utils.data.Subset(self.val_set, range(rk, len(self.val_set), w))
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
        n = min(len(self.train_set), 32 * max(1, self.args.calib_batches))
        idx = torch.randperm(len(self.train_set), generator=g)[:n].tolist()
        data = ImageFolderData([self.train_set.samples[i] for i in idx],
                               _transforms(self.args.image_size, False), self.args.seed)
        xs = [data[i][0] for i in range(len(data))]
        x = torch.stack(xs).float().div_(255)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    # -- model and processes ------------------------------------------------------------------
    def build(self):
        model = build_model(self.args.model, self.num_classes).to(self.device)
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
        tb = min(128, len(self.train_set))
        g = torch.Generator().manual_seed(a.seed + 12345)
        order = torch.cat([torch.randperm(len(self.train_set), generator=g)
                           for _ in range(-(-n * tb // len(self.train_set)))])
        data = ImageFolderData(self.train_set.samples, self.train_set.transform, a.seed)
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
                print(f"--pretrained: classifier re-initialised for {self.num_classes} classes",
                      file=sys.stderr)
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
        ours["input"] = list(self.input_shape)
        ref = touchable_macs(a.model, image_size=224, num_classes=self.num_classes,
                             prune_first=a.prune_first, prune_1x1=a.prune_1x1)
        return {"mac_share": {"this_run": ours, "at_224": ref},
                "processes": self.dist.world_size, "backend": self.dist.backend,
                "sync_bn": self.dist.world_size > 1 and not a.no_sync_bn}

    def _finish(self, r) -> dict:
        r.model = kdist.revert_sync_batchnorm(r.model)
        if self.args.rank_states:   # tests: every process's weights, masks, scores
            from kep_common.fileio import atomic_torch_save
            plain = {k: v.detach().cpu().clone() for k, v in r._plain_state().items()}
            atomic_torch_save({"model": plain, "masks": current_masks(r.model),
                               "scores": getattr(self, "_rank_scores", {})},
                              Path(self.args.out) / f"rank{self.dist.rank}.pt")
        return super()._finish(r)
