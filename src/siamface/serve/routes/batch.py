"""Batch endpoints: many photos per request, as multipart fields or as JSON with base64.

``POST /embed/batch``, ``/verify/batch`` and ``/identify/batch`` take up to
:data:`MAX_BATCH_ITEMS` photos in one request and embed them in one model call: a client with
a thousand photos sends a few dozen requests instead of a thousand, and the server's model
runs full batches. Each photo gets its own answer in ``results`` (in input order, with its
``index``); a photo that cannot be used (not an image, no face, too large) gets an ``error``
there instead of failing the whole request. Request-level problems (too many photos, a body
that is neither multipart nor JSON, invalid base64) answer with the usual error body.

Input, either way:

* ``multipart/form-data``: repeated file fields (``images``; ``image1``/``image2`` for verify);
* ``application/json``: ``{"images": ["<base64>", ...]}`` (``{"image1": [...], "image2": [...]}``
  for verify); each string is base64, optionally as a ``data:image/...;base64,`` URL.

``/identify/batch`` answers per photo with the best face's identity and a ``faces`` list (one
entry per face searched, each with its ``box`` when known), so that answers for every face
in a group photo fit the same schema.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from siamface.decide.verify import decide_pair, pair_threshold
from siamface.errors import SiamfaceError
from siamface.gallery.validation import json_depth
from siamface.serve.errors import ApiError, BadRequest, Busy, InvalidRequest, NoThreshold
from siamface.serve.routes.deps import (
    MAX_TOP_K,
    NOT_FOUND,
    UPLOAD_ERRORS,
    get_service,
    given_threshold,
    threshold_query,
    thumbnail_url,
)
from siamface.serve.schemas import BatchEmbedOut, BatchIdentifyOut, BatchVerifyOut
from siamface.serve.service import Service, Upload

router = APIRouter(tags=["batch"])

#: Photos per batch request (a pair counts as two): bounded so that one request cannot hold
#: the model for long; the request body limit applies as well.
MAX_BATCH_ITEMS = 64
_JSON_DEPTH = 4

_BODY = {
    "requestBody": {
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"images": {"type": "array", "items": {"type": "string"}}},
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        }
                    },
                }
            },
        }
    }
}


def _b64(text: object, field: str) -> bytes:
    if not isinstance(text, str):
        raise BadRequest(f"{field} must be a base64 string", field=field)
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{field} is not valid base64", field=field) from None


async def read_items(request: Request, fields: tuple[str, ...]) -> dict[str, list]:
    """``{field: [(bytes, filename), ...]}`` from a multipart or JSON body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    out: dict[str, list] = {f: [] for f in fields}
    if ctype == "application/json":
        raw = await request.body()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the JSON body is not UTF-8") from None
        if json_depth(text) > _JSON_DEPTH:
            raise BadRequest(f"the JSON body is nested deeper than {_JSON_DEPTH} levels")
        try:
            doc = json.loads(text)
        except ValueError as err:
            raise BadRequest(f"the JSON body is not valid JSON: {err}") from None
        if not isinstance(doc, dict):
            raise BadRequest(f"the JSON body must be an object with {', '.join(fields)}")
        for f in fields:
            items = doc.get(f, [])
            if not isinstance(items, list):
                raise BadRequest(f"{f} must be a list of base64 strings", field=f)
            out[f] = [(_b64(s, f"{f}[{i}]"), None) for i, s in enumerate(items)]
    elif ctype == "multipart/form-data":
        form = await request.form(max_files=MAX_BATCH_ITEMS + 1)
        for f in fields:
            for i, item in enumerate(form.getlist(f)):
                if not isinstance(item, UploadFile):
                    raise BadRequest(f"{f}[{i}] must be a file", field=f)
                out[f].append((await item.read(), item.filename))
    else:
        raise BadRequest("send multipart/form-data (file fields) or application/json (base64)")
    total = sum(len(v) for v in out.values())
    if total == 0:
        raise InvalidRequest(
            f"no photos: send {' and '.join(fields)}", [{"loc": list(fields), "msg": "empty"}]
        )
    if total > MAX_BATCH_ITEMS:
        raise InvalidRequest(
            f"{total} photos in one request; at most {MAX_BATCH_ITEMS} (split the batch)",
            [{"loc": list(fields), "msg": "too many"}],
        )
    return out


def _error(err: ApiError) -> dict:
    return {"code": err.code, "detail": err.detail, "field": err.field}


async def _faces(svc: Service, items: list, field: str) -> list[Upload | ApiError]:
    """Each photo's face, or the error that makes it unusable (a busy server fails all)."""

    async def one(i: int, data: bytes, name: str | None) -> Upload | ApiError:
        try:
            return await svc.read_bytes(data, name, f"{field}[{i}]")
        except Busy:
            raise
        except ApiError as err:
            return err

    return list(await asyncio.gather(*(one(i, d, n) for i, (d, n) in enumerate(items))))


async def _embed(svc: Service, faces: list[Upload | ApiError]) -> list[np.ndarray | None]:
    """Embeddings of the usable faces in one model call, None where the photo failed."""
    good = [f for f in faces if isinstance(f, Upload)]
    emb = await svc.embed(good) if good else np.zeros((0, svc.embedder.embedding_size))
    it = iter(emb)
    return [next(it) if isinstance(f, Upload) else None for f in faces]


@router.post(
    "/embed/batch", response_model=BatchEmbedOut, responses=UPLOAD_ERRORS, openapi_extra=_BODY
)
async def embed_batch(request: Request, svc: Service = Depends(get_service)) -> dict:
    """Embeddings of many photos (field ``images``), one result per photo."""
    items = (await read_items(request, ("images",)))["images"]
    faces = await _faces(svc, items, "images")
    embs = await _embed(svc, faces)
    results = [
        {"index": i, "embedding": e.tolist()} if e is not None else {"index": i, "error": _error(f)}
        for i, (f, e) in enumerate(zip(faces, embs, strict=True))
    ]
    return {
        "model": svc.embedder.fingerprint,
        "dim": svc.embedder.embedding_size,
        "results": results,
    }


@router.post(
    "/verify/batch", response_model=BatchVerifyOut, responses=UPLOAD_ERRORS, openapi_extra=_BODY
)
async def verify_batch(
    request: Request,
    threshold: float | None = threshold_query(),
    svc: Service = Depends(get_service),
) -> dict:
    """Many pairs: ``image1[i]`` against ``image2[i]``, each decided at the model's threshold
    (or ``?threshold=``)."""
    given = given_threshold(threshold) or svc.threshold
    try:
        thr = pair_threshold(given, svc.stored_threshold, "this model")
    except SiamfaceError as err:
        raise NoThreshold(f"{err}; pass ?threshold=T", field="threshold") from err
    got = await read_items(request, ("image1", "image2"))
    if len(got["image1"]) != len(got["image2"]):
        raise InvalidRequest(
            f"{len(got['image1'])} image1 and {len(got['image2'])} image2: send pairs",
            [{"loc": ["image1", "image2"], "msg": "lengths differ"}],
        )
    n = len(got["image1"])
    faces = await _faces(svc, got["image1"] + got["image2"], "images")
    for k, f in enumerate(faces):  # name the field as sent
        if isinstance(f, ApiError):
            f.field = f"image1[{k}]" if k < n else f"image2[{k - n}]"
            f.detail = f.detail.replace(f"images[{k}]", f.field)
    embs = await _embed(svc, faces)
    results = []
    for i in range(n):
        a, b = embs[i], embs[n + i]
        if a is None or b is None:
            bad = faces[i] if a is None else faces[n + i]
            results.append({"index": i, "error": _error(bad)})  # type: ignore[arg-type]
            continue
        s = float(a @ b)
        results.append({"index": i, **decide_pair(s, thr, svc.embedder.probability(s)).to_dict()})
    return {"model": svc.embedder.fingerprint, "results": results}


@router.post(
    "/identify/batch",
    response_model=BatchIdentifyOut,
    responses={**UPLOAD_ERRORS, **NOT_FOUND},
    openapi_extra=_BODY,
)
async def identify_batch(
    request: Request,
    top_k: int = Query(5, ge=1, le=MAX_TOP_K, description="candidates per face"),
    threshold: float | None = threshold_query(),
    svc: Service = Depends(get_service),
) -> dict:
    """Who is in each photo (field ``images``): one gallery search for all of them."""
    gallery = svc.need_gallery()
    items = (await read_items(request, ("images",)))["images"]
    faces = await _faces(svc, items, "images")
    embs = await _embed(svc, faces)
    good = [e for e in embs if e is not None]
    thr = given_threshold(threshold)  # None: the gallery's own
    found = []
    if good:
        q = np.stack(good)
        found = await run_in_threadpool(
            lambda: gallery.search(q, top_k, fingerprint=svc.embedder.fingerprint, threshold=thr)
        )
    it = iter(found)
    results = []
    for i, (f, e) in enumerate(zip(faces, embs, strict=True)):
        if e is None:
            results.append({"index": i, "error": _error(f), "faces": []})  # type: ignore[arg-type]
            continue
        answer = next(it).to_dict()
        for m in answer["matches"]:
            m["thumbnail"] = thumbnail_url(m["name"])
        box = None  # the face used in the photo (the auto rule's, or refused as ambiguous)
        if f.choice is not None and f.choice.face is not None:
            box = [round(float(v), 1) for v in f.choice.face.box]
        results.append({"index": i, **answer, "faces": [{"box": box, **answer}]})
    return {"model": svc.embedder.fingerprint, "results": results}
