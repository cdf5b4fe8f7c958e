"""``run``: how long training lasts, how the kept model is chosen and checked, when it saves."""

from __future__ import annotations

from typing import Literal

from siamface.train.params import Params, param


class RunSection(Params):
    epochs: int = param(
        20, "maximum epochs (article: 100); an epoch sees each image once", ge=1, le=1_000_000
    )
    time_budget_min: float | None = param(
        None, "wall-clock budget in minutes; null = none", gt=0, le=10_000_000
    )
    seed: int = param(0, "random seed (split, sampling, initialisation)", ge=0, le=2**32 - 1)
    select_metric: Literal["auc", "eer", "tar_at_far_1e-3", "accuracy"] = param(
        "auc", "picks best.safetensors: {choices}"
    )
    select_rule: Literal["auto", "best", "not_worse"] = param(
        "auto",
        "{choices}: not_worse = an epoch becomes best only if no validation metric is worse "
        "than the starting model's (epoch 0); auto: not_worse with finetune.init",
    )
    calib_far: float = param(
        1e-3, "target false-accept rate of the stored decision threshold", gt=0, lt=1
    )
    save_every_min: float = param(
        10.0, "also save resumable state this often within an epoch", gt=0, le=1_000_000
    )
    val_max_images: int = param(
        20_000,
        "validate on at most this many images (whole identities, chosen by seed); 0 = all",
        ge=0,
        le=100_000_000,
    )
    guard_margin: float = param(
        0.01,
        "with a condition, the clean test faces (and the guard people) may be significantly "
        "worse by at most this much (each metric, e.g. 0.01 = 1 point) before the verdict keeps "
        "the start",
        ge=0,
        le=1,
    )
    guard: str | None = param(
        None,
        "identity folders from another domain the adapted model must not get significantly "
        "worse on (by more than guard_margin), checked in the final verdict",
    )
    verdict_replicates: int = param(
        1000, "bootstrap replicates (over identities) of the final verdict", ge=50, le=100_000
    )
