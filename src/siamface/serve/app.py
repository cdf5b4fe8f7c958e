"""The REST service: verify, embed and identify faces over HTTP, and manage the gallery.

``create_app`` loads the model (a checkpoint or an exported ``.onnx``) and optionally a
gallery once, and returns a FastAPI app. Requests decode their uploads in the thread pool
(never on the event loop), and their faces are embedded by a shared
:class:`~siamface.serve.batcher.MicroBatcher`, so concurrent requests share model calls.

Errors are JSON ``{"detail": "...", "code": "..."}`` with a 4xx status the client can act
on: 400 bad_image / bad_request, 401 missing_api_key, 403 wrong_api_key / writes_disabled,
404 no_gallery / not_enrolled, 409 already_enrolled, 413 (request too large), 422 no_face /
invalid_request (e.g. a missing field). Gallery writes need the ``X-API-Key`` header.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import Depends, FastAPI, File, Form, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool

from siamface.data.images import ImageLoadError, decode_rgb
from siamface.errors import SiamfaceError
from siamface.faces.errors import NoFaceError
from siamface.inference import Embedder, open_model
from siamface.serve.batcher import MicroBatcher
from siamface.serve.schemas import (
    EmbedOut,
    EnrollOut,
    ErrorOut,
    HealthOut,
    IdentifyOut,
    PeopleOut,
    PersonOut,
    RemovedOut,
    VerifyOut,
)
from siamface.verify import decide, resolve_threshold
from siamface.version import __version__

log = logging.getLogger("siamface.serve")

API_KEY_HEADER = "X-API-Key"
DEFAULT_MAX_UPLOAD_MB = 10.0
#: Largest decoded image accepted (a small PNG can expand to gigabytes of pixels).
DEFAULT_MAX_PIXELS = 40_000_000
MAX_TOP_K = 100

_ERRORS = {
    400: {"model": ErrorOut, "description": "unreadable image or bad parameter"},
    413: {"description": "request body larger than the server's limit"},
    422: {"model": ErrorOut, "description": "no face found, or a missing/invalid field"},
}
_NOT_FOUND = {
    404: {"model": ErrorOut, "description": "no gallery on this server / person not enrolled"}
}
_WRITE_ERRORS = {
    **_ERRORS,
    401: {"model": ErrorOut, "description": "X-API-Key header missing"},
    403: {"model": ErrorOut, "description": "wrong API key, or writes disabled"},
    404: {"model": ErrorOut, "description": "no gallery on this server / person not enrolled"},
}


class ApiError(Exception):
    """An error the client caused (or must know about), turned into a JSON 4xx response."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@dataclass
class _Upload:
    face: np.ndarray  # uint8 (3, S, S)
    digest: str
    name: str | None


class Service:
    """What the endpoints share: the model, the batcher, the optional gallery, the limits."""

    def __init__(
        self,
        embedder: Embedder,
        gallery,
        api_key: str | None,
        threshold: float | None,
        max_upload_mb: float,
        max_pixels: int,
        batcher: MicroBatcher,
    ) -> None:
        self.embedder = embedder
        self.gallery = gallery
        self.api_key = api_key
        self.threshold = threshold
        self.max_upload_mb = max_upload_mb
        self.max_pixels = max_pixels
        self.batcher = batcher

    # -- images -> faces -----------------------------------------------------------------
    def face_from_bytes(self, data: bytes, field: str) -> np.ndarray:
        """Decode an upload and cut the face the model expects (aligned when it says so)."""
        try:
            img = decode_rgb(data, max_pixels=self.max_pixels)
            face = self.embedder.face_array(img)
        except NoFaceError as err:
            raise ApiError(422, "no_face", f"{field}: {err}") from err
        except ImageLoadError as err:
            raise ApiError(400, "bad_image", f"{field}: {err or 'unreadable image'}") from err
        return np.ascontiguousarray(face.transpose(2, 0, 1))

    async def read(self, upload: UploadFile, field: str) -> _Upload:
        data = await upload.read()
        label = f"{field} ({upload.filename})" if upload.filename else field
        face = await run_in_threadpool(self.face_from_bytes, data, label)
        return _Upload(face, hashlib.sha256(data).hexdigest(), upload.filename)

    async def embed(self, uploads: list[_Upload]) -> np.ndarray:
        return await self.batcher.embed(np.stack([u.face for u in uploads]))

    def need_gallery(self):
        if self.gallery is None:
            raise ApiError(
                404, "no_gallery", "this server has no gallery (start it with --gallery DIR)"
            )
        return self.gallery

    def model_info(self) -> dict:
        e = self.embedder
        backend = "onnxruntime" if type(e).__name__ == "OnnxEmbedder" else "pytorch"
        return {
            "fingerprint": e.fingerprint,
            "backend": backend,
            "source": Path(e.source).name,
            "embedding_size": e.embedding_size,
            "image_size": e.preprocessing.image_size,
            "aligned": e.preprocessing.aligned,
            "threshold": self.threshold
            if self.threshold is not None
            else (e.threshold or {}).get("value"),
        }


def create_app(
    model_path: str | Path | Embedder,
    gallery_path: str | Path | None = None,
    api_key: str | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    *,
    threshold: float | None = None,
    max_batch: int = 32,
    max_wait_ms: float = 2.0,
    max_inflight: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    device: str = "auto",
) -> FastAPI:
    """Build the service for one model (``.safetensors``, run folder, ``.onnx``, or an
    already opened :class:`Embedder`) and an optional gallery folder (created, empty, for
    this model when it does not exist yet).

    ``api_key=None`` disables gallery writes: an open write endpoint would let anyone enroll
    themselves as someone else.
    """
    if max_upload_mb <= 0:
        raise SiamfaceError(f"max upload size must be positive, got {max_upload_mb} MB")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise SiamfaceError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    if api_key is not None and not api_key.strip():
        raise SiamfaceError("the API key is empty")
    embedder = (
        model_path if isinstance(model_path, Embedder) else open_model(model_path, device=device)
    )
    if embedder.preprocessing.aligned:
        from siamface.faces.align import aligned_loader

        aligned_loader(embedder.preprocessing)  # a missing detector fails now, not per request
    gallery = _open_gallery(gallery_path, embedder) if gallery_path is not None else None
    service = Service(
        embedder,
        gallery,
        api_key,
        threshold,
        max_upload_mb,
        max_pixels,
        MicroBatcher(
            embedder.embed_batch,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_inflight=max_inflight,
        ),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await service.batcher.start()
        try:
            yield
        finally:
            await service.batcher.stop()
            if service.gallery is not None:
                service.gallery.close()

    app = FastAPI(
        title="siamface",
        version=__version__,
        summary="Face verification (1:1), identification (1:N) and embeddings over HTTP.",
        description=(
            "Upload images as multipart form fields. Decisions compare the cosine similarity "
            "of L2-normalised embeddings with the model's calibrated threshold. Gallery "
            f"writes need the `{API_KEY_HEADER}` header. Errors are JSON "
            '`{"detail": ..., "code": ...}`.'
        ),
        lifespan=lifespan,
        max_body_size=int(max_upload_mb * 2**20),
    )
    app.state.service = service
    _install_error_handlers(app)
    _add_routes(app, service)
    return app


def _open_gallery(path: str | Path, embedder: Embedder):
    from siamface.gallery import Gallery

    path = Path(path).expanduser()
    if not Gallery.exists(path):
        log.info("creating empty gallery %s for model %s", path, embedder.fingerprint)
        return Gallery.create(
            path,
            fingerprint=embedder.fingerprint,
            embedding_size=embedder.embedding_size,
            threshold=(embedder.threshold or {}).get("value"),
            model_source=str(embedder.source),
        )
    gallery = Gallery.open(path)
    gallery.check_model(embedder.fingerprint, embedder.embedding_size)
    return gallery


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse({"detail": err.detail, "code": err.code}, status_code=err.status)

    @app.exception_handler(SiamfaceError)
    async def _user_error(_: Request, err: SiamfaceError) -> JSONResponse:
        return JSONResponse({"detail": str(err), "code": "bad_request"}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        parts, errors = [], []
        for e in err.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query"))
            if e.get("type") == "missing":
                parts.append(f"missing field '{where}'")
            else:
                parts.append(f"{where}: {e.get('msg')}")
            errors.append({"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg")})
        detail = "; ".join(parts)
        if any(e.get("loc", ("",))[0] == "body" for e in err.errors()):
            detail += " (send images as multipart/form-data file fields)"
        return JSONResponse(
            {"detail": detail, "code": "invalid_request", "errors": errors}, status_code=422
        )


def _add_routes(app: FastAPI, svc: Service) -> None:
    key_header = APIKeyHeader(
        name=API_KEY_HEADER,
        auto_error=False,
        description="Needed for gallery writes (enroll, remove).",
    )

    def require_key(key: str | None = Security(key_header)) -> None:
        if svc.api_key is None:
            raise ApiError(
                403,
                "writes_disabled",
                "gallery writes are disabled: the server was started without an API key "
                "(siamface serve --api-key KEY, or SIAMFACE_API_KEY)",
            )
        if not key:
            raise ApiError(
                401, "missing_api_key", f"send the API key in the {API_KEY_HEADER} header"
            )
        if not secrets.compare_digest(key.encode(), svc.api_key.encode()):
            raise ApiError(403, "wrong_api_key", "wrong API key")

    threshold_q = Query(
        None, ge=-1.0, le=1.0, description="override the decision threshold (cosine)"
    )

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    @app.get("/health", response_model=HealthOut, tags=["service"])
    async def health() -> dict:
        """Liveness plus what the server runs: model, gallery, limits, batching counters."""
        gallery = None
        if svc.gallery is not None:
            gallery = await run_in_threadpool(svc.gallery.info)
        return {
            "status": "ok",
            "version": __version__,
            "model": svc.model_info(),
            "gallery": gallery,
            "writes_enabled": svc.api_key is not None and svc.gallery is not None,
            "limits": {"max_upload_mb": svc.max_upload_mb, "max_pixels": svc.max_pixels},
            "batching": {
                "max_batch": svc.batcher.max_batch,
                "max_wait_ms": svc.batcher.max_wait * 1000,
                "max_inflight": svc.batcher.max_inflight,
                **svc.batcher.stats.to_dict(),
            },
        }

    @app.post("/verify", response_model=VerifyOut, responses=_ERRORS, tags=["faces"])
    async def verify(
        image1: UploadFile = File(..., description="first face image"),
        image2: UploadFile = File(..., description="second face image"),
        threshold: float | None = threshold_q,
    ) -> dict:
        """1:1 verification: are these two faces the same person?"""
        override = threshold if threshold is not None else svc.threshold
        try:
            thr, source = resolve_threshold(svc.embedder.threshold, override, "this model")
        except SiamfaceError as err:
            raise ApiError(400, "no_threshold", f"{err}; pass ?threshold=T") from err
        a, b = await asyncio.gather(svc.read(image1, "image1"), svc.read(image2, "image2"))
        emb = await svc.embed([a, b])
        result = decide(float(emb[0] @ emb[1]), thr, source)
        return {**result.to_dict(), "model": svc.embedder.fingerprint}

    @app.post("/embed", response_model=EmbedOut, responses=_ERRORS, tags=["faces"])
    async def embed(image: UploadFile = File(..., description="face image")) -> dict:
        """The face's embedding (compare embeddings only when their model matches)."""
        up = await svc.read(image, "image")
        emb = (await svc.embed([up]))[0]
        return {"embedding": emb.tolist(), "dim": len(emb), "model": svc.embedder.fingerprint}

    @app.post(
        "/identify",
        response_model=IdentifyOut,
        responses={**_ERRORS, **_NOT_FOUND},
        tags=["gallery"],
    )
    async def identify(
        image: UploadFile = File(..., description="face image to search for"),
        top_k: int = Query(5, ge=1, le=MAX_TOP_K, description="candidates to return"),
        threshold: float | None = threshold_q,
    ) -> dict:
        """1:N identification against the gallery; 'unknown' below the threshold."""
        gallery = svc.need_gallery()
        up = await svc.read(image, "image")
        emb = await svc.embed([up])
        thr = "gallery" if threshold is None else threshold
        result = await run_in_threadpool(
            lambda: gallery.search(emb, top_k, fingerprint=svc.embedder.fingerprint, threshold=thr)
        )
        return {**result[0].to_dict(), "model": svc.embedder.fingerprint}

    @app.get("/gallery/people", response_model=PeopleOut, responses=_NOT_FOUND, tags=["gallery"])
    async def list_people() -> dict:
        """Everyone enrolled, sorted by name."""
        gallery = svc.need_gallery()
        people = await run_in_threadpool(gallery.people)
        return {"count": len(people), "people": [p.to_dict() for p in people]}

    @app.get(
        "/gallery/people/{name:path}",
        response_model=PersonOut,
        responses=_NOT_FOUND,
        tags=["gallery"],
    )
    async def get_person(name: str) -> dict:
        gallery = svc.need_gallery()
        rec = await run_in_threadpool(gallery.person, name)
        if rec is None:
            raise ApiError(404, "not_enrolled", f"{name!r} is not enrolled")
        return rec.to_dict()

    @app.post(
        "/gallery/people",
        status_code=201,
        response_model=EnrollOut,
        responses={**_WRITE_ERRORS, 409: {"model": ErrorOut, "description": "name taken"}},
        dependencies=[Depends(require_key)],
        tags=["gallery"],
    )
    async def enroll(
        name: str = Form(..., description="the person's name (unique in the gallery)"),
        images: list[UploadFile] = File(..., description="one or more face images"),
        append: bool = Form(False, description="add the images to an enrolled person"),
        metadata: str | None = Form(None, description="optional JSON object stored with them"),
    ) -> dict:
        """Enroll a person from one or more images (all of them, or nothing on any error)."""
        from siamface.gallery import NewPerson

        gallery = svc.need_gallery()
        meta = _parse_metadata(metadata)
        if not append and await run_in_threadpool(gallery.__contains__, name):
            raise ApiError(
                409, "already_enrolled", f"{name!r} is already enrolled (send append=true)"
            )
        ups = await asyncio.gather(*(svc.read(f, f"images[{i}]") for i, f in enumerate(images)))
        emb = await svc.embed(list(ups))
        refs = [u.name for u in ups]
        digests = [u.digest for u in ups]
        person = NewPerson(name, emb, refs, digests, meta)

        def write():
            dups = gallery.duplicates_elsewhere([person])
            rec = gallery.enroll(
                name,
                emb,
                refs,
                fingerprint=svc.embedder.fingerprint,
                metadata=meta,
                digests=digests,
                append=append,
            )
            return rec, dups

        try:
            rec, dups = await run_in_threadpool(write)
        except SiamfaceError as err:
            code = 409 if "already enrolled" in str(err) else 400
            reason = "already_enrolled" if code == 409 else "bad_request"
            raise ApiError(code, reason, str(err)) from err
        warnings = [f"{d['path']} is also enrolled as {d['other']!r}" for d in dups]
        return {"person": rec.to_dict(), "warnings": warnings}

    @app.delete(
        "/gallery/people/{name:path}",
        response_model=RemovedOut,
        responses=_WRITE_ERRORS,
        dependencies=[Depends(require_key)],
        tags=["gallery"],
    )
    async def remove(name: str) -> dict:
        """Remove a person and all their images from the gallery."""
        gallery = svc.need_gallery()
        if not await run_in_threadpool(gallery.__contains__, name):
            raise ApiError(404, "not_enrolled", f"{name!r} is not enrolled")
        await run_in_threadpool(gallery.remove, [name])
        return {"removed": name}


def _parse_metadata(text: str | None) -> dict:
    if not text:
        return {}
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise ApiError(400, "bad_request", f"metadata is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise ApiError(400, "bad_request", "metadata must be a JSON object")
    return meta
