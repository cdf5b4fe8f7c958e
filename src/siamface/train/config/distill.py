"""``distill``: learning from a face model (the teacher), optionally on unlabeled faces.

Off by default (no teacher). Teachers and unlabeled folders are real lists; the old
comma-separated string is still read.
"""

from __future__ import annotations

from siamface.train.params import Params, param


class DistillSection(Params):
    teacher: list[str] = param(
        [],
        "distil from: sface | dlib | a checkpoint | a .onnx model; several = an ensemble; "
        "teacher embeddings are computed once and cached",
    )
    unlabeled: list[str] = param(
        [],
        "folders of face images without identities (any layout): they add to the "
        "distillation terms only (CLI: --unlabeled DIR)",
    )
    unlabeled_per_batch: int = param(
        16,
        "unlabeled images added to each batch when unlabeled folders are given",
        ge=1,
        le=65_536,
    )
    embedding: float = param(
        1.0, "weight of the embedding distillation term (1 - cosine to the teacher)", ge=0, le=1000
    )
    relational: float = param(
        1.0,
        "weight of the relational term (student vs teacher similarity matrix, MSE)",
        ge=0,
        le=1000,
    )
