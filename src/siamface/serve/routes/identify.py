"""``POST /identify``: who in the gallery is this (1:N, open set)?"""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from siamface.serve.routes.deps import (
    MAX_TOP_K,
    NOT_FOUND,
    UPLOAD_ERRORS,
    face_form,
    faces_query,
    get_service,
    threshold_query,
    thumbnail_url,
)
from siamface.serve.schemas import IdentifyOut
from siamface.serve.service import Service, data_url

router = APIRouter(tags=["gallery"])


@router.post("/identify", response_model=IdentifyOut, responses={**UPLOAD_ERRORS, **NOT_FOUND})
async def identify(
    image: UploadFile = File(..., description="face image to search for"),
    top_k: int = Query(5, ge=1, le=MAX_TOP_K, description="candidates to return"),
    threshold: float | None = threshold_query(),
    faces: bool = faces_query(),
    face: str | None = face_form("image"),
    svc: Service = Depends(get_service),
) -> dict:
    """The best ``top_k`` enrolled people with their scores; ``identity`` is "unknown" when
    the best score is below the gallery's open-set threshold (or ``?threshold=``)."""
    gallery = svc.need_gallery()
    up = await svc.read(image, "image", face)
    emb = await svc.embed([up])
    thr = "gallery" if threshold is None else threshold
    result = await run_in_threadpool(
        lambda: gallery.search(emb, top_k, fingerprint=svc.embedder.fingerprint, threshold=thr)
    )
    out = {
        **result[0].to_dict(),
        "model": svc.embedder.fingerprint,
        "detections": [up.detection()],
    }
    for m in out["matches"]:
        m["thumbnail"] = thumbnail_url(m["name"])
    if faces:
        out["face"] = data_url(up.jpeg())
    return out
