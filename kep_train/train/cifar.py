# SPDX-License-Identifier: Apache-2.0
"""``python -m kep_train cifar``: the KEP pipeline on CIFAR-10, one process.

The whole data set lives in memory as uint8 tensors (:class:`kep_train.data.cifar.CifarData`);
batches are shuffled, cropped and flipped on tensors under a generator seeded from (seed, stage,
epoch), so a run resumed from its checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kep_common.errors import KepError, cli_errors
from kep_common.log import add_logging_args
from kep_train.data import cifar as kdata
from kep_train.models import (CIFAR_MODELS, build_user_model, is_user_model,
                              load_user_factory)
from kep_train.pruning import TaylorImportance
from kep_train.train import distributed as kdist
from kep_train.train.pipeline import (STAGES, Pipeline, base_args_parser, parse_command_args,
                                      run_command)

__all__ = ["CifarPipeline", "get_args_parser", "evaluate", "count_correct", "main"]


@torch.inference_mode()
def count_correct(model, images, labels, *, device, batch_size=1000) -> int:
    """Number of uint8 CIFAR-10 images that ``model`` classifies correctly."""
    model.eval()
    correct = 0
    for xb, yb in kdata.iterate_batches(images, labels, batch_size):
        out = model(kdata.normalize(xb).to(device))
        correct += int((out.argmax(1).cpu() == yb).sum())
    return correct


def evaluate(model, images, labels, *, device, batch_size=1000) -> float:
    """Top-1 accuracy (%) on uint8 CIFAR-10 images."""
    correct = count_correct(model, images, labels, device=device, batch_size=batch_size)
    return 100.0 * correct / max(len(labels), 1)


def _epoch_generator(seed: int, stage: str, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + STAGES.index(stage) * 10_007 + epoch)


class CifarPipeline(Pipeline):
    """:class:`~kep_train.train.pipeline.Pipeline` on CIFAR-10 tensors, one process.

    ``--model`` is a zoo name (:data:`kep_train.models.CIFAR_MODELS`) or the user's own
    ``module.path:callable`` (:func:`kep_train.models.build_user_model`): imported here, before
    the data is loaded, so that a wrong spec fails at once.
    """

    def __init__(self, args):
        super().__init__(args)
        if is_user_model(args.model):
            load_user_factory(args.model)       # import, attribute, callable: one line each
        elif args.model not in CIFAR_MODELS:
            raise KepError(f"unknown model {args.model!r}; choose one of "
                           f"{', '.join(CIFAR_MODELS)}, or give module.path:callable")

    # -- data ---------------------------------------------------------------------------------
    def load_data(self) -> kdata.CifarData:
        a = self.args
        if not a.data_dir:
            raise KepError("--data-dir is required")
        data = kdata.load_cifar10_data(a.data_dir, download=not a.no_download,
                                       subset=a.subset, test_subset=a.test_subset,
                                       use_cache=not a.no_cache)
        if len(data.train_y) < self.sched.batch_size:
            raise KepError(f"{len(data.train_y)} training images, fewer than one batch "
                           f"(--batch-size {self.sched.batch_size})")
        return data

    def batches(self, stage, epoch):
        g = _epoch_generator(self.args.seed, stage, epoch)
        return kdata.iterate_batches(self.data.train_x, self.data.train_y, self.sched.batch_size,
                                     generator=g, train=True, drop_last=True)

    def steps_per_epoch(self):
        return max(1, len(self.data.train_y) // self.sched.batch_size)

    def prepare(self, xb):
        return kdata.normalize(xb, self.data.mean, self.data.std).to(self.device,
                                                                      non_blocking=True)

    def evaluate_model(self, model) -> float:
        """Top-1 (%) on the test images; the counts go to ``last_eval`` (epoch records)."""
        n = len(self.data.test_y)
        correct = count_correct(model, self.data.test_x, self.data.test_y, device=self.device)
        self.last_eval = {"test_correct": correct, "test_images": n}
        return 100.0 * correct / max(n, 1)

    def taylor_importance(self):
        g = torch.Generator().manual_seed(self.args.seed + 12345)
        n = self.sched.taylor_batches
        d = self.data
        xs = kdata.iterate_batches(d.train_x, d.train_y, min(128, len(d.train_y)),
                                   generator=g, train=True)
        batches = [b for _, b in zip(range(n), xs)]

        def loss_fn(m, batch):
            xb, yb = batch
            return F.cross_entropy(m(kdata.normalize(xb).to(self.device)),
                                   yb.to(self.device))
        return TaylorImportance(loss_fn, batches)

    def calibration_batch(self) -> torch.Tensor:
        """``128 * --calib-batches`` normalised training images, chosen by the seed."""
        d = self.data
        g = torch.Generator().manual_seed(self.args.seed + 777)
        n = min(len(d.train_y), 128 * max(1, self.args.calib_batches))
        idx = torch.randperm(len(d.train_y), generator=g)[:n]
        return kdata.normalize(d.train_x[idx], d.mean, d.std)

    # -- model ----------------------------------------------------------------------------------
    def build(self):
        if is_user_model(self.args.model):     # output shape checked on a CIFAR input
            return build_user_model(self.args.model, self.data.num_classes,
                                    input_shape=self.data.input_shape).to(self.device)
        return super().build()


def get_args_parser():
    """The options of ``python -m kep_train cifar``."""
    p = base_args_parser(
        "cifar", model_default="resnet20", model_names=CIFAR_MODELS, user_models=True,
        data_dir=dict(default="data/cifar10", required=False,
                      help="CIFAR-10 folder: torchvision's cifar-10-batches-py (downloaded "
                           "when missing and online) or image folders train/<class>/*, "
                           "test/<class>/* (default: %(default)s)"))
    g = p.add_argument_group("decoded-image cache")
    g.add_argument("--no-cache", action="store_true",
                   help="neither read nor write the cache of decoded image folders "
                        "($KEP_CACHE, else $XDG_CACHE_HOME/kep_toolkit, else "
                        "~/.cache/kep_toolkit; keyed on the files' names, sizes and "
                        "modification times)")
    add_logging_args(p)
    return p


@cli_errors
def main(argv: list[str] | None = None) -> int:
    """Entry of ``python -m kep_train cifar``."""
    args = parse_command_args(get_args_parser(), argv)
    if kdist.env_world_size() > 1:
        raise KepError("multi-process (torchrun) runs are supported by the imagenet "
                       "command; run cifar as one process")
    return run_command(CifarPipeline(args))
