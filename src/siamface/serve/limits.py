"""Resource limits of the service: request bytes and decoded pixels in flight.

Two numbers bound what one client can make the server hold. The request body is capped in
bytes before it is read (:class:`BodyLimit`). That is not enough: a 105 KB PNG can declare
6000 x 6000 pixels and decode to 108 MB, so 16 of them at once took the server from 0.8 to
5 GB, and glibc kept most of it afterwards. :class:`PixelBudget` therefore admits an image
to decoding only while the pixels being decoded stay under a budget (the image's size is read
from its header first, which costs nothing); the others wait their turn in arrival order, and
a request that cannot start within ``max_wait_s`` is answered 503 ``busy``. When the last
large decode finishes, freed heap memory is handed back to the system (``malloc_trim``), so
the footprint returns to its idle size instead of staying at the high-water mark.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from siamface.serve.errors import Busy, TooLarge


def too_large_message(max_bytes: int) -> str:
    return f"too large (limit {max_bytes / 2**20:g} MB)"


#: An oversized body up to this size is read and thrown away before the 413 goes out: closing
#: a connection with unread request bytes makes the client's TCP stack drop the answer (RST),
#: so the client would see "connection reset" instead of the JSON 413. Larger bodies are cut.
DRAIN_LIMIT = 64 * 2**20


async def _drain(receive: Receive, budget: int) -> None:
    """Read and discard the rest of a request body (at most ``budget`` bytes)."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class BodyLimit:
    """ASGI middleware: refuse request bodies above ``max_bytes`` with the JSON 413.

    A declared ``Content-Length`` above the limit is answered without passing anything to the
    app (after discarding the body, up to :data:`DRAIN_LIMIT`, unless the client waits for
    ``100 Continue`` and so has not sent it); a chunked body is counted while it streams and
    stopped as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            if declared <= DRAIN_LIMIT and not _expects_continue(scope):
                await _drain(receive, declared)
            err = TooLarge(too_large_message(self.max_bytes))
            body = json.dumps(err.body()).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": err.status_code,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if message.get("more_body", False):
                        await _drain(receive, DRAIN_LIMIT - seen)
                    raise TooLarge(too_large_message(self.max_bytes))
            return message

        await self.app(scope, counted, send)


def _expects_continue(scope: Scope) -> bool:
    return any(k == b"expect" and v.lower() == b"100-continue" for k, v in scope.get("headers", ()))


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class PixelBudget:
    """Admit image decodes while the pixels being decoded stay within ``limit`` (FIFO).

    One image larger than the whole budget still runs, alone (the per-image limit is checked
    elsewhere). ``peak`` and ``waits`` are reported on /health.
    """

    def __init__(self, limit: int, max_wait_s: float = 30.0, trim_above: int = 4_000_000):
        if limit < 1:
            raise ValueError("the pixel budget must be positive")
        self.limit = limit
        self.max_wait_s = max_wait_s
        self.trim_above = trim_above
        self.in_use = 0
        self.peak = 0
        self.waits = 0
        self.refused = 0
        self._big_since_trim = False
        self._queue: deque[tuple[int, asyncio.Future]] = deque()

    def _fits(self, n: int) -> bool:
        return self.in_use == 0 or self.in_use + n <= self.limit

    @asynccontextmanager
    async def reserve(self, pixels: int) -> AsyncIterator[None]:
        """Hold ``pixels`` of the budget for the duration of the block."""
        n = max(1, int(pixels))
        if self._queue or not self._fits(n):
            self.waits += 1
            fut = asyncio.get_running_loop().create_future()
            entry = (n, fut)
            self._queue.append(entry)
            try:
                await asyncio.wait_for(asyncio.shield(fut), self.max_wait_s)
            except TimeoutError:
                if fut.done() and not fut.cancelled():  # granted just as the wait ran out
                    self._release(n)
                else:
                    self._queue.remove(entry)
                    fut.cancel()
                    self._grant()
                self.refused += 1
                raise Busy(
                    "the server is busy decoding other large images; try again in a moment",
                    headers={"Retry-After": "2"},
                ) from None
            except asyncio.CancelledError:  # the client went away while waiting
                if fut.done() and not fut.cancelled():
                    self._release(n)
                elif entry in self._queue:
                    self._queue.remove(entry)
                    self._grant()
                raise
        else:
            self.in_use += n
        self.peak = max(self.peak, self.in_use)
        if n >= self.trim_above:
            self._big_since_trim = True
        try:
            yield
        finally:
            self._release(n)

    def _release(self, n: int) -> None:
        self.in_use -= n
        self._grant()
        if self.in_use == 0 and not self._queue and self._big_since_trim:
            self._big_since_trim = False
            release_free_memory()

    def _grant(self) -> None:
        """Start waiting decodes in arrival order while they fit."""
        while self._queue and self._fits(self._queue[0][0]):
            n, fut = self._queue.popleft()
            if fut.cancelled():
                continue
            self.in_use += n
            fut.set_result(None)

    def to_dict(self) -> dict:
        return {
            "max_pixels_in_flight": self.limit,
            "pixels_in_flight": self.in_use,
            "peak_pixels_in_flight": self.peak,
            "decodes_waited": self.waits,
            "decodes_refused_busy": self.refused,
        }


_libc = None


def release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise; no-op elsewhere)."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
    if _libc and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)
