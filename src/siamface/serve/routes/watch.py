"""The Watch tab's endpoints (``siamface serve --watch SOURCE``): the annotated live frames as
an MJPEG stream, the latest frame as one JPEG, and the watch's events."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from siamface.serve.errors import ApiError
from siamface.serve.routes.deps import get_service
from siamface.serve.service import Service

router = APIRouter(prefix="/watch", tags=["watch"])
BOUNDARY = "siamfaceframe"


class NoWatch(ApiError):
    status = 404
    code = "no_watch"


def _feed(svc: Service):
    feed = getattr(svc, "watch", None)
    if feed is None:
        raise NoWatch("this server watches no video (start it with --watch SOURCE)")
    return feed


@router.get("/events")
async def events(svc: Service = Depends(get_service)) -> dict:
    """Source, state (running, ended, error), frames shown, the last 200 events and the
    summary once the source ended."""
    return _feed(svc).status()


@router.get("/frame.jpg", responses={200: {"content": {"image/jpeg": {}}}})
async def frame(svc: Service = Depends(get_service)) -> Response:
    """The latest frame with boxes and names (204 before the first frame)."""
    _, data = _feed(svc).latest()
    if data is None:
        return Response(status_code=204)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


@router.get("/stream", responses={200: {"content": {"multipart/x-mixed-replace": {}}}})
async def stream(request: Request, svc: Service = Depends(get_service)) -> StreamingResponse:
    """MJPEG: each new annotated frame as one part of a multipart/x-mixed-replace response."""
    feed = _feed(svc)

    async def parts():
        seq = -1
        while not await request.is_disconnected():
            new, data = await asyncio.to_thread(feed.wait_newer, seq, 1.0)
            if data is None or new == seq:
                if feed.state.ended:  # nothing new will come; keep the connection, idle
                    await asyncio.sleep(1.0)
                continue
            seq = new
            head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
            yield f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data + b"\r\n"

    return StreamingResponse(
        parts(),
        media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
        headers={"Cache-Control": "no-store"},
    )
