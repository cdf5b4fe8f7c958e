"""``POST /embed``: the embedding of one face."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, UploadFile

from siamface.serve.routes.deps import UPLOAD_ERRORS, face_form, get_service
from siamface.serve.schemas import EmbedOut
from siamface.serve.service import Service

router = APIRouter(tags=["faces"])


@router.post("/embed", response_model=EmbedOut, responses=UPLOAD_ERRORS)
async def embed(
    image: UploadFile = File(..., description="face image"),
    face: str | None = face_form("image"),
    svc: Service = Depends(get_service),
) -> dict:
    """The face's L2-normalised embedding (compare embeddings only when their model matches)."""
    up = await svc.read(image, "image", face)
    emb = (await svc.embed([up]))[0]
    return {
        "embedding": emb.tolist(),
        "dim": len(emb),
        "model": svc.embedder.fingerprint,
        "detections": [up.detection()],
    }
