"""The backend-neutral face-embedding model every consumer uses (see ``siamface.inference``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from siamface.data.transforms import Preprocessing, resize_uint8
from siamface.errors import SiamfaceError


class Embedder:
    """Backend-neutral face-embedding model. Subclasses implement :meth:`embed_batch`."""

    preprocessing: Preprocessing
    threshold: dict | None
    fingerprint: str
    embedding_size: int
    source: Path
    info: dict
    #: The BCE pair head's two scalars ``{"scale", "bias"}`` when the model has one.
    pair_head: dict | None = None

    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 NCHW faces of the model's input size -> (N, D) float32 unit vectors."""
        raise NotImplementedError

    def pair_probability(self, similarity: np.ndarray) -> np.ndarray | None:
        """Same-person probability of pairs with these cosine similarities, from the pair
        head a model trained with ``loss=bce`` carries (``sigmoid(scale * (cos - bias))``,
        the article's BCE output); None for models without one.

        The head is a monotone function of the cosine, so deciding on the probability is the
        same as deciding on the cosine at ``bias + logit(p) / scale``; the probability is
        reported beside the cosine, never instead of the calibrated threshold.
        """
        if not self.pair_head:
            return None
        z = float(self.pair_head["scale"]) * (
            np.asarray(similarity, dtype=np.float64) - float(self.pair_head["bias"])
        )
        # Numerically stable logistic: exp of a non-positive number only.
        e = np.exp(-np.abs(z))
        return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    def probability(self, similarity: float) -> float | None:
        """:meth:`pair_probability` of one pair, as a float (None without a pair head)."""
        p = self.pair_probability(np.asarray([similarity], dtype=np.float64))
        return None if p is None else float(p[0])

    def probe(self) -> None:
        """Embed one grey face at load time: weights that give NaN/Inf, or a graph that
        disagrees with its metadata, fail when the model is opened (a server refuses to
        start) instead of in the first request. Used where the weights themselves cannot be
        inspected cheaply (ONNX)."""
        size = self.preprocessing.image_size
        try:
            emb = self.embed_batch(np.full((1, 3, size, size), 128, dtype=np.uint8))
        except SiamfaceError:
            raise
        except Exception as err:  # noqa: BLE001 - runtimes raise their own types
            raise SiamfaceError(
                f"{self.source}: the model cannot run on a {size}x{size} face as its header "
                f"says ({str(err).strip()[:200]})"
            ) from err
        if emb.shape != (1, self.embedding_size):
            raise SiamfaceError(
                f"{self.source}: the model returns {emb.shape[1:]}-shaped embeddings, its "
                f"header says {self.embedding_size}"
            )

    def checked(self, emb: np.ndarray) -> np.ndarray:
        """Refuse non-finite embeddings: a broken model must fail loudly, never answer
        "different people, similarity nan" (or a REST 200 with null)."""
        emb = np.asarray(emb, dtype=np.float32)
        if emb.size and not np.isfinite(emb).all():
            raise SiamfaceError(
                f"model {self.source} produced non-finite embeddings (NaN/Inf): its weights "
                "are unusable; use the original file or retrain"
            )
        return emb

    # -- conveniences shared by all backends ------------------------------------------
    def face_loader(self):
        """Image path -> HWC uint8 face as this model wants it (a picklable callable).
        Models with their own face geometry (dlib's chips) override this and
        :meth:`face_array` together."""
        from siamface.embed import default_loader

        return default_loader(self.preprocessing)

    def face_array(self, img: Image.Image) -> np.ndarray:
        """An already-decoded RGB image -> HWC uint8 face of the input size (aligned first
        when the model was trained on aligned faces)."""
        pre = self.preprocessing
        if pre.aligned:
            from siamface.faces.align import align_face_image

            return align_face_image(img, pre)
        return resize_uint8(img.convert("RGB"), pre.image_size)

    #: ``info`` keys that describe where a model comes from and what it expects (``--json``
    #: outputs and the web page's model card show them).
    CARD_KEYS = (
        "name",
        "description",
        "license",
        "provenance",
        "input_contract",
        "tta",
        "members",
    )

    def card(self) -> dict:
        """Name, licence, provenance, input contract, flip averaging and fusion members, as
        far as the model records them."""
        info = self.info if isinstance(self.info, dict) else {}
        return {k: info[k] for k in self.CARD_KEYS if info.get(k) is not None}

    def display_face(self, img: Image.Image) -> np.ndarray:
        """The face crop to show a person (gallery thumbnails): the model's input face.
        Models whose input is not one picture (a fusion packs its members' crops) override
        it."""
        return self.face_array(img)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """Embed decoded images (e.g. uploads); raises ImageLoadError subclasses per image."""
        faces = [self.face_array(im).transpose(2, 0, 1) for im in images]
        if not faces:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        out = [
            self.embed_batch(np.stack(faces[i : i + batch_size]))
            for i in range(0, len(faces), batch_size)
        ]
        return np.concatenate(out)

    def embed_paths(
        self,
        paths: Sequence[str | Path],
        batch_size: int = 64,
        workers: int | None = None,
        progress: bool = True,
    ) -> tuple[np.ndarray, dict[int, str]]:
        """Embed image files in batches with parallel decoding.

        Returns (embeddings of the readable files in order, {index: reason} for the others).
        """
        from siamface.embed import embed_files

        return embed_files(
            self.embed_batch,
            [Path(p) for p in paths],
            self.preprocessing,
            batch_size=batch_size,
            workers=workers,
            loader=self.face_loader(),
            progress=progress,
        )

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity of matching rows (embeddings are unit vectors)."""
        return np.einsum("ij,ij->i", np.atleast_2d(a), np.atleast_2d(b))
