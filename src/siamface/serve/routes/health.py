"""``GET /health``: liveness plus what the server runs and how it is doing."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from siamface.serve.routes.deps import get_service
from siamface.serve.schemas import HealthOut
from siamface.serve.service import Service
from siamface.version import __version__

router = APIRouter(tags=["service"])


@router.get("/health", response_model=HealthOut)
async def health(svc: Service = Depends(get_service)) -> dict:
    """Model, gallery, limits, batching and decoding counters."""
    gallery = None
    if svc.gallery is not None:
        gallery = await run_in_threadpool(svc.gallery.info)
    return {
        "status": "ok",
        "version": __version__,
        "model": svc.model_info(),
        "gallery": gallery,
        "writes_enabled": svc.api_key is not None and svc.gallery is not None,
        "limits": {
            "max_upload_mb": svc.max_upload_mb,
            "max_pixels": svc.max_pixels,
            **svc.budget.to_dict(),
        },
        "batching": {
            "mode": svc.batching,
            "enabled": svc.batcher.max_batch > 1,
            "max_batch": svc.batcher.max_batch,
            "max_wait_ms": svc.batcher.max_wait * 1000,
            "max_inflight": svc.batcher.max_inflight,
            **svc.batcher.stats.to_dict(),
        },
    }
