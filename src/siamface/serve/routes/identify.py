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
    given_threshold,
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
    every_face: bool = Query(
        False, description="answer for every face in the photo (``faces``), not only one"
    ),
    svc: Service = Depends(get_service),
) -> dict:
    """The best ``top_k`` enrolled people with their scores; ``identity`` is "unknown" when
    the best score is below the gallery's open-set threshold (or ``?threshold=``). With
    ``?every_face=true`` every person in the photo is searched (``faces``, with boxes); the
    top-level answer is then the one for the face the photo is about."""
    gallery = svc.need_gallery()
    if every_face:
        return await _every_face(image, top_k, threshold, svc, gallery)
    up = await svc.read(image, "image", face)
    emb = await svc.embed([up])
    thr = given_threshold(threshold)  # None: the gallery's own
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


async def _every_face(image, top_k: int, threshold, svc: Service, gallery) -> dict:
    ups, main = await svc.read_every_face(image, "image")
    emb = await svc.embed(ups)
    thr = given_threshold(threshold)  # None: the gallery's own
    results = await run_in_threadpool(
        lambda: gallery.search(emb, top_k, fingerprint=svc.embedder.fingerprint, threshold=thr)
    )
    answers = []
    for up, res in zip(ups, results, strict=True):
        ans = res.to_dict()
        for m in ans["matches"]:
            m["thumbnail"] = thumbnail_url(m["name"])
        c = up.choice
        box = None if c is None or c.face is None else [round(float(v), 1) for v in c.face.box]
        answers.append({"index": 0 if c is None else c.index, "box": box, **ans})
    # The top level answers for the face the photo is about (the face rule's choice).
    top = {k: v for k, v in answers[main].items() if k not in ("index", "box")}
    detection = ups[main].detection() | {"policy": "every face"}
    return {**top, "model": svc.embedder.fingerprint, "detections": [detection], "faces": answers}
