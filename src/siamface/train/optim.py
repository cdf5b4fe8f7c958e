"""The article's optimizer + scheduler presets, built from one config.

Schedulers are stepped per *batch* (``step_schedule``) or per *epoch* with the validation
metric (``epoch_schedule``), so the loop needs no knowledge of which preset is active. Cosine
presets anneal over the run's real length: the smaller of the epoch count and the wall-clock
budget, so a time-limited run ends at ``eta_min`` instead of being cut off at a high rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from siamface.train.config import TrainConfig


@dataclass
class OptimizerBundle:
    """An optimizer and the scheduler hooks that go with its preset."""

    optimizer: torch.optim.Optimizer
    scheduler: object | None
    per_step: bool  # scheduler.step() after each batch (else after each epoch)
    on_metric: bool  # scheduler.step(metric) after validation (ReduceLROnPlateau)
    schedule_free: bool

    def step_schedule(self) -> None:
        if self.scheduler is not None and self.per_step:
            self.scheduler.step()

    def epoch_schedule(self, val_loss: float | None) -> None:
        if self.scheduler is None or self.per_step:
            return
        if self.on_metric:
            if val_loss is not None:
                self.scheduler.step(val_loss)
        else:
            self.scheduler.step()

    def train_mode(self) -> None:
        """Schedule-free optimizers keep two weight sequences and must be told the mode."""
        if self.schedule_free:
            self.optimizer.train()

    def eval_mode(self) -> None:
        if self.schedule_free:
            self.optimizer.eval()

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])


def param_groups(model: nn.Module, loss: nn.Module, cfg: TrainConfig) -> list[dict[str, object]]:
    """Model parameters at ``lr``; loss parameters (class centres, pair head) faster."""
    groups: list[dict[str, object]] = [{"params": list(model.parameters()), "lr": cfg.lr}]
    extra = [p for p in loss.parameters() if p.requires_grad]
    if extra:
        groups.append({"params": extra, "lr": cfg.lr * cfg.head_lr_mult})
    return groups


def cosine_lambda(cfg: TrainConfig, progress: Callable[[], float]) -> Callable[[int], float]:
    """LR multiplier: linear warm-up, then cosine from 1 to eta_min/lr over ``progress``."""
    floor = min(cfg.eta_min / cfg.lr, 1.0)

    def f(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        p = min(max(progress(), 0.0), 1.0)
        return warm * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p)))

    return f


def build_optimizer(
    groups: Iterable[dict], cfg: TrainConfig, progress: Callable[[], float]
) -> OptimizerBundle:
    """Create the preset named by ``cfg.optimizer``.

    ``progress`` returns the fraction of the cosine period done (0..1); the trainer computes
    it from steps, ``t_max`` and the wall-clock budget.
    """
    groups = list(groups)
    name = cfg.optimizer
    if name in ("adam_cosine", "adamw_cosine", "adamw_plateau"):
        cls = torch.optim.Adam if name == "adam_cosine" else torch.optim.AdamW
        opt = cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps)
        if name == "adamw_plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
            )
            return OptimizerBundle(opt, sched, per_step=False, on_metric=True, schedule_free=False)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(cfg, progress))
        return OptimizerBundle(opt, sched, per_step=True, on_metric=False, schedule_free=False)
    if name == "sgd_step":
        opt = torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
        return OptimizerBundle(opt, sched, per_step=False, on_metric=False, schedule_free=False)
    if name == "ranger_exponential":
        from timm.optim import Lookahead

        # Ranger = RAdam + Lookahead (Wright, 2019).
        base = torch.optim.RAdam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps)
        opt = Lookahead(base)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.exp_gamma)
        return OptimizerBundle(opt, sched, per_step=False, on_metric=False, schedule_free=False)
    if name == "schedule_free":
        import schedulefree

        opt = schedulefree.AdamWScheduleFree(
            groups,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            eps=cfg.eps,
            warmup_steps=cfg.warmup_steps,
        )
        return OptimizerBundle(opt, None, per_step=False, on_metric=False, schedule_free=True)
    raise ValueError(name)  # unreachable: config validation lists the choices
