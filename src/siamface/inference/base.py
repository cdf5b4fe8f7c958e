"""The backend-neutral face-embedding model every consumer uses (see ``siamface.inference``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from siamface.data.transforms import Preprocessing, resize_uint8


class Embedder:
    """Backend-neutral face-embedding model. Subclasses implement :meth:`embed_batch`."""

    preprocessing: Preprocessing
    threshold: dict | None
    fingerprint: str
    embedding_size: int
    source: Path
    info: dict

    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 NCHW faces of the model's input size -> (N, D) float32 unit vectors."""
        raise NotImplementedError

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
