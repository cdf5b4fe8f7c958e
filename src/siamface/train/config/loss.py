"""``loss``: the training loss (registry :data:`~siamface.train.losses.LOSS_REGISTRY`), its own
settings (margin, scale, ... as the loss declares them) and the miner that picks its pairs."""

from __future__ import annotations

from typing import ClassVar

from pydantic import field_validator, model_validator

from siamface.registry import Registry
from siamface.train.config.chosen import ChosenSection, one_of
from siamface.train.losses import LOSS_REGISTRY, MINER_REGISTRY, is_classifier
from siamface.train.params import param


class LossSection(ChosenSection):
    registry: ClassVar[Registry] = LOSS_REGISTRY
    key: ClassVar[str] = "loss"

    name: str = param("triplet", "{choices}")
    miner: str = param("batch_hard", "{choices}")

    @field_validator("miner", mode="after")
    @classmethod
    def _registered_miner(cls, value: str) -> str:
        return one_of("loss.miner", value, MINER_REGISTRY.names())

    @model_validator(mode="after")
    def _classifier_takes_no_miner(self) -> LossSection:
        if is_classifier(self.name) and self.miner != "none":
            raise ValueError(
                f"loss={self.name} is a classification (margin-softmax) loss and takes no miner; "
                "set loss.miner=none"
            )
        return self
