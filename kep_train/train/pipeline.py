# SPDX-License-Identifier: Apache-2.0
"""The generic pipeline: dense training, KEP pruning, fine-tuning, export, reports.

The data set is an object (:class:`DataSet`) that a front end loads: :mod:`kep_train.train.cifar`
(``python -m kep_train cifar``) and :mod:`kep_train.train.imagenet` (``python -m kep_train
imagenet``) subclass :class:`Pipeline` with their data set and its batches; nothing here
depends on a particular data set.

The pipeline has three stages, each a number of epochs:

1. ``dense``: train the dense model (skipped with ``--pretrained``).
2. ``reg``: KEP's regularization stage. Element significance is estimated, K is fixed per layer,
   the prior mask marks the ``k*k - K`` least significant elements of every plane, and the
   controllable penalty ``(lambda_t/2) * sum((M*W)^2)`` pushes them towards zero while lambda grows.
3. ``finetune``: masked elements are set to zero and kept there (parametrized masks), fine-tune.

Every method runs the same stages 2 and 3 with the same learning rates, so methods compare at
equal epochs: ``kep`` (penalty in stage 2, prune at the start of stage 3), ``kep`` with
``--no-penalty`` (the ablation: direct top-K pruning at the start of stage 2), ``magnitude``
(unstructured, same kept count per layer as KEP, pruned at the start of stage 2), ``filter-l1``
(Li et al. 2017 at KEP's MACs, pruned at the start of stage 2) and ``dense`` (never pruned).
A checkpoint is written atomically after every epoch; ``--resume`` continues from it to the same
final weights as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from kep_common.errors import KepError
from kep_common.fileio import atomic_torch_save, check_output_dir, check_output_file
from kep_common.log import setup_logging, verbosity
from kep_train.models import build_model
from kep_train.pruning import (KEPPruner, MagnitudeImportance, PenaltySchedule, allocate_keep,
                               apply_masks, cosine_lr, count_costs, current_masks,
                               filter_l1_masks, magnitude_masks, prunable_convs,
                               removed_share)
from kep_train.train import distributed as kdist
from kep_train.train.allocator import keep_freed_memory
from kep_train.train.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION,
                                        check_model_arg, checkpoint_from_object,
                                        load_checkpoint, load_tensors_file)
from kep_train.train.report import append_metrics, rewrite_metrics

__all__ = ["STAGES", "METHODS", "Schedule", "SCHEDULES", "DataSet", "Pipeline", "Run",
           "base_args_parser", "resolve_schedule", "train_one_epoch", "run_command",
           "positive_int", "strictly_positive_int", "fraction", "nonneg_float",
           "positive_float"]

log = logging.getLogger(__name__)

STAGES = ("dense", "reg", "finetune")
METHODS = ("kep", "magnitude", "filter-l1", "dense")


@dataclass(frozen=True)
class Schedule:
    """Hyper-parameters of a schedule preset (epochs, learning rates, batch size)."""

    dense_epochs: int
    reg_epochs: int
    finetune_epochs: int
    batch_size: int = 256
    lr: float = 0.2                # peak LR of the dense stage (SGD, Nesterov momentum)
    warmup: float = 0.1            # fraction of the dense stage with linear warm-up
    prune_lr: float = 0.04         # LR of the reg stage (constant) and start of fine-tune cosine
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    penalty: PenaltySchedule = PenaltySchedule()
    taylor_batches: int = 16       # batches for the Taylor importance estimate


SCHEDULES = {
    # 2 CPU cores: ResNet-20 end to end in under an hour (about 100 s per epoch on an idle
    # machine); docs/method.md, "Schedules", says why these values
    "quick": Schedule(dense_epochs=20, reg_epochs=3, finetune_epochs=8, label_smoothing=0.1,
                      penalty=PenaltySchedule(init=0.0, step=3e-3, every=10, cap=0.2,
                                              threshold=0.02)),
    # GPU schedule (our choice; the paper's own values are not published in the abstract)
    "paper": Schedule(dense_epochs=160, reg_epochs=40, finetune_epochs=60, batch_size=128,
                      lr=0.1, warmup=0.02, prune_lr=0.01,
                      penalty=PenaltySchedule(init=0.0, step=1e-4, every=50, cap=0.05,
                                              threshold=0.01)),
}


class DataSet(Protocol):
    """What the pipeline reads from its data set; the front end that loads it
    (:meth:`Pipeline.load_data`) also gives its batches (:meth:`Pipeline.batches`, ...).

    Implemented by :class:`kep_train.data.cifar.CifarData` and
    :class:`kep_train.data.imagenet.ImageNetData`.
    """

    name: str                               # "cifar", "imagenet": checkpoints, reports, .kep
    num_classes: int
    mean: tuple                             # per channel, of pixels scaled to [0, 1]
    std: tuple
    input_shape: tuple                      # C, H, W of the model's input


# ------------------------------------------------------------------------------------------
# argument parsing

def _number(text, convert, what):
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


_MAX_INT = 2**31 - 1    # bound on integer options (seeds, counts): no overflow further down


def positive_int(text):
    """argparse type: an integer in [0, 2**31 - 1]."""
    v = _number(text, int, "an integer")
    if not 0 <= v <= _MAX_INT:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {_MAX_INT}], got {v}")
    return v


def strictly_positive_int(text):
    """argparse type: an integer in [1, 2**31 - 1]."""
    v = _number(text, int, "an integer")
    if not 1 <= v <= _MAX_INT:
        raise argparse.ArgumentTypeError(f"must be an integer in [1, {_MAX_INT}], got {v}")
    return v


def thread_count(text):
    """argparse type: an integer in [0, 1024] (0: torch's default)."""
    v = _number(text, int, "an integer")
    if not 0 <= v <= 1024:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 1024], got {v}")
    return v


def fraction(text):
    """argparse type: a number in (0, 1]."""
    v = _number(text, float, "a number")
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {v}")
    return v


def unit_float(text):
    """argparse type: a number in [0, 1]."""
    v = _number(text, float, "a number")
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {v}")
    return v


def nonneg_float(text):
    """argparse type: a finite number >= 0."""
    v = _number(text, float, "a number")
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return v


def positive_float(text):
    """argparse type: a finite number > 0."""
    v = _number(text, float, "a number")
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return v


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2 and one line on error (argparse's own format)."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def base_args_parser(command: str, *, data_dir: dict, model_default: str,
                     model_names, user_models: bool = False) -> argparse.ArgumentParser:
    """The options that every pipeline command shares; a front end adds its own groups.

    Parameters
    ----------
    command : str
        The command's name (``python -m kep_train COMMAND``).
    data_dir : dict
        Keyword arguments of ``--data-dir`` (``default``, ``required``, ``help``).
    model_default : str
        Default of ``--model``.
    model_names : iterable of str
        The models the command trains (listed in the help of ``--model``).
    user_models : bool
        ``--model`` also takes the user's own ``module.path:callable``
        (:func:`kep_train.models.build_user_model`).

    Returns
    -------
    argparse.ArgumentParser
        Exit code 2 and one line on a bad option.
    """
    p = _Parser(
        prog=f"python -m kep_train {command}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train a CNN, prune the unimportant elements of every kernel plane with KEP "
            "(prior mask +\ncontrollable penalty), fine-tune, and export the compressed int8 "
            "model.\n\nStages: dense (--dense-epochs) -> reg (--reg-epochs, penalty on masked "
            "elements) ->\nfinetune (--finetune-epochs, masked elements fixed at zero). "
            "Schedules are presets whose\nvalues each option below overrides."),
        epilog=("examples:\n"
                f"  python -m kep_train {command} --data-dir DATA --out runs/r20-k4\n"
                f"  python -m kep_train {command} --data-dir DATA --out runs/l1 --method "
                "filter-l1 --pretrained runs/r20-k4/dense.pt\n"
                f"  python -m kep_train {command} --data-dir DATA --out runs/smoke --subset 512 "
                "--dense-epochs 1 --reg-epochs 1 --finetune-epochs 1"))
    g = p.add_argument_group("data and output")
    g.add_argument("--data-dir", **data_dir)
    g.add_argument("--out", default="runs/kep", help="output folder (default: %(default)s)")
    g.add_argument("--subset", type=positive_int, default=0,
                   help="use only the first N training images (smoke runs); 0 = all")
    g.add_argument("--no-download", action="store_true",
                   help="never download CIFAR-10 through torchvision (offline machines)")
    g.add_argument("--test-subset", type=positive_int, default=0,
                   help="evaluate on the first N test images only; 0 = all 10,000")
    g = p.add_argument_group("model and method")
    g.add_argument("--model", default=model_default,
                   help="model name: " + ", ".join(model_names)
                   + (", or your own module.path:callable, built as callable(num_classes=N)"
                      " with the current directory on the Python path; give it again to "
                      "--resume" if user_models else "") + " (default: %(default)s)")
    g.add_argument("--method", default="kep", choices=METHODS,
                   help="kep | magnitude (unstructured, same sparsity) | filter-l1 (Li et al., "
                        "same MACs) | dense (default: %(default)s)")
    g.add_argument("--keep", type=int, default=None,
                   help="K: elements kept in every pruned kernel plane (1..k*k; default 4)")
    g.add_argument("--target-macs", type=fraction, default=None,
                   help="instead of --keep: choose K per layer to keep this fraction of the "
                        "whole network's MACs")
    g.add_argument("--target-params", type=fraction, default=None,
                   help="instead of --keep: choose K per layer to keep this fraction of the "
                        "whole network's weights")
    g.add_argument("--importance", default="taylor", choices=("taylor", "magnitude"),
                   help="element significance: |w*dL/dw| over batches, or |w| "
                        "(default: %(default)s)")
    g.add_argument("--no-penalty", action="store_true",
                   help="ablation: prune the top-K directly, no regularization stage penalty")
    g.add_argument("--remask-every", type=positive_int, default=0,
                   help="re-estimate the prior mask every N epochs of the reg stage (0 = never)")
    g.add_argument("--prune-first", action="store_true",
                   help="also prune the first conv (3 input channels)")
    g.add_argument("--prune-1x1", action="store_true", help="also prune 1x1 convs (K=1 only)")
    g.add_argument("--ignore", default="", help="comma-separated layer names never pruned")
    g = p.add_argument_group("schedule (preset values unless given)")
    g.add_argument("--schedule", default="quick", choices=tuple(SCHEDULES),
                   help="quick: ResNet-20 in under an hour on 2 CPU cores; paper: long GPU "
                        "schedule (default: %(default)s)")
    g.add_argument("--dense-epochs", type=positive_int, default=None)
    g.add_argument("--reg-epochs", type=positive_int, default=None)
    g.add_argument("--finetune-epochs", type=positive_int, default=None)
    g.add_argument("--batch-size", type=strictly_positive_int, default=None)
    g.add_argument("--lr", type=positive_float, default=None, help="peak LR of the dense stage")
    g.add_argument("--prune-lr", type=positive_float, default=None,
                   help="LR of the reg stage and start of the fine-tune cosine")
    g.add_argument("--label-smoothing", type=unit_float, default=None,
                   help="label smoothing of the cross-entropy loss, in [0, 1] (every stage)")
    g.add_argument("--penalty-init", type=nonneg_float, default=None,
                   help="lambda at the start of the reg stage")
    g.add_argument("--penalty-step", type=nonneg_float, default=None,
                   help="lambda grows by this ...")
    g.add_argument("--penalty-every", type=strictly_positive_int, default=None,
                   help="... every this many iterations ...")
    g.add_argument("--penalty-cap", type=nonneg_float, default=None, help="... up to this cap")
    g.add_argument("--penalty-threshold", type=nonneg_float, default=None,
                   help="growth stops when ||M*W||/||W|| falls below this")
    g = p.add_argument_group("run")
    g.add_argument("--pretrained", default=None, metavar="CKPT",
                   help="start from this checkpoint's weights and skip the dense stage")
    g.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.pt (same final result as no interruption)")
    g.add_argument("--seed", type=positive_int, default=0)
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    g.add_argument("--threads", type=thread_count, default=0,
                   help="CPU threads for torch, at most 1024 (0 = torch's default)")
    g.add_argument("--eval-every", type=strictly_positive_int, default=4, metavar="N",
                   help="evaluate the test set after every N-th epoch of a stage and after "
                        "each stage's last epoch (default %(default)s; 1: every epoch); "
                        "the weights do not depend on it")
    g.add_argument("--calib-batches", type=strictly_positive_int, default=4,
                   help="training batches used to calibrate int8 activation scales")
    g.add_argument("--no-export", action="store_true", help="do not write model.kep")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--halt-after", type=positive_int, default=0, help=argparse.SUPPRESS)
    return p


def parse_command_args(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """Parse a pipeline command's arguments and set up its messages (``kep_common.log``);
    ``--quiet`` also turns the progress bars off."""
    args = parser.parse_args(argv)
    setup_logging(verbosity(args))
    if args.quiet:
        args.no_progress = True
    return args


def resolve_schedule(args) -> Schedule:
    """The preset with the command line's overrides applied."""
    s = SCHEDULES[args.schedule]
    pen = s.penalty
    pen_over = {k: getattr(args, f"penalty_{k}") for k in ("init", "step", "every", "cap",
                                                            "threshold")}
    try:
        pen = dataclasses.replace(pen, **{k: v for k, v in pen_over.items() if v is not None})
    except ValueError as e:   # PenaltySchedule checks its own fields
        raise KepError(f"--penalty-*: {e}") from None
    over = {k: getattr(args, k) for k in ("dense_epochs", "reg_epochs", "finetune_epochs",
                                          "batch_size", "lr", "prune_lr", "label_smoothing")}
    s = dataclasses.replace(s, penalty=pen, **{k: v for k, v in over.items() if v is not None})
    if s.batch_size < 1:
        raise KepError("--batch-size must be >= 1")
    return s


# ------------------------------------------------------------------------------------------
# training primitives

def train_one_epoch(model, batches, optimizer, lr_at, *, device, prepare, pruner=None,
                    label_smoothing=0.0, progress=None, reduce=None):
    """One epoch of SGD. ``lr_at(i)`` gives the LR of iteration ``i``; ``pruner`` (when given)
    adds its penalty and advances its schedule every iteration. ``prepare(xb)`` turns a batch
    into the model's float input on ``device``; ``reduce(tensor)`` sums the epoch's (loss sum,
    correct, seen) over processes (default: none). Returns (loss, top-1 %)."""
    model.train()
    total_loss = correct = seen = 0
    for i, (xb, yb) in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(i)
        xb = prepare(xb)
        yb = yb.to(device, non_blocking=True)
        out = model(xb)
        loss = F.cross_entropy(out, yb, label_smoothing=label_smoothing)
        full = loss + pruner.penalty() if pruner is not None else loss
        optimizer.zero_grad(set_to_none=True)
        full.backward()
        optimizer.step()
        if pruner is not None:
            pruner.step()
        total_loss += loss.item() * yb.numel()
        correct += int((out.argmax(1) == yb).sum())
        seen += yb.numel()
        if progress is not None:
            post = {"loss": f"{total_loss / seen:.3f}", "acc": f"{100 * correct / seen:.1f}"}
            if pruner is not None:
                post["lambda"] = f"{pruner.lam:.3g}"
            progress.set_postfix(post, refresh=False)
            progress.update(1)
    if reduce is not None:
        total_loss, correct, seen = reduce(torch.tensor([total_loss, correct, seen])).tolist()
    return total_loss / max(seen, 1), 100.0 * correct / max(seen, 1)


def _make_optimizer(model, sched: Schedule):
    return torch.optim.SGD(model.parameters(), lr=sched.lr, momentum=sched.momentum,
                           weight_decay=sched.weight_decay, nesterov=True)


# ------------------------------------------------------------------------------------------
# the pipeline

class Run:
    """State of one pipeline run (model, masks, stage, history), saved after every epoch."""

    def __init__(self, args, sched: Schedule, device):
        self.args, self.sched, self.device = args, sched, device
        self.data: DataSet | None = None
        self.out = Path(args.out)
        self.ckpt_path = self.out / "checkpoint.pt"
        self.history: list[dict] = []
        self.stage_seconds = {s: 0.0 for s in STAGES}
        self.stage, self.epoch = "dense", 0
        self.kep: dict = {}
        self.dense_top1 = None
        self.pruner: KEPPruner | None = None
        self.optimizer = None
        self.epochs_this_process = 0

    # -- persistence --------------------------------------------------------------------------
    def state(self) -> dict:
        plain = {k: v.detach().cpu().clone() for k, v in self._plain_state().items()}
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "model_name": self.args.model, "num_classes": self.data.num_classes,
            "dataset": self.data.name, "mean": list(self.data.mean),
            "std": list(self.data.std), "input_shape": list(self.data.input_shape),
            "model": plain, "masks": current_masks(self.model),
            "kep": self.kep, "stage": self.stage, "epoch": self.epoch,
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "pruner": self.pruner.state_dict() if self.pruner else None,
            "args": {k: v for k, v in vars(self.args).items() if k != "halt_after"},
            "history": self.history, "stage_seconds": self.stage_seconds,
            "dense_top1": self.dense_top1,
        }

    def _plain_state(self):
        """State dict with parametrized weights replaced by their masked value."""
        sd = {}
        for k, v in self.model.state_dict().items():
            if ".parametrizations.weight.original" in k:
                continue
            if ".parametrizations.weight.0.mask" in k:
                continue
            sd[k] = v
        for name, mod in self.model.named_modules():
            if hasattr(mod, "parametrizations") and "weight" in mod.parametrizations:
                sd[f"{name}.weight"] = mod.weight.detach()
        return sd

    def save(self, path=None):
        """Write the checkpoint (on the main process only; a no-op on the others)."""
        if kdist.is_main():
            atomic_torch_save(self.state(), path or self.ckpt_path)


def _stage_epochs(sched: Schedule, stage: str) -> int:
    return {"dense": sched.dense_epochs, "reg": sched.reg_epochs,
            "finetune": sched.finetune_epochs}[stage]


def _progress(total, desc, disable):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, disable=disable, dynamic_ncols=True,
                file=sys.stderr)


class Pipeline:
    """The dense -> reg -> finetune pipeline around :class:`Run`.

    A front end subclasses it with its data set: :meth:`load_data` returns the
    :class:`DataSet`, and :meth:`batches`, :meth:`steps_per_epoch`, :meth:`prepare`,
    :meth:`evaluate_model`, :meth:`taylor_importance` and :meth:`calibration_batch` read it.
    The other hooks (:meth:`build`, :meth:`wrap`, :meth:`reduce`, :meth:`sync_masks`,
    :meth:`report_extra`) have one-process defaults.

    Parameters
    ----------
    args : argparse.Namespace
        Options of :func:`base_args_parser` (and the front end's own).

    Raises
    ------
    KepError
        Inconsistent options, or ``--device cuda`` without CUDA.
    """

    #: a failed export of ``model.kep`` fails the run (otherwise report.json says why)
    strict_export = True

    def __init__(self, args):
        self.args = args
        self.data: DataSet | None = None
        self.sched = resolve_schedule(args)
        if args.device == "cuda" and not torch.cuda.is_available():
            raise KepError("--device cuda asked for, but no CUDA device is available")
        self.device = torch.device(
            "cuda" if args.device == "cuda" or (args.device == "auto"
                                                and torch.cuda.is_available()) else "cpu")
        if args.threads:
            torch.set_num_threads(args.threads)
        self.allocator = keep_freed_memory()   # no page faults on reused activation buffers
        budgets = [x is not None for x in (args.keep, args.target_macs, args.target_params)]
        if sum(budgets) > 1:
            raise KepError("give only one of --keep, --target-macs, --target-params")
        if not any(budgets):
            args.keep = 4
        if args.keep is not None and not 1 <= args.keep <= 9:
            raise KepError(f"--keep must be in 1..9 (k*k for 3x3 kernels), got {args.keep}")
        if args.method == "filter-l1" and args.target_params is not None:
            raise KepError("filter-l1 matches MACs: use --keep or --target-macs")

    # -- the data set: every front end implements these ---------------------------------------
    def load_data(self) -> DataSet:
        """Load the data set (once, in :meth:`run`, before the model is built)."""
        raise NotImplementedError

    def batches(self, stage: str, epoch: int):
        """The training batches ``(images, labels)`` of one epoch of ``stage``."""
        raise NotImplementedError

    def steps_per_epoch(self) -> int:
        """Number of training batches per epoch."""
        raise NotImplementedError

    def prepare(self, xb):
        """A training batch as the model's float input on the device."""
        raise NotImplementedError

    def evaluate_model(self, model) -> float:
        """Top-1 (%) on the test/validation set."""
        raise NotImplementedError

    def taylor_importance(self):
        """The Taylor element-significance estimator (fixed batches from the seed)."""
        raise NotImplementedError

    def calibration_batch(self) -> torch.Tensor:
        """Normalised float training images for the int8 calibration of ``model.kep``."""
        raise NotImplementedError

    # -- hooks that the multi-process pipeline overrides --------------------------------------
    def build(self):
        """The model, randomly initialised (same seed on every process), on the device."""
        return build_model(self.args.model, self.data.num_classes).to(self.device)

    def wrap(self, model):
        """The module that trains (e.g. a DDP wrapper); pruning acts on ``model`` itself."""
        return model

    def reduce(self, values):
        """Sum metrics over processes (one process: unchanged)."""
        return values

    def sync_masks(self, r):
        """Make masks identical on every process (one process: nothing to do)."""

    def report_extra(self, r) -> dict:
        """Extra entries of report.json."""
        return {}

    # -- run ----------------------------------------------------------------------------------
    #: files a run writes into ``--out`` (checked before the work starts)
    OUTPUT_FILES = ("checkpoint.pt", "dense.pt", "report.json", "model.kep", "accuracy.png",
                    "kept_fraction.png", "kernel_heatmap.png", "metrics.jsonl")

    def run(self) -> dict:
        a = self.args
        out = Path(a.out)
        check_output_dir(out, "--out")     # also removes temp files of killed writes
        for name in self.OUTPUT_FILES:
            check_output_file(out / name, "output")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise KepError(f"cannot create output folder {a.out!r}: {e.strerror}") from None
        self._check_ignore()
        r = Run(a, self.sched, self.device)
        resume_state = None
        if a.resume and r.ckpt_path.is_file():
            resume_state = load_checkpoint(r.ckpt_path, resume=True)
            self._check_resume_args(resume_state)
            if resume_state["stage"] == "done":
                report = self._completed_report(out)
                if report is not None:
                    log.info("the run in %r is complete (report.json%s written): nothing to "
                             "resume", a.out, "" if a.no_export else ", model.kep")
                    return report
                log.warning("the run in %r is complete but its outputs are missing or "
                            "damaged: writing them again", a.out)
        elif a.resume:
            log.warning("no checkpoint in %r; starting from scratch", a.out)
        elif r.ckpt_path.is_file():
            raise KepError(f"{str(r.ckpt_path)!r} exists: add --resume to continue that run, "
                           "or choose another --out")
        if a.pretrained and resume_state is None:
            self._check_pretrained(a.pretrained)
        kdist.barrier()  # every process has looked for the checkpoint before any writes
        self.data = r.data = self.load_data()
        torch.manual_seed(a.seed)
        r.model = self.build()
        self.layers = prunable_convs(r.model, ignored_layers=self._ignored(),
                                     prune_first=a.prune_first, prune_1x1=a.prune_1x1)
        if a.method != "dense" and not self.layers:
            raise KepError(f"model {a.model!r} has no prunable convolution")
        self.costs_dense = count_costs(r.model, self.data.input_shape)
        r.kep = {"method": a.method, "penalty": not a.no_penalty and a.method == "kep",
                 "importance": a.importance, "layers": list(self.layers)}
        if resume_state is not None:
            self._restore(r, resume_state)
        elif a.pretrained:
            self._load_pretrained(r)
        self.r = r
        if kdist.is_main():   # metrics.jsonl restarts from the checkpoint's history
            rewrite_metrics(out, r.history)
        if r.stage != "done":      # "done": a finished run whose outputs are written again
            for stage in STAGES:
                if STAGES.index(stage) < STAGES.index(r.stage):
                    continue
                self._run_stage(r, stage)
            r.stage = "done"
            r.save()
        return self._finish(r)

    def _check_pretrained(self, path):
        """Before the data is loaded: a KEP checkpoint given to ``--pretrained`` must be valid,
        dense and of this model (other files are the front end's to judge, when loading)."""
        obj = load_tensors_file(path, "--pretrained", "a weights file")
        if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
            ck = checkpoint_from_object(obj, path)
            if ck["model_name"] != self.args.model:
                raise KepError(f"--pretrained holds a {ck['model_name']!r}, not "
                               f"{self.args.model!r}")
            if ck.get("masks"):
                raise KepError("--pretrained must be a dense checkpoint (this one is pruned)")

    def _ignored(self) -> list[str]:
        return [s.strip() for s in self.args.ignore.split(",") if s.strip()]

    def _check_ignore(self):
        """KepError naming the ``--ignore`` names that are no convolution of the model (checked
        on a throw-away model before the data is loaded: layer names do not depend on it)."""
        names = self._ignored()
        if not names:
            return
        convs = [n for n, m in build_model(self.args.model).named_modules()
                 if isinstance(m, torch.nn.Conv2d)]
        unknown = [n for n in names if n not in convs]
        if unknown:
            more = ", ..." if len(convs) > 6 else ""
            raise KepError(f"--ignore: {', '.join(map(repr, unknown[:5]))} "
                           f"{'is no convolution' if len(unknown) == 1 else 'are no convolutions'}"
                           f" of {self.args.model!r} (its convolutions: "
                           f"{', '.join(convs[:6])}{more})")

    def _completed_report(self, out: Path) -> dict | None:
        """The report of a finished run whose outputs are all there (``report.json`` and, unless
        ``--no-export`` or an export that was refused, a valid ``model.kep``); else None."""
        from kep_train.export.kepfile import load_kep
        try:
            report = json.loads((out / "report.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(report, dict) or not isinstance(report.get("top1"), dict):
            return None
        export = report.get("export")
        refused = isinstance(export, dict) and export.get("exported") is False
        if not self.args.no_export and not refused:
            try:
                load_kep(out / "model.kep")
            except KepError:
                return None
        return report

    def _stage_length(self, stage: str) -> int:
        """Epochs of ``stage`` in this run (the dense baseline runs all of them as one)."""
        a, s = self.args, self.sched
        if a.method == "dense" and not a.pretrained and stage == "dense":
            return s.dense_epochs + s.reg_epochs + s.finetune_epochs
        return _stage_epochs(s, stage)

    def _check_resume_args(self, ck):
        # a user model recorded in the checkpoint is rebuilt only from the same --model given
        # again (a checkpoint never imports code by itself)
        check_model_arg(ck["model_name"], self.args.model,
                        f"--resume: checkpoint {str(Path(self.args.out) / 'checkpoint.pt')!r}")
        saved = ck.get("args") or {}
        for key in ("model", "method", "keep", "target_macs", "target_params", "seed",
                    "schedule", "dense_epochs", "reg_epochs", "finetune_epochs", "subset",
                    "pretrained", "no_penalty", "importance", "batch_size"):
            if key in saved and saved[key] != getattr(self.args, key):
                raise KepError(f"--resume: --{key.replace('_', '-')} is {getattr(self.args, key)!r}"
                               f" but the checkpoint was made with {saved[key]!r}")

    def _restore(self, r, ck):
        """Continue from the checkpoint ``ck`` (fields validated by ``load_checkpoint``); its
        parts are checked against this run's model, layers and method here. KepError if they
        do not fit."""
        a = self.args
        where = f"--resume: checkpoint {str(r.ckpt_path)!r}"
        if ck["num_classes"] != self.data.num_classes:
            raise KepError(f"{where} holds a model for {ck['num_classes']} classes, the data "
                           f"set has {self.data.num_classes}")
        r.stage, r.epoch = ck["stage"], ck["epoch"]
        if r.stage != "done" and r.epoch > self._stage_length(r.stage):
            raise KepError(f"{where} is at epoch {r.epoch} of stage {r.stage!r}, which has "
                           f"{self._stage_length(r.stage)} epochs")
        r.history = list(ck.get("history") or [])
        r.stage_seconds.update(ck.get("stage_seconds") or {})
        r.kep = ck.get("kep") or r.kep
        r.dense_top1 = ck.get("dense_top1")
        masks = ck.get("masks") or {}
        try:
            if masks:
                apply_masks(r.model, masks)
            res = r.model.load_state_dict(self._to_parametrized(r.model, ck["model"]),
                                          strict=False)
        except (KeyError, ValueError, RuntimeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise KepError(f"{where} does not fit the model: {first}") from None
        missing = [k for k in res.missing_keys if not k.endswith(".weight.0.mask")]
        if res.unexpected_keys or missing:
            raise KepError(f"{where} does not fit the model: keys "
                           f"{(res.unexpected_keys or missing)[:3]}")
        has_pruner = ck.get("pruner") is not None and r.stage != "done"
        if has_pruner:
            r.pruner = self._make_pruner(r.model)
            self._load_pruner(r.pruner, ck["pruner"], where)
        # at epoch 0 a stage starts again from its top (pruning included)
        penalty_run = a.method == "kep" and not a.no_penalty
        if a.method != "dense":
            if r.stage == "reg" and r.epoch > 0 and penalty_run and not has_pruner:
                raise KepError(f"{where}: stage 'reg' of a KEP run without its pruner state")
            if not masks and (r.stage == "done" or (r.stage == "finetune" and (
                    r.epoch > 0 or not has_pruner)) or (r.stage == "reg" and r.epoch > 0
                                                        and not penalty_run)):
                raise KepError(f"{where}: stage {r.stage!r} of a {a.method} run without masks")
        if r.stage != "done" and r.epoch > 0:
            r.optimizer = _make_optimizer(r.model, self.sched)
            if ck.get("optimizer") is not None:
                self._load_optimizer(r.optimizer, ck["optimizer"], where)
        log.info("resumed %s at stage %s, epoch %d", r.ckpt_path, r.stage, r.epoch)

    def _load_pruner(self, pruner, state, where):
        """Load a pruner state; KepError unless its masks and K fit the prunable layers."""
        try:
            pruner.load_state_dict(state)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise KepError(f"{where}: malformed pruner state ({type(e).__name__})") from None
        layers = self.layers
        if set(pruner.prior) != set(layers) or set(pruner.keep) != set(layers):
            raise KepError(f"{where}: the pruner state names other layers than the prunable "
                           "layers of the model")
        for n, m in layers.items():
            kk = m.weight[0, 0].numel()
            if tuple(pruner.prior[n].shape) != tuple(m.weight.shape) \
                    or not 1 <= pruner.keep[n] <= kk:
                raise KepError(f"{where}: the pruner state of layer {n!r} does not fit it")

    @staticmethod
    def _load_optimizer(opt, state, where):
        """Load an optimizer state; KepError unless it fits the parameters and the schedule."""
        fresh = [{k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")}
                 for g in opt.param_groups]
        try:
            opt.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise KepError(f"{where}: the optimizer state does not fit the model ({first})") \
                from None
        for group, want in zip(opt.param_groups, fresh):
            if any(group.get(k) != v for k, v in want.items()):
                raise KepError(f"{where}: the optimizer settings differ from the schedule's")
            for p in group["params"]:
                for v in opt.state.get(p, {}).values():
                    if isinstance(v, torch.Tensor) and v.dim() and v.shape != p.shape:
                        raise KepError(f"{where}: the optimizer state does not fit the model")

    @staticmethod
    def _to_parametrized(model, plain):
        """Map a plain state dict onto a model whose weights may be parametrized."""
        sd = dict(plain)
        for name, mod in model.named_modules():
            if hasattr(mod, "parametrizations") and "weight" in mod.parametrizations:
                key = f"{name}.weight" if name else "weight"
                if key in sd:
                    sd[f"{name}.parametrizations.weight.original"] = sd.pop(key)
        return sd

    def _load_pretrained(self, r):
        ck = load_checkpoint(self.args.pretrained)
        if ck["model_name"] != self.args.model:
            raise KepError(f"--pretrained holds a {ck['model_name']!r}, not {self.args.model!r}")
        if ck.get("masks"):
            raise KepError("--pretrained must be a dense checkpoint (this one is pruned)")
        if ck["num_classes"] != self.data.num_classes:
            raise KepError(f"--pretrained holds a model for {ck['num_classes']} classes, the "
                           f"data set has {self.data.num_classes}")
        try:
            r.model.load_state_dict(ck["model"])
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise KepError(f"--pretrained does not fit the model: {first}") from None
        r.stage, r.epoch = "reg", 0
        r.kep["pretrained"] = str(self.args.pretrained)
        r.dense_top1 = self.evaluate_model(r.model)
        r.history.append({"stage": "pretrained", "epoch": 0, "test_top1": r.dense_top1,
                          **getattr(self, "last_eval", {})})

    # -- stages -------------------------------------------------------------------------------
    def _make_pruner(self, model):
        imp = (self.taylor_importance() if self.args.importance == "taylor"
               else MagnitudeImportance())
        return KEPPruner(model, imp, layers=self.layers, penalty=self.sched.penalty)

    def _budget(self, pruner):
        """Per-layer K from --keep / --target-macs / --target-params."""
        a = self.args
        if a.keep is not None:
            for n, m in self.layers.items():
                kk = m.weight[0, 0].numel()
                if a.keep > kk:
                    raise KepError(f"--keep {a.keep} exceeds k*k={kk} of layer {n!r}")
            return {n: a.keep for n in self.layers}
        scores = pruner.importance(pruner.model, self.layers)
        costs = {c.name: c for c in self.costs_dense}
        if a.target_macs is not None:
            per_el = {n: costs[n].out_hw[0] * costs[n].out_hw[1] for n in self.layers}
            other = sum(c.macs for c in self.costs_dense if c.name not in self.layers)
            frac = a.target_macs
        else:
            per_el = {n: 1 for n in self.layers}
            other = sum(c.params for c in self.costs_dense if c.name not in self.layers)
            frac = a.target_params
        try:
            return allocate_keep(scores, per_el, frac, other_macs=other)
        except ValueError as e:
            raise KepError(str(e)) from None

    def _start_pruning(self, r):
        """Called once, at the start of the reg stage: fix K, masks, and for the baselines (and
        the no-penalty ablation) prune right away."""
        a = self.args
        if a.method == "dense":
            return
        r.pruner = self._make_pruner(r.model)
        keep = self._budget(r.pruner)
        r.pruner.estimate(keep)
        r.kep["keep"] = keep
        self.sync_masks(r)
        if a.method == "kep" and not a.no_penalty:
            return  # penalty during reg, prune at the start of fine-tune
        if a.method == "kep":
            share = r.pruner.masked_share()
            r.pruner.prune()
        elif a.method == "magnitude":
            kept = {n: int(keep[n] * m.weight.shape[0] * m.weight.shape[1])
                    for n, m in self.layers.items()}
            masks = magnitude_masks(self.layers, kept)
            share = removed_share(self.layers, masks)
            apply_masks(r.model, masks)
        elif a.method == "filter-l1":
            target = sum(c.macs for c in self.costs_dense if c.name not in self.layers) + sum(
                c.out_hw[0] * c.out_hw[1] * c.in_channels * c.out_channels * keep[c.name]
                for c in self.costs_dense if c.name in self.layers)
            try:
                masks, frac = filter_l1_masks(r.model, target, self.data.input_shape)
            except ValueError as e:
                raise KepError(str(e)) from None
            share = removed_share(dict(r.model.named_modules()), masks)
            apply_masks(r.model, masks)
            r.kep["filter_fraction"] = frac
        self.sync_masks(r)
        r.pruner = None
        self._record_cut(r, "reg", share)

    def _record_cut(self, r, stage: str, share: float) -> None:
        """Test top-1 right after the cut, before any training of the pruned model, and the
        share of the pruned layers' weight norm the cut removed (``||W_cut|| / ||W||``), into
        ``r.kep["cut"]`` (report.json ``kep.cut``)."""
        top1 = self.evaluate_model(r.model)
        r.kep["cut"] = {"stage": stage, "test_top1": round(top1, 3),
                        **getattr(self, "last_eval", {}), "masked_share": round(share, 6)}
        log.info("cut at the start of %s: test top-1 %.2f %%, masked share of the weight norm "
                 "%.4f", stage, top1, share)

    def _stage_lr(self, stage):
        s = self.sched
        if stage == "dense":
            return lambda p: cosine_lr(s.lr, p, warmup=s.warmup)
        if stage == "reg":
            return lambda p: s.prune_lr
        return lambda p: cosine_lr(s.prune_lr, p)

    def _run_stage(self, r, stage):
        a, sched = self.args, self.sched
        n_epochs = _stage_epochs(sched, stage)
        if a.method == "dense" and not a.pretrained and stage != "dense":
            # dense baseline without a pretrained start: one schedule over all epochs
            return
        if a.method == "dense" and not a.pretrained and stage == "dense":
            n_epochs = sched.dense_epochs + sched.reg_epochs + sched.finetune_epochs
        if r.stage != stage:
            r.stage, r.epoch = stage, 0
            r.optimizer = None
        if r.epoch == 0 and r.optimizer is None:
            if stage == "reg":
                if r.dense_top1 is None:
                    r.dense_top1 = r.history[-1]["test_top1"] if r.history else None
                self._start_pruning(r)
            if stage == "finetune" and r.pruner is not None:
                share = r.pruner.masked_share()
                r.pruner.prune()
                r.pruner = None
                self._record_cut(r, "finetune", share)
            r.optimizer = _make_optimizer(r.model, sched)
        lr_fn = self._stage_lr(stage)
        steps = self.steps_per_epoch()
        trainee = self.wrap(r.model) if r.epoch < n_epochs else r.model
        while r.epoch < n_epochs:
            if (stage == "reg" and r.pruner is not None and a.remask_every and r.epoch
                    and r.epoch % a.remask_every == 0):
                r.pruner.estimate()
            t0 = time.time()
            bar = _progress(steps, f"{stage} {r.epoch + 1}/{n_epochs}",
                            a.no_progress or not kdist.is_main())
            base = r.epoch * steps
            loss, acc = train_one_epoch(
                trainee, self.batches(stage, r.epoch), r.optimizer,
                lambda i: lr_fn((base + i) / (n_epochs * steps)), device=self.device,
                pruner=r.pruner if stage == "reg" else None,
                label_smoothing=sched.label_smoothing, progress=bar, prepare=self.prepare,
                reduce=self.reduce)
            bar.close()
            # the test set after every --eval-every-th epoch and each stage's last: skipping one
            # changes no weight (batches come from per-epoch generators, evaluation draws none)
            evaluate = (r.epoch + 1) % a.eval_every == 0 or r.epoch + 1 == n_epochs
            top1 = self.evaluate_model(r.model) if evaluate else None
            dt = time.time() - t0
            r.stage_seconds[stage] += dt
            r.epoch += 1
            rec = {"stage": stage, "epoch": r.epoch, "train_loss": round(loss, 5),
                   "train_top1": round(acc, 3),
                   "test_top1": None if top1 is None else round(top1, 3),
                   **(getattr(self, "last_eval", {}) if evaluate else {}),  # test_correct, ..
                   "lr": r.optimizer.param_groups[0]["lr"], "seconds": round(dt, 2)}
            if r.pruner is not None:
                rec["lambda"] = r.pruner.lam
                rec["masked_share"] = round(r.pruner.masked_share(), 6)
            r.history.append(rec)
            if kdist.is_main():
                append_metrics(a.out, rec)
                log.info("%s", json.dumps(rec))
            if stage == "dense" and r.epoch == n_epochs:
                r.dense_top1 = top1
            r.save()
            if stage == "dense" and r.epoch == n_epochs:
                r.save(Path(a.out) / "dense.pt")
            r.epochs_this_process += 1
            if a.halt_after and r.epochs_this_process >= a.halt_after:
                # every process waits for the main one's checkpoint: a process that left first
                # would have torchrun stop the others, maybe before the checkpoint is written
                kdist.barrier()
                raise SystemExit(3)

    # -- outputs ------------------------------------------------------------------------------
    def _finish(self, r) -> dict:
        from kep_train.train.report import write_outputs
        if kdist.is_main():
            report = write_outputs(self, r)
        else:
            report = {"top1": {"dense": r.dense_top1,
                               "pruned": r.history[-1]["test_top1"] if r.history else None}}
        kdist.barrier()
        return report


def run_command(pipe: Pipeline) -> int:
    """Run ``pipe`` and print the one-line summary (on the main process); exit code 0."""
    main_process = kdist.is_main()   # before the run leaves its process group
    report = pipe.run()
    if main_process:
        print(f"dense top-1 {report['top1'].get('dense')}  pruned top-1 "
              f"{report['top1'].get('pruned')}  -> {pipe.args.out}/report.json")
    return 0
