"""``optim``: the optimizer + schedule preset (registry
:data:`~siamface.train.optim.OPTIMIZER_REGISTRY`), the learning rates, and the preset's own
settings (momentum, cosine floor, step size, ... as the preset declares them)."""

from __future__ import annotations

from typing import ClassVar

from siamface.registry import Registry
from siamface.train.config.chosen import ChosenSection
from siamface.train.optim import OPTIMIZER_REGISTRY
from siamface.train.params import param


class OptimSection(ChosenSection):
    registry: ClassVar[Registry] = OPTIMIZER_REGISTRY
    key: ClassVar[str] = "optim"

    name: str = param("adamw_cosine", "{choices}")
    lr: float = param(1e-4, "learning rate (article: 1e-4)", gt=0, le=10)
    backbone_lr_mult: float = param(
        1.0, "lr multiplier for the backbone (fine-tuning: < 1)", gt=0, le=1000
    )
    head_lr_mult: float = param(
        10.0, "lr multiplier for loss parameters (class centres, pair head)", ge=0, le=10_000
    )
