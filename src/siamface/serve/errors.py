"""Every error the service answers, as one exception hierarchy and one JSON shape.

A client (the web page, a script) must be able to act on an error without parsing English:
each :class:`ApiError` subclass carries its HTTP status and a stable machine-readable
``code``; the optional ``field`` names the upload or parameter at fault (the page turns
``no_face`` + ``image1`` into "no face found in the left photo", in the reader's language).
Errors raised below the service (image decoding, face detection, gallery checks) are mapped
onto this hierarchy by type in :data:`DOMAIN_ERRORS` -- never by class name or message text.

:func:`install_error_handlers` makes every answer that is not a success use the same body,
``{"detail": str, "code": str, "field"?: str, "errors"?: [...]}``: our own errors, the
framework's (404 route, 405 method, malformed multipart bodies, validation of parameters),
the request-size limit, and unexpected crashes (500, with the traceback only in the log).
"""

from __future__ import annotations

import logging
from typing import ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from siamface.errors import SiamfaceError
from siamface.faces.errors import AmbiguousFaceError, NoFaceError
from siamface.folders.images import ImageLoadError
from siamface.names import NameError_

log = logging.getLogger("siamface.serve")


class ApiError(HTTPException):
    """An error the client caused or must know about. Subclasses set ``status`` and ``code``.

    It is a Starlette ``HTTPException`` so that FastAPI lets it through while it parses a
    request body (it turns any other exception there into a generic 400).
    """

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(
        self, detail: str, *, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code=self.status, detail=detail, headers=headers)
        self.field = field

    def body(self) -> dict:
        out = {"detail": str(self.detail), "code": self.code}
        if self.field is not None:
            out["field"] = self.field
        return out


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class BadImage(ApiError):
    """The upload is not a decodable image (not an image, truncated, empty)."""

    status, code = 400, "bad_image"


class NoThreshold(ApiError):
    status, code = 400, "no_threshold"


class MissingApiKey(ApiError):
    status, code = 401, "missing_api_key"


class WrongApiKey(ApiError):
    status, code = 403, "wrong_api_key"


class WritesDisabled(ApiError):
    status, code = 403, "writes_disabled"


class NotFound(ApiError):
    status, code = 404, "not_found"


class NoGallery(ApiError):
    status, code = 404, "no_gallery"


class NotEnrolled(ApiError):
    status, code = 404, "not_enrolled"


class NoReport(ApiError):
    status, code = 404, "no_report"


class MethodNotAllowed(ApiError):
    status, code = 405, "method_not_allowed"


class AlreadyEnrolled(ApiError):
    status, code = 409, "already_enrolled"


class ModelMismatch(ApiError):
    status, code = 409, "model_mismatch"


class TooLarge(ApiError):
    """The request body is above the server's byte limit."""

    status, code = 413, "too_large"


class ImageTooLarge(ApiError):
    """The image decodes to more pixels than the server accepts for one image."""

    status, code = 413, "image_too_large"


class InvalidName(ApiError):
    """A person's name that the gallery refuses (see :mod:`siamface.names`)."""

    status, code = 422, "invalid_name"


class InvalidMetadata(ApiError):
    """Metadata over the size or depth bound."""

    status, code = 422, "invalid_metadata"


class NoFace(ApiError):
    status, code = 422, "no_face"


class AmbiguousFace(ApiError):
    """Several faces, two equally likely to be the person: the client must say which
    (``face1``/``face2``/``face``: a number from ``faces`` or a box). The body lists every face
    found, so a page can draw them and let the person click one."""

    status, code = 422, "ambiguous_face"

    def __init__(self, detail: str, *, field: str | None = None, faces: list | None = None):
        super().__init__(detail, field=field)
        self.faces = faces or []

    def body(self) -> dict:
        return {**super().body(), "faces": self.faces}


class InvalidRequest(ApiError):
    """A missing field or an out-of-range parameter (``errors`` lists each one)."""

    status, code = 422, "invalid_request"

    def __init__(self, detail: str, errors: list[dict], field: str | None = None) -> None:
        super().__init__(detail, field=field)
        self.errors = errors

    def body(self) -> dict:
        return {**super().body(), "errors": self.errors}


class Busy(ApiError):
    """Too much image data is being decoded right now; the client should retry shortly."""

    status, code = 503, "busy"


class Internal(ApiError):
    status, code = 500, "internal_error"


class ModelFailure(ApiError):
    """The model produced unusable output (NaN or infinite embeddings: damaged weights)."""

    status, code = 500, "model_error"


#: Exceptions of the layers below -> the API error they mean, most specific first.
DOMAIN_ERRORS: tuple[tuple[type[Exception], type[ApiError]], ...] = (
    (AmbiguousFaceError, AmbiguousFace),
    (NoFaceError, NoFace),
    (ImageLoadError, BadImage),
    (NameError_, InvalidName),
    (SiamfaceError, BadRequest),
)

#: Framework errors (which only carry a status) -> our class for that status.
_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: TooLarge,
    422: InvalidRequest,
    500: Internal,
    503: Busy,
}


def api_error(err: Exception, field: str | None = None, label: str | None = None) -> ApiError:
    """The :class:`ApiError` for an exception raised below the service.

    ``field`` is the form field at fault (``image1``); ``label`` is how the message names it
    (``image1 (photo.jpg)``).
    """
    if isinstance(err, ApiError):
        return err
    for kind, api in DOMAIN_ERRORS:
        if isinstance(err, kind):
            text = str(err) or kind.__doc__ or "error"
            if isinstance(err, ImageLoadError) and not str(err):
                text = "unreadable image"
            text = f"{label}: {text}" if label else text
            if api is AmbiguousFace:
                choice = getattr(err, "choice", None)
                faces = choice.to_dict()["faces"] if choice is not None else []
                return AmbiguousFace(text, field=field, faces=faces)
            return api(text, field=field)
    raise TypeError(f"not a domain error: {err!r}") from err


def _json(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status_code, headers=err.headers)


def _http_error(err: HTTPException) -> ApiError:
    """A framework ``HTTPException`` (or ours) as an :class:`ApiError` of the same status."""
    if isinstance(err, ApiError):
        return err
    kind = _BY_STATUS.get(err.status_code)
    detail = str(err.detail)
    if kind is None or kind is InvalidRequest:
        return _StatusError(err.status_code, detail, err.headers)
    if kind is TooLarge:
        detail = "request too large"
    return kind(detail, headers=err.headers)


class _StatusError(ApiError):
    """A framework status we have no class for (rare: 406, 415 ...): same shape, generic code."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None) -> None:
        super().__init__(detail, headers=headers)
        self.status_code = status

    def body(self) -> dict:
        return {"detail": str(self.detail), "code": f"http_{self.status_code}"}


def _validation_error(err: RequestValidationError) -> InvalidRequest:
    parts, errors, fields = [], [], []
    for e in err.errors():
        loc = [str(x) for x in e.get("loc", ())]
        where = ".".join(x for x in loc if x not in ("body", "query", "path", "header"))
        fields.append(where)
        if e.get("type") == "missing":
            parts.append(f"missing field '{where}'")
        else:
            parts.append(f"{where}: {e.get('msg')}")
        errors.append({"loc": loc, "msg": str(e.get("msg"))})
    detail = "; ".join(parts) or "invalid request"
    if any(e.get("loc", ("",))[0] == "body" for e in err.errors()):
        detail += " (send images as multipart/form-data file fields)"
    return InvalidRequest(detail, errors, field=fields[0] if len(fields) == 1 else None)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the one JSON shape (see the module docstring)."""

    @app.exception_handler(HTTPException)
    async def _http(_: Request, err: HTTPException) -> JSONResponse:
        return _json(_http_error(err))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return _json(_validation_error(err))

    @app.exception_handler(SiamfaceError)
    async def _domain(_: Request, err: SiamfaceError) -> JSONResponse:
        return _json(api_error(err))

    @app.exception_handler(ImageLoadError)
    async def _image(_: Request, err: ImageLoadError) -> JSONResponse:
        return _json(api_error(err))

    app.add_middleware(CrashGuard)


class CrashGuard:
    """ASGI middleware: a bug or a failing model answers the JSON 500 and the connection stays
    usable (Starlette's last-resort handler re-raises, and the server then drops the client's
    keep-alive connection). The traceback goes to the log, never to the client."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            response = _json(
                Internal("internal server error (the details are in the server's log)")
            )
            await response(scope, receive, send)
