"""The Python API: ``siamface.load(path)`` -> a model with ``.embed`` and ``.verify``.

Example::

    import siamface

    model = siamface.load("runs/pins")            # checkpoint, run directory or .onnx
    r = model.verify("a.jpg", "b.jpg")             # Verification(similarity, same, threshold, ...)
    if r.same: ...
    vecs = model.embed(["a.jpg", "b.jpg"])         # (2, D) float32 unit vectors
    c = model.verify_identity("door.jpg", "Alice", gallery="staff")  # 1:1 against a claim

Images may be file paths, PIL images or HWC uint8 arrays; ``verify`` also accepts embeddings
(1-D vectors from ``embed``), so a stored gallery vector can be compared with a new photo.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from siamface.decide.threshold import Threshold
from siamface.decide.verify import (
    ClaimVerification,
    Verification,
    decide_pair,
    pair_threshold,
    verify_claim,
)
from siamface.embed.load import create_embedder
from siamface.errors import SiamfaceError
from siamface.folders.images import load_rgb

ImageLike = Union[str, Path, Image.Image, np.ndarray]  # noqa: UP007 - readable alias


class FaceModel:
    """A loaded face-verification model (any backend) with its decision threshold."""

    def __init__(self, embedder, threshold: float | None = None):
        self.embedder = embedder
        self._override = (
            None if threshold is None else Threshold.given(threshold, source="given to load()")
        )

    # -- what the model is -------------------------------------------------------------
    @property
    def threshold(self) -> float | None:
        """The decision threshold in use (given to :func:`load`, else the stored one)."""
        t = self._override or self._stored
        return None if t is None else t.value

    @property
    def threshold_info(self) -> dict | None:
        """The stored threshold record (target FAR, TAR, where it was calibrated)."""
        return self.embedder.threshold

    @property
    def _stored(self) -> Threshold | None:
        return Threshold.parse(self.embedder.threshold)

    @property
    def fingerprint(self) -> str:
        return self.embedder.fingerprint

    @property
    def embedding_size(self) -> int:
        return self.embedder.embedding_size

    def __repr__(self) -> str:
        return (
            f"FaceModel({str(self.embedder.source)!r}, {self.embedding_size}-d, "
            f"threshold={self.threshold})"
        )

    # -- embeddings ----------------------------------------------------------------------
    def embed(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 64) -> np.ndarray:
        """Unit-length embeddings: (D,) for one image, (N, D) for a list.

        Unreadable files raise :class:`SiamfaceError` naming the file.
        """
        single = _is_single(images)
        items = [images] if single else list(images)
        out = self._embed_list(items, batch_size)
        return out[0] if single else out

    def _embed_list(self, items: list, batch_size: int) -> np.ndarray:
        d = self.embedding_size
        out = np.zeros((len(items), d), dtype=np.float32)
        paths = [(i, Path(x)) for i, x in enumerate(items) if isinstance(x, (str, Path))]
        if paths:
            for _, p in paths:
                if not p.is_file():
                    raise SiamfaceError(f"image not found: {p}")
            emb, errors = self.embedder.embed_paths(
                [p for _, p in paths], batch_size=batch_size, progress=False
            )
            if errors:
                k, reason = next(iter(errors.items()))
                raise SiamfaceError(f"cannot read {paths[k][1]}: {reason}")
            out[[i for i, _ in paths]] = emb
        decoded = []
        for i, x in enumerate(items):
            if isinstance(x, (str, Path)):
                continue
            if isinstance(x, Image.Image):
                decoded.append((i, x))
            elif isinstance(x, np.ndarray) and x.ndim == 1:
                if x.shape[0] != d:
                    raise SiamfaceError(f"embedding of size {x.shape[0]} given, model has {d}")
                v = x.astype(np.float32)
                out[i] = v / max(float(np.linalg.norm(v)), 1e-12)
            elif isinstance(x, np.ndarray) and x.ndim in (2, 3) and x.dtype == np.uint8:
                decoded.append((i, Image.fromarray(x)))
            else:
                raise SiamfaceError(
                    f"cannot embed a {type(x).__name__}"
                    + (f" of shape {x.shape} and dtype {x.dtype}" if hasattr(x, "shape") else "")
                    + ": give a file path, a PIL image, an HWC uint8 array or an embedding"
                )
        if decoded:
            out[[i for i, _ in decoded]] = self.embedder.embed_images(
                [im for _, im in decoded], batch_size=batch_size
            )
        return out

    # -- decisions -----------------------------------------------------------------------
    def similarity(self, a: ImageLike, b: ImageLike) -> float:
        """Cosine similarity of two faces (no threshold needed)."""
        e = self._embed_list([a, b], 2)
        return float(e[0] @ e[1])

    def verify(self, a: ImageLike, b: ImageLike, threshold: float | None = None) -> Verification:
        """Same person? ``similarity >= threshold`` with the given, load-time or stored
        threshold; raises :class:`SiamfaceError` when the model has none."""
        given = Threshold.given(threshold) if threshold is not None else self._override
        thr = pair_threshold(given, self._stored, str(self.embedder.source))
        sim = self.similarity(a, b)
        return decide_pair(sim, thr, self.probability(sim))

    def probability(self, similarity: float) -> float | None:
        """Same-person probability for a cosine similarity, from the model's BCE pair head
        (``loss=bce`` models; the article's probability output); None without one."""
        return self.embedder.probability(similarity)

    def identify(self, image: ImageLike, gallery, top_k: int = 5) -> list[dict]:
        """Who is in the photo: one answer per face (largest first), each with its ``box`` in
        photo pixels, the best ``top_k`` enrolled people and ``identity`` ("unknown" below the
        gallery's open-set threshold). ``gallery`` is a gallery folder, URL or open gallery."""
        from siamface.gallery import open_gallery  # lazy: sqlite3

        img = load_rgb(Path(image)) if isinstance(image, (str, Path)) else image
        if isinstance(img, np.ndarray):
            img = Image.fromarray(img)
        found, _ = self.embedder.locate_every_face(img)
        emb = self.embedder.embed_batch(np.stack([f.crop.transpose(2, 0, 1) for f in found]))

        def search(g) -> list[dict]:
            res = g.search(emb, top_k, fingerprint=self.embedder.fingerprint)
            out = []
            for f, r in zip(found, res, strict=True):
                c = f.choice
                box = None if c is None or c.face is None else [float(v) for v in c.face.box]
                out.append({"box": box, **r.to_dict()})
            return out

        if hasattr(gallery, "search"):  # an open gallery (a folder's or a Milvus one)
            return search(gallery)
        with open_gallery(gallery) as g:
            return search(g)

    def verify_identity(
        self, image: ImageLike, person: str, gallery, threshold: float | None = None
    ) -> ClaimVerification:
        """Is ``image`` the enrolled ``person``? 1:1 verification against a claimed identity,
        decided at the gallery's threshold (else ``threshold``/the load-time one, else the
        model's). ``gallery`` is a gallery folder or an open :class:`~siamface.gallery.Gallery`
        built with this model (another model's gallery is refused)."""
        from siamface.gallery import Gallery  # lazy: sqlite3

        emb = self._embed_list([image], 1)[0]

        def decide_in(g: Gallery) -> ClaimVerification:
            t = None if threshold is None else Threshold.given(threshold)
            if t is None and g.threshold is None and self._override is not None:
                t = Threshold.given(self._override.value)  # said plainly 'given' here
            return verify_claim(self.embedder, g, emb, person, t)

        if isinstance(gallery, Gallery):
            return decide_in(gallery)
        with Gallery.open(gallery) as g:
            return decide_in(g)


def _is_single(x) -> bool:
    if isinstance(x, (str, Path, Image.Image)):
        return True
    return isinstance(x, np.ndarray) and (x.ndim == 1 or x.dtype == np.uint8 and x.ndim != 4)


def load(path: str | Path, device: str = "auto", threshold: float | None = None) -> FaceModel:
    """Open a checkpoint (``.safetensors``), a training run directory or an ``.onnx`` export.

    ``threshold`` overrides the stored decision threshold.
    """

    return FaceModel(create_embedder(path, device=device), threshold=threshold)
