"""A loaded face-embedding model, whatever its format: the object every consumer uses.

Evaluation, verification, the gallery and the REST service all need the same few things from a
model: its preprocessing contract, its stored decision threshold, a fingerprint (so embeddings
of different models are never mixed), and "uint8 faces in, unit vectors out". :class:`Embedder`
provides exactly that; :class:`TorchEmbedder` runs a siamface checkpoint with PyTorch, and an
ONNX backend (``siamface.export``) runs an exported ``.onnx`` file with onnxruntime.
:func:`open_model` picks the backend from the file.
"""

from __future__ import annotations

import os
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

    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 NCHW faces of the model's input size -> (N, D) float32 unit vectors."""
        raise NotImplementedError

    # -- conveniences shared by all backends ------------------------------------------
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
            progress=progress,
        )

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity of matching rows (embeddings are unit vectors)."""
        return np.einsum("ij,ij->i", np.atleast_2d(a), np.atleast_2d(b))


class TorchEmbedder(Embedder):
    """A siamface ``.safetensors`` checkpoint run with PyTorch."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None):
        import torch

        from siamface.model.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(threads or os.cpu_count() or 1)
        self.device = torch.device(device)
        self.model = ckpt.build(self.device).to(memory_format=torch.channels_last)
        self.checkpoint = ckpt
        self.preprocessing = ckpt.preprocessing
        self.threshold = ckpt.threshold
        self.fingerprint = ckpt.fingerprint
        self.embedding_size = ckpt.model_cfg.embedding_size
        self.source = Path(path)
        self.info = ckpt.info

    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        from siamface.data.transforms import normalize_batch

        with torch.inference_mode():
            x = normalize_batch(torch.as_tensor(pixels), self.preprocessing).to(self.device)
            x = x.contiguous(memory_format=torch.channels_last)
            return self.model(x).float().cpu().numpy()


def open_model(path: str | Path, device: str = "auto") -> Embedder:
    """Open a siamface checkpoint (``.safetensors`` or a run directory) or an exported
    ``.onnx`` model."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SiamfaceError(f"model not found: {p}")
    if p.suffix == ".onnx":
        try:
            from siamface.export.onnx_runtime import OnnxEmbedder
        except ImportError as err:
            raise SiamfaceError(
                f"cannot run {p}: ONNX support is missing ({err}); pip install onnxruntime"
            ) from err
        return OnnxEmbedder(p)
    return TorchEmbedder(p, device=device)
