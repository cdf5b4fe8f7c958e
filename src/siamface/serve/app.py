"""The REST service and its web page: verify, embed and identify faces over HTTP, manage the
gallery, and show people what the model does.

``create_app`` loads the model (a checkpoint or an exported ``.onnx``), optionally a gallery
and an evaluation report, once, and returns a FastAPI app assembled from the routers in
:mod:`siamface.serve.routes`. Errors are answered in one JSON shape (:mod:`.errors`); request
bytes and decoded pixels are bounded (:mod:`.limits`); faces are embedded through a
:class:`~siamface.serve.batcher.MicroBatcher`, which groups concurrent requests into one model
call where that pays (GPU) and runs one request per call where it does not (CPU: grouping
measured 0.82x the throughput there). Gallery writes need the ``X-API-Key`` header.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from siamface.decide.threshold import Threshold
from siamface.embed.load import Embedder, create_embedder
from siamface.errors import SiamfaceError
from siamface.faces.align import aligned_loader
from siamface.serve.batcher import MicroBatcher
from siamface.serve.errors import install_error_handlers
from siamface.serve.limits import BodyLimit, PixelBudget
from siamface.serve.report import EvaluationReport
from siamface.serve.routes import ROUTERS
from siamface.serve.routes.deps import API_KEY_HEADER
from siamface.serve.routes.page import STATIC_DIR
from siamface.serve.service import Service, open_gallery, runs_on_gpu
from siamface.serve.settings import (
    BATCHING_MODES,
    DEFAULT_DECODE_WAIT_S,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_PIXELS_IN_FLIGHT,
    DEFAULT_MAX_UPLOAD_MB,
)
from siamface.serve.watch_feed import WatchFeed
from siamface.version import __version__

log = logging.getLogger("siamface.serve")


def create_app(
    model_path: str | Path | Embedder,
    gallery_path: str | Path | None = None,
    api_key: str | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    *,
    threshold: float | None = None,
    batching: str = "auto",
    max_batch: int = 32,
    max_wait_ms: float = 2.0,
    max_inflight: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_pixels_in_flight: int = DEFAULT_MAX_PIXELS_IN_FLIGHT,
    decode_wait_s: float = DEFAULT_DECODE_WAIT_S,
    report: str | Path | None = None,
    device: str = "auto",
    watch: str | None = None,
    watch_options: dict | None = None,
) -> FastAPI:
    """Build the service for one model (``.safetensors``, run folder, ``.onnx``, or an
    already opened :class:`Embedder`), an optional gallery (created, empty, for this model
    when it does not exist yet) and an optional ``siamface evaluate`` report folder.

    ``batching``: ``on`` groups concurrent requests into model calls of up to ``max_batch``
    images (``max_wait_ms``, ``max_inflight``); ``off`` runs each request's faces as one call,
    one call at a time; ``auto`` (default) is ``on`` when the model runs on a GPU.
    ``api_key=None`` disables gallery writes: an open write endpoint would let anyone enroll
    themselves as someone else. ``watch`` (a video file, folder, webcam index or stream URL)
    runs ``siamface watch`` on it beside the service, for the page's Watch tab
    (``watch_options``: :class:`~siamface.video.WatchOptions` fields).
    """
    if not max_upload_mb > 0:
        raise SiamfaceError(f"max upload size must be positive, got {max_upload_mb} MB")
    given = None if threshold is None else Threshold.given(threshold)
    if api_key is not None and not api_key.strip():
        raise SiamfaceError("the API key is empty")
    if batching not in BATCHING_MODES:
        choices = ", ".join(BATCHING_MODES)
        raise SiamfaceError(f"batching must be one of {choices}, got {batching!r}")
    if max_pixels < 1 or max_pixels_in_flight < 1:
        raise SiamfaceError("pixel limits must be positive")
    if not decode_wait_s > 0:
        raise SiamfaceError(f"the decode wait must be positive, got {decode_wait_s} s")
    evaluation = EvaluationReport.load(report) if report is not None else None
    embedder = (
        model_path
        if isinstance(model_path, Embedder)
        else create_embedder(model_path, device=device)
    )
    if embedder.preprocessing.aligned:
        aligned_loader(embedder.preprocessing)  # a missing detector fails now, not per request
    gallery = open_gallery(gallery_path, embedder) if gallery_path is not None else None
    feed = None
    if watch is not None:
        feed = WatchFeed(watch, gallery_path, embedder, watch_options)
    batched = batching == "on" or (batching == "auto" and runs_on_gpu(embedder))
    batcher = (
        MicroBatcher(
            embedder.embed_batch,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_inflight=max_inflight,
        )
        if batched
        else MicroBatcher(embedder.embed_batch, max_batch=1, max_wait_ms=0, max_inflight=1)
    )
    service = Service(
        embedder,
        gallery,
        api_key=api_key,
        threshold=given,
        max_upload_mb=max_upload_mb,
        max_pixels=max_pixels,
        batcher=batcher,
        batching=f"{batching} ({'on' if batched else 'off'})" if batching == "auto" else batching,
        budget=PixelBudget(max_pixels_in_flight, max_wait_s=decode_wait_s),
        report=evaluation,
    )
    service.watch = feed

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await service.batcher.start()
        if feed is not None:
            feed.start()
        try:
            yield
        finally:
            if feed is not None:
                feed.stop()
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
            f"writes need the `{API_KEY_HEADER}` header. Every error is JSON "
            '`{"detail": ..., "code": ..., "field"?: ...}`. The web page is at `/`.'
        ),
        lifespan=lifespan,
    )
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=int(max_upload_mb * 2**20))
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
