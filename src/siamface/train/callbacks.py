"""Hooks into the training loop, for behaviour that is not the loop's own job.

A schedule that freezes the backbone for the first epochs, a validation pass before
training starts, an extra log line: each is a :class:`Callback` subclass overriding the hooks
it needs, passed to :class:`~siamface.train.loop.Trainer` (``callbacks=[...]``). Hooks get the
trainer itself, so they can read its model, optimizer, state and config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from siamface.train.loop import Trainer
    from siamface.train.step import StepResult


class Callback:
    """No-op hooks; override the ones you need."""

    def on_train_start(self, trainer: Trainer) -> None:
        """After set-up (and after a resume restored the state), before the first epoch."""

    def on_epoch_start(self, trainer: Trainer) -> None:
        """Before the epoch's first batch (also when resuming mid-epoch)."""

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        """After each optimisation step."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After validation and checkpoints; ``record`` is the epoch's history entry."""

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """After the last epoch, with the run summary."""


class CallbackList(Callback):
    """Calls every callback's hook in order."""

    def __init__(self, callbacks: list[Callback] | None = None) -> None:
        self.callbacks = list(callbacks or [])

    def on_train_start(self, trainer: Trainer) -> None:
        for c in self.callbacks:
            c.on_train_start(trainer)

    def on_epoch_start(self, trainer: Trainer) -> None:
        for c in self.callbacks:
            c.on_epoch_start(trainer)

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        for c in self.callbacks:
            c.on_step_end(trainer, result)

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        for c in self.callbacks:
            c.on_epoch_end(trainer, record)

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        for c in self.callbacks:
            c.on_train_end(trainer, summary)
