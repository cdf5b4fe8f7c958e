"""``POST /verify``: are these two faces the same person -- or is this face the person it
claims to be (``person``, a name enrolled in the gallery)?"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from siamface.decide.verify import claim_threshold, claimed_score, decide_pair, pair_threshold
from siamface.errors import SiamfaceError
from siamface.serve.errors import BadRequest, NotEnrolled, NoThreshold
from siamface.serve.routes.deps import (
    NOT_FOUND,
    UPLOAD_ERRORS,
    face_form,
    faces_query,
    get_service,
    given_threshold,
    threshold_query,
)
from siamface.serve.schemas import VerifyOut
from siamface.serve.service import Service, data_url

router = APIRouter(tags=["faces"])


@router.post("/verify", response_model=VerifyOut, responses={**UPLOAD_ERRORS, **NOT_FOUND})
async def verify(
    image1: UploadFile = File(..., description="face image (the probe)"),
    image2: UploadFile | None = File(None, description="second face image (two-photo mode)"),
    person: str | None = Form(
        None,
        description="claimed identity: a person enrolled in the gallery (instead of image2); "
        "decided at the gallery's threshold",
    ),
    threshold: float | None = threshold_query(),
    faces: bool = faces_query(),
    face1: str | None = face_form("image1"),
    face2: str | None = face_form("image2"),
    svc: Service = Depends(get_service),
) -> dict:
    """1:1 verification. With ``image2``: cosine similarity of the two faces, decided at the
    model's calibrated threshold (or ``?threshold=``). With ``person``: the face against that
    enrolled person, scored as the gallery scores people and decided at the gallery's
    threshold (the article's "is this really Alice?" use case)."""
    if image2 is None and person is None:  # the two-photo form, missing its second photo
        missing = {"type": "missing", "loc": ("body", "image2"), "msg": "Field required"}
        raise RequestValidationError([missing])
    if image2 is not None and person is not None:
        raise BadRequest("send either image2 (two photos) or person (a claimed identity)")
    if person is not None:
        return await _verify_claim(image1, person, threshold, faces, face1, svc)
    given = given_threshold(threshold) or svc.threshold
    try:
        thr = pair_threshold(given, svc.stored_threshold, "this model")
    except SiamfaceError as err:
        raise NoThreshold(f"{err}; pass ?threshold=T", field="threshold") from err
    a, b = await asyncio.gather(
        svc.read(image1, "image1", face1), svc.read(image2, "image2", face2)
    )
    emb = await svc.embed([a, b])
    similarity = float(emb[0] @ emb[1])
    result = decide_pair(similarity, thr, svc.embedder.probability(similarity))
    out = {
        **result.to_dict(),
        "model": svc.embedder.fingerprint,
        "detections": [a.detection(), b.detection()],
    }
    if faces:
        out["faces"] = [data_url(a.jpeg()), data_url(b.jpeg())]
    return out


async def _verify_claim(
    image: UploadFile,
    person: str,
    threshold: float | None,
    faces: bool,
    face: str | None,
    svc: Service,
) -> dict:
    gallery = svc.need_gallery()
    name = person.strip()
    if await run_in_threadpool(gallery.person, name) is None:
        raise NotEnrolled(f"{name!r} is not enrolled in the gallery", field="person")
    given = given_threshold(threshold) or svc.threshold
    try:
        thr = claim_threshold(gallery, given, svc.stored_threshold)
    except SiamfaceError as err:
        raise NoThreshold(f"{err}; pass ?threshold=T", field="threshold") from err
    up = await svc.read(image, "image1", face)
    emb = await svc.embed([up])
    score = await run_in_threadpool(claimed_score, gallery, emb[0], name, svc.embedder.fingerprint)
    result = decide_pair(score, thr, svc.embedder.probability(score))
    out = {
        **result.to_dict(),
        "model": svc.embedder.fingerprint,
        "person": name,
        "detections": [up.detection()],
    }
    if faces:
        out["faces"] = [data_url(up.jpeg())]
    return out
