"""How a gallery stores a vector, and what makes a stored vector sound, for every backend.

Embeddings are kept exactly (little-endian float32), so search results can be re-scored
exactly even when an index is compressed. A vector read back must be a finite unit vector of
the gallery's size: a NaN vector must never make a search skip someone silently and name
someone else, so every decoder refuses (or reports) damaged ones instead of using them.
Templates are computed here too, so that both backends make the same template from the
same images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from siamface.errors import SiamfaceError


def to_blob(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


#: How far a stored vector's norm may be from 1 (float32 rounding is ~1e-7).
NORM_TOLERANCE = 1e-3


class DamagedVectorError(SiamfaceError):
    """A stored vector is not a finite unit vector of the gallery's size. ``row`` is its
    position in the rows being decoded; the store turns it into a message naming the person."""

    def __init__(self, row: int, why: str) -> None:
        super().__init__(f"row {row}: {why}")
        self.row, self.why = row, why


def vector_problems(blobs: Sequence[bytes | None], dim: int) -> dict[int, str]:
    """{row: why} for every blob that is not a finite unit float32 vector of ``dim``."""
    out: dict[int, str] = {}
    good: list[int] = []
    for i, b in enumerate(blobs):
        n = len(b) if isinstance(b, bytes | bytearray | memoryview) else -1
        if n != 4 * dim:
            out[i] = "missing" if n < 0 else f"{n} bytes, expected {4 * dim} ({dim} float32 values)"
        else:
            good.append(i)
    if good:
        v = np.frombuffer(b"".join(bytes(blobs[i]) for i in good), dtype="<f4").reshape(-1, dim)
        finite = np.isfinite(v).all(axis=1)
        norms = np.linalg.norm(np.where(np.isfinite(v), v, 0).astype(np.float64), axis=1)
        for k, i in enumerate(good):
            if not finite[k]:
                out[i] = "NaN or infinite values"
            elif abs(norms[k] - 1.0) > NORM_TOLERANCE:
                out[i] = f"norm {norms[k]:.4g}, expected a unit vector"
    return out


def from_blobs(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """Decode stored vectors, refusing any that is damaged (:class:`DamagedVectorError`)."""
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    bad = vector_problems(blobs, dim)
    if bad:
        row = min(bad)
        raise DamagedVectorError(row, bad[row])
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim).astype(np.float32)


def mean_template(emb: np.ndarray) -> np.ndarray:
    """The person's template: the normalised mean of their unit image embeddings."""
    m = emb.astype(np.float64).mean(axis=0)
    n = np.linalg.norm(m)
    return (m / n if n > 0 else m).astype(np.float32)
