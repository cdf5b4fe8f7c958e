"""What every endpoint shares: the model, the batcher, the optional gallery and report, the
limits -- and the one path from an uploaded file to the face the model sees.

Uploads are checked in the order that costs least first: the byte limit (before reading, see
:mod:`~siamface.serve.limits`), the image header (format and pixel count, no decoding), then a
place in the pixel budget, and only then decoding and alignment in the thread pool (never on
the event loop). The aligned face is kept, so answers can show the person exactly the crop the
model embedded (the page never re-implements alignment).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool

from siamface.data.images import ImageLoadError, decode_rgb
from siamface.inference import Embedder
from siamface.serve.batcher import MicroBatcher
from siamface.serve.errors import BadImage, ImageTooLarge, ModelFailure, NoGallery, api_error
from siamface.serve.limits import PixelBudget
from siamface.serve.report import EvaluationReport

log = logging.getLogger("siamface.serve")

FACE_JPEG_QUALITY = 90


@dataclass
class Upload:
    """One decoded upload: the face the model sees and where it came from."""

    face: np.ndarray  # uint8 (3, S, S)
    digest: str
    name: str | None
    field: str

    def jpeg(self) -> bytes:
        return face_jpeg(self.face)


def face_jpeg(face_chw: np.ndarray, quality: int = FACE_JPEG_QUALITY) -> bytes:
    """A CHW uint8 face as JPEG bytes (what thumbnails and the page's aligned crops are)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(face_chw.transpose(1, 2, 0))).save(
        buf, "JPEG", quality=quality
    )
    return buf.getvalue()


def data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def image_pixels(data: bytes, label: str, field: str) -> int:
    """Width x height from the image header alone (nothing is decoded)."""
    if not data:
        raise BadImage(f"{label}: empty file", field=field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                return int(img.width) * int(img.height)
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(f"{label}: image too large to decode safely", field=field) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImage(f"{label}: not a recognised image format", field=field) from err


def runs_on_gpu(embedder: Embedder) -> bool:
    """Whether the model runs on a GPU (where batching concurrent requests pays)."""
    device = getattr(embedder, "device", None)
    if getattr(device, "type", None) == "cuda":
        return True
    return "CUDAExecutionProvider" in (getattr(embedder, "providers", None) or [])


def backend_name(embedder: Embedder) -> str:
    onnx = sys.modules.get("siamface.inference.onnx_backend")
    if onnx is not None and isinstance(embedder, onnx.OnnxEmbedder):
        return "onnxruntime"
    return "pytorch"


def open_gallery(spec: str | Path, embedder: Embedder):
    """The service's gallery (a folder or a ``milvus://`` URL): opened, or created empty for
    this model, and checked against the model."""
    from siamface.gallery import open_gallery as open_spec

    spec = str(Path(spec).expanduser()) if "://" not in str(spec) else str(spec)
    return open_spec(
        spec,
        create={
            "fingerprint": embedder.fingerprint,
            "embedding_size": embedder.embedding_size,
            "threshold": (embedder.threshold or {}).get("value"),
            "model_source": str(embedder.source),
        },
    )


def new_person(name: str, embeddings: np.ndarray, uploads: list[Upload], metadata: dict):
    """The gallery record for an enrollment, with the first aligned face as the thumbnail."""
    from siamface.gallery import NewPerson
    from siamface.gallery.thumbnail import make_thumbnail

    first = uploads[0].face.transpose(1, 2, 0)
    return NewPerson(
        name,
        embeddings,
        [u.name for u in uploads],
        [u.digest for u in uploads],
        metadata,
        thumbnail=make_thumbnail(first),
    )


class Service:
    """The model, batcher, gallery, report and limits, shared by all routes."""

    def __init__(
        self,
        embedder: Embedder,
        gallery,
        *,
        api_key: str | None,
        threshold: float | None,
        max_upload_mb: float,
        max_pixels: int,
        batcher: MicroBatcher,
        batching: str,
        budget: PixelBudget,
        report: EvaluationReport | None = None,
    ) -> None:
        self.embedder = embedder
        self.gallery = gallery
        self.api_key = api_key
        self.threshold = threshold
        self.max_upload_mb = max_upload_mb
        self.max_pixels = max_pixels
        self.batcher = batcher
        self.batching = batching
        self.budget = budget
        self.report = report
        #: The ``--watch`` feed (a :class:`~siamface.serve.watch_feed.WatchFeed`), or None.
        self.watch = None

    # -- images -> faces -----------------------------------------------------------------
    def face_from_bytes(self, data: bytes, label: str, field: str) -> np.ndarray:
        """Decode an upload and cut the face the model expects (aligned when it says so)."""
        try:
            img = decode_rgb(data, max_pixels=self.max_pixels)
            # (face detection serialises itself: faces.detect.YuNetDetector)
            face = self.embedder.face_array(img)
        except ImageLoadError as err:
            raise api_error(err, field=field, label=label) from err
        return np.ascontiguousarray(face.transpose(2, 0, 1))

    async def read(self, upload: UploadFile, field: str) -> Upload:
        data = await upload.read()
        label = f"{field} ({upload.filename})" if upload.filename else field
        pixels = image_pixels(data, label, field)
        if pixels > self.max_pixels:
            raise ImageTooLarge(
                f"{label}: image too large ({pixels / 1e6:.1f} megapixels, limit "
                f"{self.max_pixels / 1e6:g})",
                field=field,
            )
        digest = hashlib.sha256(data).hexdigest()
        async with self.budget.reserve(pixels):
            face = await run_in_threadpool(self.face_from_bytes, data, label, field)
        return Upload(face, digest, upload.filename, field)

    async def embed(self, uploads: list[Upload]) -> np.ndarray:
        emb = await self.batcher.embed(np.stack([u.face for u in uploads]))
        if not np.isfinite(emb).all():
            raise ModelFailure(
                "the model produced NaN or infinite embeddings (damaged weights?); "
                "the server's operator must check the model file"
            )
        return emb

    def need_gallery(self):
        if self.gallery is None:
            raise NoGallery("this server has no gallery (start it with --gallery DIR)")
        return self.gallery

    # -- descriptions --------------------------------------------------------------------
    @property
    def threshold_record(self) -> dict | None:
        """The decision threshold and its provenance (an override is described as given)."""
        if self.threshold is not None:
            return {"value": self.threshold, "source": "given", "method": "given"}
        rec = self.embedder.threshold
        return dict(rec) if rec and rec.get("value") is not None else None

    def model_info(self) -> dict:
        e = self.embedder
        thr = self.threshold_record
        return {
            "fingerprint": e.fingerprint,
            "backend": backend_name(e),
            "source": Path(e.source).name,
            "embedding_size": e.embedding_size,
            "image_size": e.preprocessing.image_size,
            "aligned": e.preprocessing.aligned,
            "threshold": thr["value"] if thr else None,
        }
