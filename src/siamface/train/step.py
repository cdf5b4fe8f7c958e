"""One optimisation step: a uint8 batch in, updated weights and the loss out.

Everything between the data loader and the optimizer lives here (device transfer,
normalisation on the device, memory layout, device-side augmentation, autocast, fp16 loss
scaling, gradient accumulation, the objective, backward, the optimizer and its per-batch
schedule), so the epoch loop only counts steps and the objective only computes losses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from siamface.tensors.transforms import Preprocessing
from siamface.train.objective import Batch, Objective
from siamface.train.optim import OptimizerBundle


@dataclass
class StepResult:
    """What one step reports: the total loss, each term's value, and the batch size."""

    loss: float
    parts: dict[str, float] = field(default_factory=dict)
    images: int = 0
    skipped: bool = False  # fp16: the scaler found inf/nan gradients and skipped the update


def normalize_on_device(
    x_uint8: torch.Tensor, pre: Preprocessing, device: torch.device, channels_last: bool
) -> torch.Tensor:
    """uint8 NCHW -> normalised float on ``device``. The copy moves uint8 (a quarter of the
    bytes of float32), asynchronously from pinned memory; the arithmetic runs on the device."""
    x = x_uint8.to(device, non_blocking=True)
    mean = torch.tensor(pre.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(pre.std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
    x = (x.float() - mean) / std
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


class TrainStep:
    """Callable ``(uint8 images, labels) -> StepResult`` that trains ``model`` by one step.

    ``model`` may be wrapped in DistributedDataParallel and/or torch.compile. With
    ``grad_accum > 1`` the batch is split into that many micro-batches whose gradients add up
    before one optimizer step (DDP synchronises gradients on the last one only).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        opt: OptimizerBundle,
        device: torch.device,
        pre: Preprocessing,
        channels_last: bool,
        autocast_dtype: torch.dtype | None,
        grad_scaler: bool = False,
        grad_accum: int = 1,
        augment: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.objective = objective
        self.opt = opt
        self.device = device
        self.pre = pre
        self.channels_last = channels_last
        self.autocast_dtype = autocast_dtype
        self.grad_accum = grad_accum
        self.augment = augment  # device-side, per batch: (uint8 on device, seeds) -> uint8
        self.scaler = torch.amp.GradScaler(device.type, enabled=grad_scaler)
        #: True while a step runs: an exception then may have left the weights half-updated.
        self.in_step = False

    def inputs(self, x_uint8: torch.Tensor, seeds: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 NCHW batch -> normalised float on the device, in the model's memory layout."""
        if self.augment is not None and seeds is not None:
            x_uint8 = self.augment(x_uint8.to(self.device, non_blocking=True), seeds)
        return normalize_on_device(x_uint8, self.pre, self.device, self.channels_last)

    def autocast(self) -> torch.autocast:
        """The run's autocast context (disabled in fp32)."""
        return torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.bfloat16,
            enabled=self.autocast_dtype is not None,
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Forward pass under the run's autocast; embeddings come back as float32."""
        with self.autocast():
            emb = self.model(x)
        return emb.float()

    def __call__(
        self,
        x_uint8: torch.Tensor,
        y: torch.Tensor,
        index: torch.Tensor | None = None,
        seeds: torch.Tensor | None = None,
    ) -> StepResult:
        """One step on a batch; ``index`` (dataset indices, for per-image loss targets such as
        distillation) and ``seeds`` (per-image augmentation seeds, for device-side
        augmentation) travel with the images."""
        self.in_step = True
        result = self._step(x_uint8, y, index, seeds)
        self.in_step = False
        return result

    def forward_embeddings(self, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """The batch's embeddings (float32). Subclasses override this one method to compute
        them differently (e.g. from cached features of frozen layers)."""
        return self.embed(x)

    def _step(
        self,
        x_uint8: torch.Tensor,
        y: torch.Tensor,
        index: torch.Tensor | None,
        seeds: torch.Tensor | None,
    ) -> StepResult:
        self.opt.optimizer.zero_grad(set_to_none=True)
        n = self.grad_accum
        xs, ys = x_uint8.chunk(n), y.chunk(n)
        ss = seeds.chunk(n) if seeds is not None else [None] * n
        ix = index.chunk(n) if index is not None else [None] * n
        total, parts = 0.0, {}
        for a, (xa, ya, sa, ia) in enumerate(zip(xs, ys, ss, ix, strict=True)):
            last = a == n - 1
            sync = self.model.no_sync() if (not last and hasattr(self.model, "no_sync")) else None
            with sync or contextlib.nullcontext():
                x = self.inputs(xa, sa)
                batch = Batch(
                    inputs=x,
                    labels=ya.to(self.device),
                    embeddings=self.forward_embeddings(x, ia),
                    extras={"index": ia} if ia is not None else {},
                )
                loss, report, p = self.objective(batch)
                self.scaler.scale(loss / n).backward()
            total += report / n
            for k, v in p.items():
                parts[k] = parts.get(k, 0.0) + v / n
        self.objective.finish_gradients()
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.opt.optimizer)
        self.scaler.update()
        skipped = scale_before is not None and self.scaler.get_scale() < scale_before
        self.opt.step_schedule()
        return StepResult(loss=total, parts=parts, images=len(y), skipped=skipped)
