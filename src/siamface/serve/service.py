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

from siamface.decide.threshold import Threshold
from siamface.embed.load import Embedder
from siamface.errors import SiamfaceError
from siamface.faces.choose import FaceChoice, FacePick
from siamface.folders.images import ImageLoadError, decode_rgb
from siamface.serve.batcher import MicroBatcher
from siamface.serve.errors import (
    BadImage,
    BadRequest,
    ImageTooLarge,
    ModelFailure,
    NoGallery,
    api_error,
)
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
    #: Every face found in the photo and which one is used (None: an aligned crop was sent,
    #: or the model does not detect faces).
    choice: FaceChoice | None = None

    def detection(self) -> dict:
        """What the answer says about this photo's faces (boxes in the photo's pixels)."""
        out: dict = {"field": self.field}
        if self.choice is None:
            return out | {"faces": [], "face_used": None, "note": "used as a face crop"}
        return out | self.choice.to_dict() | {"note": self.choice.describe()}

    def jpeg(self) -> bytes:
        return face_jpeg(self.face)


def face_field(field: str) -> str:
    """The form field that picks the face of upload ``field``: image1 -> face1, image -> face."""
    return "face" + field[len("image") :] if field.startswith("image") else f"{field}_face"


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


def _value(threshold: Threshold | None) -> float | None:
    return None if threshold is None else threshold.value


def backend_name(embedder: Embedder) -> str:
    onnx = sys.modules.get("siamface.embed.onnx_backend")
    if onnx is not None and isinstance(embedder, onnx.OnnxEmbedder):
        return "onnxruntime"
    return "pytorch"


def open_gallery(spec: str | Path, embedder: Embedder):
    """The service's gallery (a folder or a ``milvus://`` URL): opened, or created empty for
    this model, and checked against the model."""
    from siamface.gallery import open_gallery as open_spec  # lazy: sqlite3

    spec = str(Path(spec).expanduser()) if "://" not in str(spec) else str(spec)
    return open_spec(
        spec,
        create={
            "fingerprint": embedder.fingerprint,
            "embedding_size": embedder.embedding_size,
            "threshold": _value(Threshold.parse(embedder.threshold)),
            "model_source": str(embedder.source),
        },
    )


def new_person(name: str, embeddings: np.ndarray, uploads: list[Upload], metadata: dict):
    """The gallery record for an enrollment, with the first aligned face as the thumbnail."""
    from siamface.gallery import NewPerson  # lazy: sqlite3
    from siamface.gallery.thumbnail import make_thumbnail  # lazy: sqlite3

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
        threshold: Threshold | None,
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
    def face_from_bytes(
        self, data: bytes, label: str, field: str, pick: FacePick | None = None
    ) -> tuple[np.ndarray, FaceChoice | None]:
        """Decode an upload and cut the face the model expects (aligned when it says so):
        (CHW face, the choice among the photo's faces). A photo whose face is ambiguous is
        refused with every face's box (``ambiguous_face``) unless ``pick`` says which."""
        try:
            img = decode_rgb(data, max_pixels=self.max_pixels)
            # (face detection serialises itself: faces.detect.YuNetDetector)
            found = self.embedder.locate(img, pick=pick, ambiguous="refuse")
        except ImageLoadError as err:
            raise api_error(err, field=field, label=label) from err
        except SiamfaceError as err:  # a pick that names no face found
            raise BadRequest(f"{label}: {err}", field=face_field(field)) from err
        return np.ascontiguousarray(found.crop.transpose(2, 0, 1)), found.choice

    def every_face_from_bytes(self, data: bytes, label: str, field: str):
        """Decode an upload and cut every face in it (for answers about every person):
        ([(CHW face, its choice)], position of the face the photo is about)."""
        try:
            img = decode_rgb(data, max_pixels=self.max_pixels)
            found, main = self.embedder.locate_every_face(img)
        except ImageLoadError as err:
            raise api_error(err, field=field, label=label) from err
        faces = [(np.ascontiguousarray(f.crop.transpose(2, 0, 1)), f.choice) for f in found]
        return faces, main

    async def read_every_face(self, upload: UploadFile, field: str) -> tuple[list[Upload], int]:
        """Every face of one uploaded photo, each an :class:`Upload` with its own choice,
        and the position of the face the photo is about."""
        data = await upload.read()
        label = f"{field} ({upload.filename})" if upload.filename else field
        pixels = self._admit(data, label, field)
        digest = hashlib.sha256(data).hexdigest()
        async with self.budget.reserve(pixels):
            found, main = await run_in_threadpool(self.every_face_from_bytes, data, label, field)
        return [Upload(face, digest, upload.filename, field, c) for face, c in found], main

    def _admit(self, data: bytes, label: str, field: str) -> int:
        """The upload's pixel count, refused above the per-image limit (header only)."""
        pixels = image_pixels(data, label, field)
        if pixels > self.max_pixels:
            raise ImageTooLarge(
                f"{label}: image too large ({pixels / 1e6:.1f} megapixels, limit "
                f"{self.max_pixels / 1e6:g})",
                field=field,
            )
        return pixels

    async def read(self, upload: UploadFile, field: str, pick: str | None = None) -> Upload:
        return await self.read_bytes(await upload.read(), upload.filename, field, pick)

    async def read_bytes(
        self, data: bytes, filename: str | None, field: str, pick: str | None = None
    ) -> Upload:
        """One photo's bytes -> its face (checked against the pixel limits first); ``pick``
        says which of several faces (a number or a box), else the auto rule decides."""
        label = f"{field} ({filename})" if filename else field
        pixels = self._admit(data, label, field)
        try:
            chosen = FacePick.parse(pick)
        except SiamfaceError as err:
            raise BadRequest(str(err), field=face_field(field)) from err
        digest = hashlib.sha256(data).hexdigest()
        async with self.budget.reserve(pixels):
            face, choice = await run_in_threadpool(self.face_from_bytes, data, label, field, chosen)
        return Upload(face, digest, filename, field, choice)

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
    def stored_threshold(self) -> Threshold | None:
        """The model's own threshold (calibrated with it), if it has one."""
        return Threshold.parse(self.embedder.threshold)

    @property
    def decision_threshold(self) -> Threshold | None:
        """The 1:1 threshold answers use: the server's ``--threshold``, else the model's."""
        return self.threshold if self.threshold is not None else self.stored_threshold

    def model_info(self) -> dict:
        e = self.embedder
        thr = self.decision_threshold
        return {
            "fingerprint": e.fingerprint,
            "backend": backend_name(e),
            "source": Path(e.source).name,
            "embedding_size": e.embedding_size,
            "image_size": e.preprocessing.image_size,
            "aligned": e.preprocessing.aligned,
            "threshold": thr.value if thr else None,
        }
