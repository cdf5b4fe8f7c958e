"""The gallery: list people and their thumbnails; enroll and remove (API key needed)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from siamface.errors import SiamfaceError
from siamface.gallery.validation import MetadataTooLarge, check_name, parse_metadata
from siamface.serve.errors import (
    AlreadyEnrolled,
    BadRequest,
    InvalidMetadata,
    InvalidName,
    NotEnrolled,
    NotFound,
    api_error,
)
from siamface.serve.routes.deps import NOT_FOUND, WRITE_ERRORS, get_service, require_key
from siamface.serve.routes.deps import thumbnail_url as _thumb
from siamface.serve.schemas import EnrollOut, ErrorOut, PeopleOut, PersonOut, RemovedOut
from siamface.serve.service import Service, new_person

router = APIRouter(prefix="/gallery", tags=["gallery"])


def person_out(rec) -> dict:
    return {**rec.to_dict(), "thumbnail": _thumb(rec.name)}


@router.get("/people", response_model=PeopleOut, responses=NOT_FOUND)
async def list_people(svc: Service = Depends(get_service)) -> dict:
    """Everyone enrolled, sorted by name."""
    gallery = svc.need_gallery()
    people = await run_in_threadpool(gallery.people)
    return {"count": len(people), "people": [person_out(p) for p in people]}


@router.get("/people/{name:path}", response_model=PersonOut, responses=NOT_FOUND)
async def get_person(name: str, svc: Service = Depends(get_service)) -> dict:
    gallery = svc.need_gallery()
    rec = await run_in_threadpool(gallery.person, name)
    if rec is None:
        raise NotEnrolled(f"{name!r} is not enrolled", field="name")
    return person_out(rec)


@router.get(
    "/thumbnails/{name:path}",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, **NOT_FOUND},
)
async def thumbnail(name: str, svc: Service = Depends(get_service)) -> Response:
    """The person's thumbnail (the aligned face of their first enrolled image), JPEG."""
    gallery = svc.need_gallery()
    data = await run_in_threadpool(gallery.thumbnail, name)
    if data is None:
        if not await run_in_threadpool(gallery.__contains__, name):
            raise NotEnrolled(f"{name!r} is not enrolled", field="name")
        raise NotFound(f"{name!r} has no thumbnail")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-cache"})


@router.post(
    "/people",
    status_code=201,
    response_model=EnrollOut,
    responses={**WRITE_ERRORS, 409: {"model": ErrorOut, "description": "name taken"}},
    dependencies=[Depends(require_key)],
)
async def enroll(
    name: str = Form(..., description="the person's name (unique in the gallery)"),
    images: list[UploadFile] = File(..., description="one or more face images"),
    append: bool = Form(False, description="add the images to an enrolled person"),
    metadata: str | None = Form(None, description="optional JSON object stored with them"),
    svc: Service = Depends(get_service),
) -> dict:
    """Enroll a person from one or more images (all of them, or nothing on any error)."""
    gallery = svc.need_gallery()
    meta = _parse_metadata(metadata)
    try:  # the one name rule (siamface.names), before any image is read
        name = check_name(name)
    except SiamfaceError as err:
        raise InvalidName(str(err), field="name") from None
    if not append and await run_in_threadpool(gallery.__contains__, name):
        raise AlreadyEnrolled(f"{name!r} is already enrolled (send append=true)", field="name")
    ups = await asyncio.gather(*(svc.read(f, f"images[{i}]") for i, f in enumerate(images)))
    emb = await svc.embed(list(ups))
    person = new_person(name, emb, ups, meta)

    def write():
        dups = gallery.duplicates_elsewhere([person])
        rec = gallery.enroll_many([person], fingerprint=svc.embedder.fingerprint, append=append)
        return rec[0], dups

    try:
        rec, dups = await run_in_threadpool(write)
    except SiamfaceError as err:
        # Enrolled by another client between our check and the write: a conflict. Decided
        # from the gallery's state, not from the message.
        if not append and await run_in_threadpool(gallery.__contains__, name):
            raise AlreadyEnrolled(str(err), field="name") from err
        raise api_error(err) from err
    warnings = [f"{d['path']} is also enrolled as {d['other']!r}" for d in dups]
    return {"person": person_out(rec), "warnings": warnings}


@router.delete(
    "/people/{name:path}",
    response_model=RemovedOut,
    responses=WRITE_ERRORS,
    dependencies=[Depends(require_key)],
)
async def remove(name: str, svc: Service = Depends(get_service)) -> dict:
    """Remove a person and all their images from the gallery."""
    gallery = svc.need_gallery()
    if not await run_in_threadpool(gallery.__contains__, name):
        raise NotEnrolled(f"{name!r} is not enrolled", field="name")
    await run_in_threadpool(gallery.remove, [name])
    return {"removed": name}


def _parse_metadata(text: str | None) -> dict:
    try:
        return parse_metadata(text)
    except MetadataTooLarge as err:
        raise InvalidMetadata(str(err), field="metadata") from None
    except SiamfaceError as err:
        raise BadRequest(str(err), field="metadata") from None
