"""What goes into a gallery and what a listing gives back: :class:`NewPerson` and
:class:`PersonRecord`, the same for every backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class PersonRecord:
    """One enrolled person as listed by the gallery."""

    id: int
    name: str
    n_images: int
    metadata: dict = field(default_factory=dict)
    created: float = 0.0

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "n_images": self.n_images,
            "metadata": self.metadata,
            "created": self.created,
        }


@dataclass
class NewPerson:
    """A person to enroll: unit embeddings (one row per image) plus where each came from."""

    name: str
    embeddings: np.ndarray
    refs: Sequence[str | None] = ()
    digests: Sequence[str | None] = ()
    metadata: dict = field(default_factory=dict)
    #: a small JPEG of the first face (see :mod:`siamface.gallery.thumbnail`), or None
    thumbnail: bytes | None = None
