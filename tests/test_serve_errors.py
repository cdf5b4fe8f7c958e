"""Every error of the REST service, from a real uvicorn server, has the one JSON shape
``{"detail": str, "code": str, "field"?: str, "errors"?: list}`` with the documented status and
code: our own errors, the framework's (unknown route, wrong method, malformed body, invalid
parameters), both kinds of 413, the pixel budget's 503, and crashes (500, no traceback)."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from test_serve_api import jpeg, running

from siamface.embed.load import create_embedder
from siamface.serve import create_app
from siamface.serve.errors import DOMAIN_ERRORS, ApiError, Busy, api_error
from siamface.serve.limits import PixelBudget

KEY = "k-errors"


def assert_shape(r: httpx.Response, status: int, code: str, field: str | None = None) -> dict:
    """The one error shape, and nothing else (no HTML, no plain text, no traceback)."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) <= {"detail", "code", "field", "errors"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["code"] == code, body
    assert "Traceback" not in body["detail"]
    if field is not None:
        assert body.get("field") == field, body
    return body


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 140, 200)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def onnx_path(tiny_checkpoint, tmp_path_factory):
    from siamface.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("errors") / "tiny.onnx"
    export_onnx(tiny_checkpoint, out, exporter="torchscript")
    return out


@pytest.fixture(scope="module")
def client(onnx_path, tmp_path_factory):
    app = create_app(
        onnx_path,
        tmp_path_factory.mktemp("errors") / "g",
        api_key=KEY,
        max_upload_mb=0.5,
        max_pixels=1_000_000,
    )
    with running(app) as c:
        yield c


def test_framework_errors_use_the_shape(client):
    assert_shape(client.get("/no/such/page"), 404, "not_found")
    assert_shape(client.put("/verify"), 405, "method_not_allowed")
    r = client.post(
        "/embed",
        content=b"--x\r\nthis is not multipart at all",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    body = assert_shape(r, 400, "bad_request")
    assert "multipart" in body["detail"].lower()


def test_invalid_requests_name_the_field(client):
    body = assert_shape(client.post("/verify", files={"image1": ("a.jpg", jpeg(1))}), 422,
                        "invalid_request", field="image2")  # fmt: skip
    assert body["errors"] == [{"loc": ["body", "image2"], "msg": "Field required"}]
    r = client.post("/identify", params={"top_k": 0}, files={"image": ("a.jpg", jpeg(1))})
    assert_shape(r, 422, "invalid_request", field="top_k")
    r = client.post("/verify", params={"threshold": 3}, files={"image1": ("a", jpeg(1))})
    body = assert_shape(r, 422, "invalid_request")
    # image2 is optional in the schema (a claimed `person` replaces it): the framework
    # reports the bad threshold first
    assert "threshold" in body["detail"] and body["field"] == "threshold"


def test_both_413s_are_json(client):
    big = jpeg(5, size=(1200, 1000)) + b"\0" * 600_000  # > 0.5 MB, with a Content-Length
    body = assert_shape(client.post("/embed", files={"image": ("big.jpg", big)}), 413, "too_large")
    assert body["detail"] == "too large (limit 0.5 MB)"

    def chunks():  # no Content-Length: counted while it streams
        yield b"--x\r\nContent-Disposition: form-data; name=image; filename=a.jpg\r\n\r\n"
        for _ in range(20):
            yield b"\0" * 50_000

    r = client.post(
        "/embed", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=x"}
    )
    assert_shape(r, 413, "too_large")
    assert client.get("/health").status_code == 200


def test_image_errors_name_the_upload(client):
    r = client.post("/verify", files={"image1": ("a.jpg", jpeg(1)), "image2": ("n.txt", b"hi")})
    body = assert_shape(r, 400, "bad_image", field="image2")
    assert "image2 (n.txt)" in body["detail"]
    r = client.post("/embed", files={"image": ("e.jpg", b"")})
    assert "empty" in assert_shape(r, 400, "bad_image", field="image")["detail"]
    # a small file that declares too many pixels is refused from its header
    r = client.post("/embed", files={"image": ("wide.png", png(2000, 1000))})
    body = assert_shape(r, 413, "image_too_large", field="image")
    assert "2.0 megapixels, limit 1" in body["detail"]
    files = [("images", ("ok.jpg", jpeg(2))), ("images", ("bad.jpg", b"GIF89a broken"))]
    r = client.post("/gallery/people", data={"name": "X"}, files=files, headers={"X-API-Key": KEY})
    assert_shape(r, 400, "bad_image", field="images[1]")


def test_gallery_errors(client):
    files = [("images", ("a.jpg", jpeg(40)))]
    assert_shape(client.post("/gallery/people", data={"name": "Eve"}, files=files), 401,
                 "missing_api_key")  # fmt: skip
    r = client.post("/gallery/people", data={"name": "Eve"}, files=files,
                    headers={"X-API-Key": "no"})  # fmt: skip
    assert_shape(r, 403, "wrong_api_key")
    r = client.post("/gallery/people", data={"name": "Eve", "metadata": "[1]"}, files=files,
                    headers={"X-API-Key": KEY})  # fmt: skip
    assert_shape(r, 400, "bad_request", field="metadata")
    ok = client.post("/gallery/people", data={"name": "Eve"}, files=files,
                     headers={"X-API-Key": KEY})  # fmt: skip
    assert ok.status_code == 201
    again = client.post("/gallery/people", data={"name": "Eve"}, files=files,
                        headers={"X-API-Key": KEY})  # fmt: skip
    assert_shape(again, 409, "already_enrolled", field="name")
    assert_shape(client.get("/gallery/people/Nobody"), 404, "not_enrolled")
    assert_shape(client.delete("/gallery/people/Nobody", headers={"X-API-Key": KEY}), 404,
                 "not_enrolled")  # fmt: skip
    assert_shape(client.get("/gallery/thumbnails/Nobody"), 404, "not_enrolled")
    assert_shape(client.get("/report/roc.png"), 404, "no_report")


class _Broken:
    """A real model whose calls fail or return NaN: what a damaged file does to a server."""

    def __init__(self, inner, mode: str) -> None:
        self._inner, self._mode = inner, mode

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        out = self._inner.embed_batch(pixels)
        if self._mode == "crash":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return out * np.nan


@pytest.mark.parametrize("mode,status,code", [("crash", 500, "internal_error"),
                                              ("nan", 500, "model_error")])  # fmt: skip
def test_model_failures_are_json_500s(onnx_path, mode, status, code):
    inner = create_embedder(onnx_path)
    broken = _Broken(inner, mode)
    app = create_app(inner)
    app.state.service.embedder = broken
    app.state.service.batcher.embed_batch = broken.embed_batch
    with running(app) as c:
        r = c.post("/verify", files={"image1": ("a.jpg", jpeg(1)), "image2": ("b.jpg", jpeg(2))})
        body = assert_shape(r, status, code)
        assert "illegal memory" not in body["detail"]  # internals stay in the server's log
        assert c.get("/health").status_code == 200


class _GatedFaces:
    """The ONNX model with a face step that holds its decode slot until the test lets it go,
    so that overlapping decodes are arranged by events, never by sleeps beating a hold."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def locate(self, img, pick=None, ambiguous="pick"):
        self.entered.set()
        assert self.release.wait(30), "the test never released the face step"
        return self._inner.locate(img, pick=pick, ambiguous=ambiguous)


async def _until(cond, what: str, limit_s: float = 30.0) -> None:
    """Wait for a condition another thread makes true (a state, not a time, decides)."""
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def test_pixel_budget_queues_then_answers_busy(onnx_path):
    """With room for one image's pixels, a second upload waits for the first decode and is
    then answered (200); one that cannot start within the wait limit gets 503 busy (with
    Retry-After), and the decode it waited for still answers 200."""
    inner = create_embedder(onnx_path)
    app = create_app(inner, max_pixels_in_flight=100 * 100, decode_wait_s=30.0)
    svc = app.state.service
    image = png(100, 100)
    with running(app) as c:
        base = str(c.base_url)

        async def pair(wait_s: float, settle) -> tuple[httpx.Response, httpx.Response]:
            """Upload A and hold its decode; upload B; release A once ``settle`` holds."""
            gate = svc.embedder = _GatedFaces(inner)
            svc.budget.max_wait_s = wait_s
            async with httpx.AsyncClient(base_url=base, timeout=60) as ac:
                a = asyncio.create_task(ac.post("/embed", files={"image": ("a.png", image)}))
                assert await asyncio.to_thread(gate.entered.wait, 30), "A never decoded"
                b = asyncio.create_task(ac.post("/embed", files={"image": ("b.png", image)}))
                await settle(b)
                gate.release.set()
                return await a, await b

        waits = svc.budget.waits
        queued = asyncio.run(
            pair(30.0, lambda _: _until(lambda: svc.budget.waits > waits, "B to queue"))
        )
        assert [r.status_code for r in queued] == [200, 200]
        refused = asyncio.run(pair(0.05, lambda b: asyncio.wait({b})))  # B gives up first
        limits = c.get("/health").json()["limits"]
    assert [r.status_code for r in refused] == [200, 503]
    assert_shape(refused[1], 503, "busy")
    assert refused[1].headers["retry-after"] == "2"
    assert limits["peak_pixels_in_flight"] == 100 * 100  # never two decodes at once
    assert limits["decodes_refused_busy"] == 1 and limits["decodes_waited"] == 2
    assert limits["pixels_in_flight"] == 0


def test_pixel_budget_is_fifo_and_releases_on_cancel():
    order: list[int] = []

    async def scenario():
        budget = PixelBudget(10, max_wait_s=5)
        hold = asyncio.Event()

        async def job(i: int, n: int, gate: asyncio.Event | None = None) -> None:
            async with budget.reserve(n):
                order.append(i)
                assert budget.in_use <= 10 or budget.in_use == n
                if gate is not None:
                    await gate.wait()

        first = asyncio.create_task(job(0, 8, hold))
        await _until(lambda: order == [0], "the first job to start")
        waiting = asyncio.create_task(job(9, 8))  # will be cancelled while queued
        await _until(lambda: budget.waits == 1, "job 9 to queue")
        rest = [asyncio.create_task(job(i, 5)) for i in (1, 2, 3)]
        await _until(lambda: budget.waits == 4, "jobs 1-3 to queue behind it")
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        hold.set()
        await asyncio.gather(first, *rest)
        big = asyncio.create_task(job(4, 50))  # larger than the whole budget: runs alone
        await big
        return budget

    budget = asyncio.run(scenario())
    assert order == [0, 1, 2, 3, 4]
    assert budget.in_use == 0 and budget.peak == 50 and not budget._queue


def test_busy_is_raised_after_the_wait():
    async def scenario():
        budget = PixelBudget(10, max_wait_s=0.05)
        async with budget.reserve(10):
            with pytest.raises(Busy):
                async with budget.reserve(1):
                    pass
        return budget

    budget = asyncio.run(scenario())
    assert budget.refused == 1 and budget.in_use == 0


def test_domain_errors_map_by_type_not_by_text():
    from siamface.errors import SiamfaceError
    from siamface.faces.errors import NoFaceError
    from siamface.folders.images import ImageLoadError

    # same message, different types -> different answers
    assert api_error(NoFaceError("x")).code == "no_face"
    assert api_error(ImageLoadError("x")).code == "bad_image"
    assert api_error(SiamfaceError("x")).code == "bad_request"
    err = api_error(ImageLoadError(""), field="image1", label="image1 (a.jpg)")
    assert err.body() == {
        "detail": "image1 (a.jpg): unreadable image",
        "code": "bad_image",
        "field": "image1",
    }
    assert all(issubclass(api, ApiError) for _, api in DOMAIN_ERRORS)
    codes = {cls.code for cls in _all_subclasses(ApiError) if "code" in cls.__dict__}
    assert len(codes) == len([c for c in _all_subclasses(ApiError) if "code" in c.__dict__])


def _all_subclasses(cls):
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


def test_oversized_uploads_always_get_the_answer(client):
    """The 413 is sent after the unread body is drained: closing a connection with unread
    bytes resets it, and a client could lose the answer ('peer closed connection', seen once
    in a full run). The loss depends on timing, so this repeats the case rather than forcing
    it."""
    big = b"\xff\xd8" + bytes(16 * 2**20)  # 16 MB against a 0.5 MB limit
    for _ in range(12):
        with httpx.Client(base_url=str(client.base_url), timeout=30) as fresh:
            r = fresh.post("/verify", files={"image1": ("a.jpg", b"x"), "image2": ("b.jpg", big)})
        assert_shape(r, 413, "too_large")
