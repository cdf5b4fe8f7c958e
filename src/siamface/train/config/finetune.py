"""``finetune``: starting from a whole face model instead of backbone weights.

Off by default (no ``init``); the ``auto`` choices here follow ``init`` because a face model
fine-tuned on a few people per batch needs the opposite of training from ImageNet weights
(frozen BatchNorm, centres at the class means, never worse than the start).
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from siamface.train.params import Params, param


class FinetuneSection(Params):
    init: str | None = param(
        None,
        "start from a whole face model: sface (built in), a checkpoint or a run directory; "
        "sets model.backbone, model.embedding_size, model.image_size and preprocessing; "
        "null = from model.backbone + model.pretrained",
    )
    trainable: str = param(
        "all",
        "what trains after freeze_epochs: all | head | N (the head and the backbone's last N "
        "stages)",
    )
    freeze_epochs: int = param(
        0, "first epochs with the backbone frozen (only head and loss train)", ge=0, le=1_000_000
    )
    bn: Literal["auto", "train", "frozen"] = param(
        "auto", "{choices}: BatchNorm statistics update in training (auto: frozen with init)"
    )
    keep_close: float = param(
        0.0,
        "weight of a term keeping embeddings close to the starting model's (init), "
        "1 - cosine to its cached embedding of each image",
        ge=0,
        le=1000,
    )
    l2sp: float = param(
        0.0,
        "weight of L2-SP, the sum of squared distances of the trained weights to the starting "
        "model's (init): decay towards the start instead of towards zero",
        ge=0,
    )
    centre_init: Literal["auto", "random", "class_mean"] = param(
        "auto",
        "{choices}: ArcFace/CosFace class centres start at each identity's mean embedding under "
        "the starting model (auto: class_mean with init)",
    )
    wise_ft: bool = param(
        False,
        "after training, mix the start's and the best epoch's weights (WiSE-FT); the mixing "
        "weight is chosen on the validation identities",
    )
    centre: bool = param(
        True,
        "after training, offer the result centred on its training faces' mean embedding "
        "(subtracted before the final normalisation; lifts the low-FAR end); kept only when "
        "it raises select_metric on the validation identities, then judged by the test verdict",
    )

    @field_validator("trainable", mode="after")
    @classmethod
    def _policy(cls, value: str) -> str:
        if value not in ("all", "head") and not (value.isdigit() and int(value) >= 1):
            raise ValueError(
                "trainable must be all, head or a positive number of backbone stages; "
                f"got {value!r}"
            )
        return value
