"""Data-parallel training with torch.distributed: process group, launcher, and the glue.

One process per device (``torchrun --nproc-per-node N -m siamface train ...``, or
``siamface train ... nproc=N`` which starts torchrun itself). Every process holds the whole
model; :class:`~torch.nn.parallel.DistributedDataParallel` averages gradients. What makes a
run with N processes follow the *same* training curve as one process with the same
``batch_size`` (the global batch) and seed:

* every process draws the same global batch order and takes its own slice of each batch
  (:mod:`siamface.tensors.batches`), with per-image augmentation seeds;
* BatchNorm statistics are computed over the global batch (``sync_bn``);
* the metric loss is computed over the embeddings of the whole global batch, gathered from
  all processes (pytorch-metric-learning's ``gather``; its gradient reaches each process's own
  embeddings, and the loss is scaled by the world size, as pml's DistributedLossWrapper does);
* loss parameters (class centres) live outside DDP and get the same correction.

Only rank 0 writes files (state, checkpoints, TensorBoard, JSON) and validates; the other ranks
wait for it. Decisions taken from a clock or a signal (time budget, Ctrl-C, periodic saves) are
agreed on with one small all-reduce per step, so all processes stop at the same step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from siamface.errors import SiamfaceError


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_distributed(device_pref: str) -> DistContext:
    """Join the process group torchrun set up (gloo on CPU, NCCL on CUDA), or run alone."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistContext()
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # Validation runs on rank 0 while the others wait: allow it time.
        dist.init_process_group(backend=backend, timeout=timedelta(hours=2))
    return DistContext(world, rank, local_rank, local_world, backend)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def broadcast_object(ctx: DistContext, obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled; for small things only)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


T = TypeVar("T")


def main_decides(
    ctx: DistContext, decide: Callable[[], T], error: type[SiamfaceError] = SiamfaceError
) -> T:
    """Rank 0 runs ``decide()``; every rank returns its result, or raises its error.

    Writing files, validating and choosing the best epoch happen on rank 0 only; the other
    processes must learn the outcome (a record, or that a write failed) so that all of them
    continue, or stop, together. A :class:`~siamface.errors.SiamfaceError` raised by
    ``decide`` is re-raised on rank 0 as it is and on the others as ``error`` with its message.
    """
    if not ctx.enabled:
        return decide()
    if ctx.is_main:
        try:
            value = decide()
        except SiamfaceError as err:
            broadcast_object(ctx, (None, str(err)))
            raise
        broadcast_object(ctx, (value, None))
        return value
    value, message = broadcast_object(ctx, None)
    if message is not None:
        raise error(message)
    return value


def agree(ctx: DistContext, flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag true on every rank if it is true on any (one all-reduce)."""
    if not ctx.enabled:
        return flags
    t = torch.tensor([float(bool(f)) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def all_reduce_mean(ctx: DistContext, value: float, device: torch.device) -> float:
    if not ctx.enabled:
        return value
    t = torch.tensor([value], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


# ---------------------------------------------------------------------- launcher
def launch(nproc: int, argv: list[str]) -> int:
    """Run ``siamface <argv>`` in ``nproc`` processes on this machine through torchrun."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "siamface.cli.main",
        *argv,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen(cmd, env=env)
    # Ctrl-C reaches every process of the terminal's group: the workers stop at a step
    # boundary and save. This process only waits for them (killing torchrun here would take
    # the workers down mid-save).
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------- BatchNorm
def _global_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance per channel over every process's batch, and the count.

    torch's SyncBatchNorm runs on GPUs only; gloo on CPU needs this. The reductions are
    torch.distributed.nn's autograd-aware all-reduce, so gradients flow through the shared
    statistics as in SyncBatchNorm. Two passes (mean, then squared deviations), like the
    single-process kernel, keep the result close to a one-process run.
    """
    from torch.distributed.nn.functional import all_reduce

    dims = [0, *range(2, x.dim())]
    count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
    total = all_reduce(torch.cat([x.sum(dims), count]))
    n = total[-1]
    mean = total[:-1] / n
    shape = [1, -1] + [1] * (x.dim() - 2)
    sq = all_reduce(((x - mean.view(shape)) ** 2).sum(dims))
    return mean, sq / n, n


def _sync_bn_forward(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    if not (self.training and dist.is_available() and dist.is_initialized()):
        return type(self).__mro__[1].forward(self, x)  # the class this one was made from
    mean, var, n = _global_stats(x.float())
    if self.track_running_stats:
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = (
                self.momentum
                if self.momentum is not None
                else 1.0 / float(self.num_batches_tracked)
            )
            unbiased = var * n / (n - 1).clamp(min=1)
            self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
            self.running_var.mul_(1 - m).add_(unbiased.detach().to(self.running_var.dtype), alpha=m)
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (x.float() - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
    if self.affine:
        y = y * self.weight.view(shape) + self.bias.view(shape)
    y = y.to(x.dtype)
    # timm's BatchNormAct2d applies dropout and an activation after the normalisation.
    if hasattr(self, "drop"):
        y = self.drop(y)
    if hasattr(self, "act"):
        y = self.act(y)
    return y


_SYNC_CLASSES: dict[type, type] = {}


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm over the global batch: torch/timm SyncBatchNorm on CUDA, our reduction on
    CPU (gloo). Parameters and buffers are kept; only the forward changes."""
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm as timm_convert

        return timm_convert(model)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            cls = type(module)
            if cls not in _SYNC_CLASSES:
                _SYNC_CLASSES[cls] = type(f"GlobalBatch{cls.__name__}", (cls,), {})
                _SYNC_CLASSES[cls].forward = _sync_bn_forward
            module.__class__ = _SYNC_CLASSES[cls]
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / torch.compile wrappers (for saving and validation)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def check_world(ctx: DistContext, batch_size: int, m_per_class: int, grad_accum: int) -> int:
    """Images per process per micro-batch; refuses splits that break M-per-class groups."""
    parts = ctx.world_size * grad_accum
    if batch_size % (parts * m_per_class):
        raise SiamfaceError(
            f"batch_size ({batch_size}) must be a multiple of processes ({ctx.world_size}) x "
            f"grad_accum ({grad_accum}) x m_per_class ({m_per_class}) = "
            f"{parts * m_per_class}, so that every micro-batch holds whole identity groups"
        )
    return batch_size // parts
