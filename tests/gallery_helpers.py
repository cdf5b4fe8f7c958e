"""What the gallery tests share: synthetic unit embeddings with a known answer (people as
clusters around a centre), a gallery of such people, and an observable snapshot of a
gallery, so that every backend and failure test starts from the same setup."""

from __future__ import annotations

import numpy as np

from siamface.gallery import Gallery, NewPerson


def unit(x: np.ndarray) -> np.ndarray:
    """Rows (last axis) scaled to unit length, as float32 embeddings."""
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def random_units(seed: int, n: int, dim: int) -> np.ndarray:
    """(n, dim) unit vectors in random directions (unrelated people / strangers)."""
    return unit(np.random.default_rng(seed).standard_normal((n, dim)))


def person_images(rng, n_people: int, per: int, dim: int, spread: float = 0.5) -> np.ndarray:
    """(people, images, dim) unit vectors clustered around one centre per person: each
    person's images are nearer to each other than to anyone else's."""
    centres = unit(rng.standard_normal((n_people, 1, dim)))
    return unit(centres + spread / np.sqrt(dim) * rng.standard_normal((n_people, per, dim)))


def enrolled_gallery(
    spec: object,
    x: np.ndarray,
    fingerprint: str,
    threshold: float | None = 0.7,
    digests: bool = False,
) -> Gallery:
    """A new gallery at ``spec`` with person ``p{i:02d}`` enrolled from ``x[i]`` (reference
    names ``p{i}_{j}.jpg``; with ``digests``, file digests ``d{i}_{j}`` too)."""
    n_people, per, dim = x.shape
    g = Gallery.create(spec, fingerprint=fingerprint, embedding_size=dim, threshold=threshold)
    g.enroll_many(
        [
            NewPerson(
                f"p{i:02d}",
                x[i],
                [f"p{i}_{j}.jpg" for j in range(per)],
                [f"d{i}_{j}" for j in range(per)] if digests else (),
            )
            for i in range(n_people)
        ],
        fingerprint=fingerprint,
    )
    return g


def snapshot(g: Gallery) -> tuple:
    """What a reader of ``g`` can observe: everyone's record, the counts and the data
    version (a refused call must leave all three as they were)."""
    return [p.to_dict() for p in g.people()], g.counts(), g.info()["version"]
