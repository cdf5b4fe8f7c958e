"""Test-time augmentation: flip averaging (``MODEL:tta=flip``) for any model.

The embedding of an aligned face and of its mirror image are averaged (then re-normalised).
Both templates siamface aligns to (ArcFace's 5 points, dlib's chip) are left-right symmetric,
so the mirror is an equally valid face crop; averaging the two cancels part of the network's
left/right bias and of the alignment noise. It costs one more forward pass per face (never a
second detection: the crop is made once and mirrored).

The choice is part of the model, not of a command: the wrapped model has its own fingerprint
and reference (``sface:tta=flip``), so a gallery enrolled with flip averaging is searched with
it, and a fusion file records it per member.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from siamface.embed.base import Embedder
from siamface.errors import SiamfaceError

TTA_MODES = ("none", "flip")
#: ``MODEL:tta=MODE`` at the end of a model spec.
_TTA_SUFFIX = re.compile(r"^(?P<model>.+):tta=(?P<mode>[A-Za-z]+)$")


def split_tta(spec: str) -> tuple[str, str]:
    """``"sface:tta=flip"`` -> ``("sface", "flip")``; a spec without a suffix -> ``"none"``."""
    m = _TTA_SUFFIX.match(str(spec))
    if not m:
        return str(spec), "none"
    mode = m.group("mode").lower()
    if mode not in TTA_MODES:
        raise SiamfaceError(f"tta must be one of {', '.join(TTA_MODES)}, got {mode!r} in {spec!r}")
    return m.group("model"), mode


class FlipEmbedder(Embedder):
    """``inner`` with flip averaging; everything but the embedding is ``inner``'s."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.preprocessing = inner.preprocessing
        # The threshold was chosen for the plain model; flip averaging raises genuine and
        # impostor similarities alike by a little. A calibrated one comes from
        # ``siamface calibrate``/``siamface fuse`` on the flip model itself.
        self.threshold = inner.threshold
        self.fingerprint = f"{inner.fingerprint}+flip"
        self.embedding_size = inner.embedding_size
        self.source = Path(f"{inner.source}:tta=flip")
        self.info = {**(inner.info or {}), "tta": "flip"}
        self.pair_head = None
        self.decode_in_threads = inner.decode_in_threads  # torch-free models stay torch-free
        self.condition_refusal = inner.condition_refusal

    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        x = np.asarray(pixels)
        if len(x) == 0:
            return self.inner.embed_batch(x)
        both = self.inner.embed_batch(np.concatenate([x, np.ascontiguousarray(x[..., ::-1])]))
        mean = both[: len(x)] + both[len(x) :]
        return self.checked(mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12))

    def face_loader(self, ambiguous: str = "pick"):
        return self.inner.face_loader(ambiguous)

    def locate(self, img: Image.Image, pick=None, ambiguous: str = "pick"):
        return self.inner.locate(img, pick=pick, ambiguous=ambiguous)

    def centre_face(self, img: Image.Image) -> np.ndarray:
        return self.inner.centre_face(img)

    def display_face(self, img: Image.Image) -> np.ndarray:
        return self.inner.display_face(img)
