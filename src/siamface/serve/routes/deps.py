"""What the routers share: access to the :class:`Service`, the API-key check, the
documented error answers and common parameters."""

from __future__ import annotations

import secrets
from urllib.parse import quote

from fastapi import Form, Query, Request, Security
from fastapi.security import APIKeyHeader

from siamface.decide.threshold import Threshold
from siamface.model.validate import MAX_THRESHOLD, MIN_THRESHOLD
from siamface.serve.errors import MissingApiKey, WritesDisabled, WrongApiKey
from siamface.serve.schemas import ErrorOut
from siamface.serve.service import Service

API_KEY_HEADER = "X-API-Key"
MAX_TOP_K = 100


def get_service(request: Request) -> Service:
    return request.app.state.service


_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="Needed for gallery writes (enroll, remove)."
)


def require_key(request: Request, key: str | None = Security(_key_header)) -> None:
    """Gallery writes need the server's API key; a server without one refuses them all."""
    svc = get_service(request)
    if svc.api_key is None:
        raise WritesDisabled(
            "gallery writes are disabled: the server was started without an API key "
            "(siamface serve --api-key KEY, or SIAMFACE_API_KEY)"
        )
    if not key:
        raise MissingApiKey(f"send the API key in the {API_KEY_HEADER} header")
    if not secrets.compare_digest(key.encode(), svc.api_key.encode()):
        raise WrongApiKey("wrong API key")


def threshold_query() -> object:
    """``?threshold=``: checked by the framework (a 422 naming the field, before the body),
    within the bounds the one threshold rule uses."""
    return Query(
        None,
        ge=MIN_THRESHOLD,
        le=MAX_THRESHOLD,
        description="override the decision threshold (cosine)",
    )


def given_threshold(value: float | None) -> Threshold | None:
    """The ``?threshold=`` of a request as a :class:`Threshold` (None: not given)."""
    return None if value is None else Threshold.given(value)


def face_form(field: str) -> object:
    """The form field that says which face of upload ``field`` to use."""
    return Form(
        None,
        description=f"which face of {field} to use when it holds several: a number from the "
        "'faces' list of an answer (0 = largest) or a box 'x0,y0,x1,y1' in the photo's pixels; "
        "without it the face the photo is about is chosen (auto), and a photo with two equally "
        "likely faces is refused with code ambiguous_face and every face's box",
    )


def faces_query() -> object:
    return Query(False, description="also return the aligned faces the model saw (JPEG data URLs)")


def thumbnail_url(name: str) -> str:
    return "/gallery/thumbnails/" + quote(name, safe="")


def _err(description: str) -> dict:
    return {"model": ErrorOut, "description": description}


#: Error answers every upload endpoint can give (shown in /docs).
UPLOAD_ERRORS = {
    400: _err("not an image (bad_image), bad parameter (bad_request)"),
    413: _err("request above the byte limit (too_large) or image above the pixel limit"),
    422: _err("no face found (no_face), or a missing/invalid field (invalid_request)"),
    503: _err("too many large images being decoded right now (busy): retry"),
}
NOT_FOUND = {404: _err("no gallery on this server / person not enrolled")}
WRITE_ERRORS = {
    **UPLOAD_ERRORS,
    401: _err("X-API-Key header missing"),
    403: _err("wrong API key, or writes disabled"),
    **NOT_FOUND,
}
