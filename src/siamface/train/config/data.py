"""``data``: which people train, validate and test, how images look, how batches are drawn."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from siamface.errors import SiamfaceError
from siamface.train.params import Params, param


class DataSection(Params):
    val_identities: float = param(
        0.2,
        "held-out identities: fraction (<1) or count (>=1); 0 = no validation",
        ge=0,
        le=10_000_000,
    )
    test_identities: float = param(
        0.0,
        "identities held out for the final verdict (never used to choose anything): fraction "
        "(<1) or count (>=1); with finetune.init, best.safetensors differs from the start only "
        "when the gain on run.select_metric is positive at the 95% lower bound on them; 0 = none",
        ge=0,
        le=10_000_000,
    )
    train_identities: float = param(
        1.0,
        "training identities used, after the validation and test people are held out: "
        "fraction (<=1; 1 = all) or count (>1); the rest are left unused. For a learning curve "
        "(would more people help?) with the same validation and test people",
        gt=0,
        le=10_000_000,
    )
    condition: str | None = param(
        None,
        "domain condition, e.g. lowres:14-44,jpeg:20-70 or a preset (cctv, masked, infrared): "
        "a share of training images (condition_rate) become degraded copies, and validation and "
        "test people are seen under it (see docs/finetune.md)",
    )
    condition_rate: float = param(
        0.5, "share of the training images that are degraded copies (with condition)", gt=0, lt=1
    )
    min_images_per_identity: int = param(
        2, "identities with fewer images are excluded", ge=2, le=1_000_000
    )
    augment: Literal["default", "article", "none"] = param("default", "{choices}")
    align: Literal["auto", "true", "false"] = param(
        "auto",
        "{choices}: detect + align faces on the fly (auto = only when the data "
        "folder was written by 'siamface prepare', whose crops are already aligned)",
    )
    scan_cache: str = param(
        "auto",
        "scan index (size, mtime, decode check, hash per file) reused by later runs: auto "
        "(~/.cache/siamface or $SIAMFACE_CACHE) | none | a folder",
    )
    batch_size: int = param(32, "images per batch (article: 32)", ge=2, le=65_536)
    m_per_class: int = param(
        4, "images per identity in a batch (article: sampler_m = 4)", ge=1, le=1024
    )

    @field_validator("val_identities", "test_identities", "train_identities", mode="after")
    @classmethod
    def _whole_count(cls, value: float, info: object) -> float:
        if value > 1 and not float(value).is_integer():
            name = getattr(info, "field_name", "")
            # train_identities=1 means all of them (a fraction); for the others 1 is a count.
            bound = "> 1" if name == "train_identities" else ">= 1"
            raise ValueError(f"{name} {bound} is a count and must be a whole number")
        return value

    @field_validator("condition", mode="after")
    @classmethod
    def _known_condition(cls, value: str | None) -> str | None:
        if value:
            from siamface.tensors.conditions import parse_condition  # lazy: --help speed

            try:
                parse_condition(value)
            except SiamfaceError as err:
                raise ValueError(str(err)) from None
        return value

    @model_validator(mode="after")
    def _whole_identities_per_batch(self) -> DataSection:
        if self.batch_size % self.m_per_class:
            raise ValueError(
                f"data.batch_size ({self.batch_size}) must be a multiple of m_per_class "
                f"(data.m_per_class={self.m_per_class}) for M-per-class sampling"
            )
        if self.batch_size // self.m_per_class < 2:
            raise ValueError(
                "data.batch_size / data.m_per_class must be >= 2: a batch needs two identities"
            )
        return self
