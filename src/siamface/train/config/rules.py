"""Rules that span sections (a single section checks its own values itself)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from siamface.train.config.schema import TrainConfig


def check_across_sections(cfg: TrainConfig) -> None:
    """Refuse combinations no run can use, before any work, with the keys to change."""
    d, m = cfg.data, cfg.machine
    if d.batch_size % (m.grad_accum * d.m_per_class):
        raise ValueError(
            f"data.batch_size ({d.batch_size}) must be a multiple of grad_accum x m_per_class "
            f"(machine.grad_accum={m.grad_accum} x data.m_per_class={d.m_per_class})"
        )
    guard = cfg.run.guard
    if guard and not Path(guard).expanduser().is_dir():
        raise ValueError(f"run.guard {guard!r} is not a folder of identity folders")
    if cfg.finetune.l2sp > 0 and not cfg.finetune.init:
        raise ValueError("finetune.l2sp pulls towards the starting weights: set finetune.init too")
    if cfg.distill.unlabeled and not cfg.distill.teacher:
        raise ValueError(
            "unlabeled images only train through distillation: set distill.teacher=... too"
        )
