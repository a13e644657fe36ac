# SPDX-License-Identifier: Apache-2.0
"""Multi-process training with PyTorch's own engine (``torchrun``): process group, helpers.

A run started by ``torchrun --nproc_per_node N -m kep_train imagenet ...`` finds ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``) in its environment;
:func:`init_from_env` joins the process group (backend ``nccl`` on CUDA, ``gloo`` on CPU).
Without these variables everything here is a no-op for one process, so the same code runs
unchanged on one CPU, one GPU or many.

Batch norm: with DDP every process normalises with the statistics of its own share of the
batch, so N processes would not compute what one process computes with the whole batch.
:func:`convert_sync_batchnorm` replaces batch norms by synchronised ones
(:class:`torch.nn.SyncBatchNorm` on CUDA, :class:`SyncBatchNorm2d` -- statistics summed with an
autograd-aware all-reduce -- on CPU, where PyTorch's own has no kernel), so that N processes
train the same model as one process with the same global batch.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from kep_common.errors import KepError

__all__ = ["DistInfo", "env_world_size", "init_from_env", "cleanup", "is_initialized",
           "rank", "world_size", "is_main", "barrier", "broadcast_tensors", "all_reduce_sum",
           "all_reduce_scores", "SyncBatchNorm2d", "convert_sync_batchnorm",
           "revert_sync_batchnorm", "SummedImportance"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int
    world_size: int
    local_rank: int
    backend: str | None   # None when not distributed
    device: torch.device


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise KepError(f"environment variable {name}={text!r} is not an integer") from None


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    return _env_int("WORLD_SIZE", 1)


def init_from_env(device: str = "auto", *, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's environment variables.

    Parameters
    ----------
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    timeout_s : float
        Timeout of collective operations, in seconds.

    Returns
    -------
    DistInfo
        Rank, world size, local rank, backend (``nccl`` on CUDA, ``gloo`` on CPU, ``None`` for a
        single process) and the device this process computes on (``cuda:LOCAL_RANK``).

    Raises
    ------
    KepError
        Malformed variables, CUDA asked for but missing, fewer GPUs than local processes.
    """
    world = env_world_size()
    rk, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rk < world or local < 0:
        raise KepError(f"bad torchrun environment: RANK={rk} WORLD_SIZE={world} "
                       f"LOCAL_RANK={local}")
    if device == "cuda" and not torch.cuda.is_available():
        raise KepError("--device cuda asked for, but no CUDA device is available")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if local >= torch.cuda.device_count():
            raise KepError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA "
                           "devices are visible")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world == 1:
        return DistInfo(0, 1, 0, None, dev)
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(var):
            raise KepError(f"WORLD_SIZE={world} but {var} is not set: start the run with torchrun")
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if cuda else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                **kwargs)
    return DistInfo(rk, world, local, backend, dev)


def cleanup() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, the only process that writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op for one process)."""
    if is_initialized():
        dist.barrier()


def _comm_device() -> torch.device:
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_tensors(tensors: dict[str, torch.Tensor], src: int = 0) -> dict[str, torch.Tensor]:
    """Rank ``src``'s tensors on every process (same names and shapes everywhere).

    Returns new CPU tensors of the original dtypes (booleans travel as uint8).
    """
    if not is_initialized():
        return {k: v.detach().cpu().clone() for k, v in tensors.items()}
    dev = _comm_device()
    out = {}
    for name in sorted(tensors):
        t = tensors[name].detach()
        wire = t.to(device=dev, dtype=torch.uint8 if t.dtype == torch.bool else t.dtype).clone()
        dist.broadcast(wire, src)
        out[name] = wire.to(dtype=t.dtype).cpu()
    return out


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over all processes (a CPU float64 copy for one process)."""
    t = values.detach().to(torch.float64)
    if not is_initialized():
        return t.cpu().clone()
    t = t.to(_comm_device()).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def all_reduce_scores(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum per-layer score tensors over all processes; the result is identical on every rank."""
    if not is_initialized():
        return scores
    dev = _comm_device()
    out = {}
    for name in sorted(scores):
        t = scores[name].detach().to(dev).clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        out[name] = t.cpu()
    return out


class SummedImportance:
    """An :class:`~kep_train.pruning.Importance` whose scores are summed over all processes.

    Each process scores its own share of the batches (e.g. Taylor batches ``i`` with
    ``i % world_size == rank``); the sum equals one process scoring all of them. Scores are
    summed in the dtype ``inner`` returns (float64 keeps the result independent of the order
    of the sum) and returned as float32.

    Parameters
    ----------
    inner : callable
        ``inner(model, layers) -> {name: scores}`` on this process's share.
    """

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, model, layers):
        summed = all_reduce_scores(self.inner(model, layers))
        return {n: t.to(torch.float32) for n, t in summed.items()}


# ------------------------------------------------------------------------------------------
# batch norm over all processes

class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient is summed over processes too."""

    @staticmethod
    def forward(ctx, t):
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics cover the batches of all processes.

    Sums and counts, then sums of squared deviations from the mean, are all-reduced by an
    autograd function whose backward all-reduces the gradient, so the
    forward and backward passes equal one process's ``BatchNorm2d`` on the concatenated batch,
    up to float rounding. Outside a process group, or in eval mode, it is a plain
    ``BatchNorm2d``. Works with any backend (gloo on CPU included).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_initialized()):
            return super().forward(x)
        c = x.shape[1]
        n_local = x.numel() // c
        xf = x.float()
        # two passes (mean, then squared deviations): no cancellation when var << mean^2
        stats = _AllReduceSum.apply(torch.cat([xf.sum((0, 2, 3)),
                                               xf.new_full((1,), float(n_local))]))
        n = stats[-1]
        mean = stats[:c] / n
        dev = xf - mean[None, :, None, None]
        var = _AllReduceSum.apply(dev.pow(2).sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        y = dev * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def _swap_bn(module: nn.Module, make) -> nn.Module:
    new = make(module)
    if new is not None:
        return new
    for name, child in module.named_children():
        swapped = _swap_bn(child, make)
        if swapped is not child:
            module.add_module(name, swapped)
    return module


def _copy_bn(src: nn.modules.batchnorm._BatchNorm, cls) -> nn.Module:
    dst = cls(src.num_features, src.eps, src.momentum, src.affine, src.track_running_stats)
    if src.affine:
        dst.weight, dst.bias = src.weight, src.bias       # the same Parameter objects
    if src.track_running_stats:
        dst.running_mean, dst.running_var = src.running_mean, src.running_var
        dst.num_batches_tracked = src.num_batches_tracked
    dst.train(src.training)
    return dst


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every ``BatchNorm2d`` of ``model`` by a synchronised batch norm, in place.

    Parameters and buffers are shared, not copied, so optimizers and state dicts are unchanged.

    Parameters
    ----------
    model : nn.Module
        The model (its batch norms are replaced).
    device : torch.device
        CUDA: :class:`torch.nn.SyncBatchNorm`; otherwise :class:`SyncBatchNorm2d`.

    Returns
    -------
    nn.Module
        ``model`` itself (or the replacement when ``model`` is a batch norm).
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def make(m):
        if type(m) is nn.BatchNorm2d:
            return _copy_bn(m, SyncBatchNorm2d)
        return None
    return _swap_bn(model, make)


def revert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Turn synchronised batch norms back into plain ``BatchNorm2d`` (in place, shared
    parameters), e.g. before export."""
    def make(m):
        if isinstance(m, (nn.SyncBatchNorm, SyncBatchNorm2d)):
            return _copy_bn(m, nn.BatchNorm2d)
        return None
    return _swap_bn(model, make)
