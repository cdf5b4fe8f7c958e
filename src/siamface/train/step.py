"""One optimisation step: a uint8 batch in, updated weights and the loss out.

Everything between the data loader and the optimizer lives here (device transfer,
normalisation, memory layout, autocast, the objective, backward, the optimizer and its
per-batch schedule), so the epoch loop only counts steps and the objective only computes
losses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from siamface.data.transforms import Preprocessing, normalize_batch
from siamface.train.objective import Batch, Objective
from siamface.train.optim import OptimizerBundle


@dataclass
class StepResult:
    """What one step reports: the total loss, each term's value, and the batch size."""

    loss: float
    parts: dict[str, float] = field(default_factory=dict)
    images: int = 0


class TrainStep:
    """Callable ``(uint8 images, labels) -> StepResult`` that trains ``model`` by one batch."""

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        opt: OptimizerBundle,
        device: torch.device,
        pre: Preprocessing,
        channels_last: bool,
        autocast_dtype: torch.dtype | None,
    ) -> None:
        self.model = model
        self.objective = objective
        self.opt = opt
        self.device = device
        self.pre = pre
        self.channels_last = channels_last
        self.autocast_dtype = autocast_dtype
        #: True while a step runs: an exception then may have left the weights half-updated.
        self.in_step = False

    def inputs(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW batch -> normalised float on the device, in the model's memory layout."""
        x = normalize_batch(x_uint8, self.pre).to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Forward pass under the run's autocast; embeddings come back as float32."""
        with torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.bfloat16,
            enabled=self.autocast_dtype is not None,
        ):
            emb = self.model(x)
        return emb.float()

    def __call__(self, x_uint8: torch.Tensor, y: torch.Tensor) -> StepResult:
        self.in_step = True
        result = self._step(x_uint8, y)
        self.in_step = False
        return result

    def _step(self, x_uint8: torch.Tensor, y: torch.Tensor) -> StepResult:
        x = self.inputs(x_uint8)
        y = y.to(self.device)
        batch = Batch(inputs=x, labels=y, embeddings=self.embed(x))
        loss, parts = self.objective(batch)
        self.opt.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.optimizer.step()
        self.opt.step_schedule()
        return StepResult(loss=float(loss.detach()), parts=parts, images=len(y))
