"""Hooks into :func:`~siamface.train.fit.fit`, for behaviour that is not the loop's own job.

A schedule that freezes the backbone for the first epochs, a validation pass before training
starts, fine-tuning's comparison with the starting model, an extra log line: each is a
:class:`Hook` overriding the methods it needs. Hooks get a :class:`RunView`, a narrow window on
the run (the model, the optimizer, the state, the data, validation and checkpoints), not the
loop: they cannot swap the step, the loader or the objective, so the loop stays the one place
that says what a step is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from siamface.model.checkpoint import Checkpoint
    from siamface.scores.metrics import VerificationMetrics
    from siamface.tensors.transforms import Preprocessing
    from siamface.train.config import TrainConfig
    from siamface.train.data import RunData
    from siamface.train.distributed import DistContext
    from siamface.train.optim import OptimizerBundle
    from siamface.train.rundir import RunDir
    from siamface.train.state import Progress
    from siamface.train.step import StepResult


@dataclass(frozen=True)
class RunView:
    """What a hook may read and use of a run.

    ``evaluate()`` is collective (every process calls it; rank 0 gets the metrics, the others
    None) and leaves the model in eval mode; ``validate_here()`` validates on this process
    without collectives (rank 0 only, e.g. at the end of a run); ``checkpoint(m, epoch)`` is
    the model now as a self-describing checkpoint.
    """

    cfg: TrainConfig
    ctx: DistContext
    files: RunDir
    data: RunData
    model: nn.Module  # unwrapped (not DDP / torch.compile)
    opt: OptimizerBundle
    state: Progress
    device: torch.device
    pre: Preprocessing
    log: Callable[[str], None]
    show_progress: bool
    evaluate: Callable[[], tuple[VerificationMetrics | None, float]]
    validate_here: Callable[[], VerificationMetrics | None]
    checkpoint: Callable[[VerificationMetrics | None, int], Checkpoint]

    @property
    def run_dir(self) -> Path:
        return self.files.path


class Hook:
    """No-op hooks; override the ones you need."""

    def on_train_start(self, view: RunView) -> None:
        """After set-up (and after a resume restored the state), before the first epoch."""

    def on_epoch_start(self, view: RunView) -> None:
        """Before the epoch's first batch (also when resuming mid-epoch)."""

    def on_step_end(self, view: RunView, result: StepResult) -> None:
        """After each optimisation step."""

    def keeps_best(self, view: RunView, record: dict[str, Any]) -> bool:
        """May an epoch that improved the selection metric become ``best``? (rank 0)"""
        return True

    def on_epoch_end(self, view: RunView, record: dict[str, Any]) -> None:
        """After validation and checkpoints; ``record`` is the epoch's history entry."""

    def on_summary(self, view: RunView, summary: dict[str, Any]) -> bool:
        """Add entries to the run's summary; True when it changed (it is written again)."""
        return False

    def on_train_end(self, view: RunView, summary: dict[str, Any]) -> None:
        """After the last epoch, with the run summary."""


class Hooks(Hook):
    """Calls every hook in order; an epoch is kept as best only if every hook agrees."""

    def __init__(self, hooks: Sequence[Hook] = ()) -> None:
        self.hooks = list(hooks)

    def on_train_start(self, view: RunView) -> None:
        for h in self.hooks:
            h.on_train_start(view)

    def on_epoch_start(self, view: RunView) -> None:
        for h in self.hooks:
            h.on_epoch_start(view)

    def on_step_end(self, view: RunView, result: StepResult) -> None:
        for h in self.hooks:
            h.on_step_end(view, result)

    def keeps_best(self, view: RunView, record: dict[str, Any]) -> bool:
        return all([h.keeps_best(view, record) for h in self.hooks])

    def on_epoch_end(self, view: RunView, record: dict[str, Any]) -> None:
        for h in self.hooks:
            h.on_epoch_end(view, record)

    def on_summary(self, view: RunView, summary: dict[str, Any]) -> bool:
        return any([h.on_summary(view, summary) for h in self.hooks])

    def on_train_end(self, view: RunView, summary: dict[str, Any]) -> None:
        for h in self.hooks:
            h.on_train_end(view, summary)
