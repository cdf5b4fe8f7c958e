"""Rules that span sections (a single section checks its own values itself)."""

from __future__ import annotations

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
    if cfg.distill.unlabeled and not cfg.distill.teacher:
        raise ValueError(
            "unlabeled images only train through distillation: set distill.teacher=... too"
        )
