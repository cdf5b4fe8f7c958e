"""``POST /verify``: are these two faces the same person?"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, File, UploadFile

from siamface.errors import SiamfaceError
from siamface.serve.errors import NoThreshold
from siamface.serve.routes.deps import UPLOAD_ERRORS, faces_query, get_service, threshold_query
from siamface.serve.schemas import VerifyOut
from siamface.serve.service import Service, data_url, pair_probability
from siamface.verify import decide, resolve_threshold

router = APIRouter(tags=["faces"])


@router.post("/verify", response_model=VerifyOut, responses=UPLOAD_ERRORS)
async def verify(
    image1: UploadFile = File(..., description="first face image"),
    image2: UploadFile = File(..., description="second face image"),
    threshold: float | None = threshold_query(),
    faces: bool = faces_query(),
    svc: Service = Depends(get_service),
) -> dict:
    """1:1 verification: cosine similarity of the two faces and the decision at the
    model's calibrated threshold (or ``?threshold=``)."""
    override = threshold if threshold is not None else svc.threshold
    try:
        thr, source = resolve_threshold(svc.embedder.threshold, override, "this model")
    except SiamfaceError as err:
        raise NoThreshold(f"{err}; pass ?threshold=T", field="threshold") from err
    a, b = await asyncio.gather(svc.read(image1, "image1"), svc.read(image2, "image2"))
    emb = await svc.embed([a, b])
    result = decide(float(emb[0] @ emb[1]), thr, source)
    out = {
        **result.to_dict(),
        "model": svc.embedder.fingerprint,
        "probability": pair_probability(svc.embedder, result.similarity),
    }
    if faces:
        out["faces"] = [data_url(a.jpeg()), data_url(b.jpeg())]
    return out
