"""The REST service against a real uvicorn server on 127.0.0.1 with a real HTTP client:
verify / embed / identify / gallery / health, bad uploads, API keys, size limits, batching."""

from __future__ import annotations

import asyncio
import io
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from siamface.embed.load import create_embedder
from siamface.export.onnx_export import export_onnx
from siamface.folders.images import load_rgb
from siamface.serve import create_app
from siamface.serve.batcher import MicroBatcher

KEY = "test-key-123"


@contextmanager
def running(app) -> Iterator[httpx.Client]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yield a client."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):  # bounded wait for startup (<= 10 s)
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def jpeg(seed: int, size=(90, 80)) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def onnx_model(tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "tiny.onnx"
    export_onnx(tiny_checkpoint, out, exporter="torchscript")
    return out


@pytest.fixture(scope="module")
def client(onnx_model, tmp_path_factory) -> Iterator[httpx.Client]:
    gallery = tmp_path_factory.mktemp("serve") / "gallery"
    app = create_app(onnx_model, gallery, api_key=KEY, max_upload_mb=0.5)
    with running(app) as c:
        yield c


@pytest.fixture(scope="module")
def local(onnx_model):
    """The same model in-process, to check the server's numbers."""
    return create_embedder(onnx_model)


def local_embedding(model, data: bytes) -> np.ndarray:
    from siamface.folders.images import decode_rgb

    return model.embed_images([decode_rgb(data)])[0]


# -- happy paths ---------------------------------------------------------------------------
def test_health_describes_model_and_gallery(client, local):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["writes_enabled"] is True
    assert body["model"]["fingerprint"] == local.fingerprint
    assert body["model"]["backend"] == "onnxruntime" and body["model"]["embedding_size"] == 32
    assert body["gallery"]["fingerprint"] == local.fingerprint
    assert body["limits"]["max_upload_mb"] == 0.5


def test_verify_matches_local_computation(client, local):
    a, b = jpeg(1), jpeg(2)
    r = client.post("/verify", files={"image1": ("a.jpg", a), "image2": ("b.jpg", b)})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = float(local_embedding(local, a) @ local_embedding(local, b))
    assert body["similarity"] == pytest.approx(expected, abs=1e-5)
    assert body["threshold"] == 0.5 and body["same"] == (expected >= 0.5)
    assert body["threshold_source"].startswith("checkpoint") and body["model"] == local.fingerprint
    # a threshold override above the similarity flips the decision
    thr = min(1.0, expected + 1e-3)
    r = client.post(
        "/verify",
        params={"threshold": thr},
        files={"image1": ("a.jpg", a), "image2": ("b.jpg", b)},
    )
    assert r.json()["same"] is False and r.json()["threshold_source"] == "given"


def test_embed_returns_the_unit_embedding(client, local):
    data = jpeg(3)
    r = client.post("/embed", files={"image": ("c.jpg", data, "image/jpeg")})
    assert r.status_code == 200
    emb = np.array(r.json()["embedding"], dtype=np.float32)
    assert r.json()["dim"] == 32 and abs(np.linalg.norm(emb) - 1) < 1e-4
    np.testing.assert_allclose(emb, local_embedding(local, data), atol=1e-5)


def test_gallery_enroll_identify_list_remove(client, local):
    alice = [jpeg(10), jpeg(11)]
    files = [("images", (f"alice{i}.jpg", d, "image/jpeg")) for i, d in enumerate(alice)]
    r = client.post(
        "/gallery/people",
        data={"name": "Alice Smith", "metadata": '{"team": "red"}'},
        files=files,
        headers={"X-API-Key": KEY},
    )
    assert r.status_code == 201, r.text
    assert r.json()["person"]["n_images"] == 2
    assert r.json()["person"]["metadata"] == {"team": "red"}
    # the same name again is a conflict, unless appending
    r = client.post(
        "/gallery/people", data={"name": "Alice Smith"}, files=files[:1], headers={"X-API-Key": KEY}
    )
    assert r.status_code == 409 and r.json()["code"] == "already_enrolled"
    r = client.post(
        "/gallery/people",
        data={"name": "Alice Smith", "append": "true"},
        files=[("images", ("x.jpg", jpeg(12)))],
        headers={"X-API-Key": KEY},
    )
    assert r.status_code == 201 and r.json()["person"]["n_images"] == 3

    r = client.get("/gallery/people")
    assert r.status_code == 200
    assert [p["name"] for p in r.json()["people"]] == ["Alice Smith"]
    # the thumbnail is the face the model saw in the first enrolled image
    thumb_url = r.json()["people"][0]["thumbnail"]
    assert thumb_url == "/gallery/thumbnails/Alice%20Smith"
    t = client.get(thumb_url)
    assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg"
    from siamface.folders.images import decode_rgb

    thumb = np.asarray(Image.open(io.BytesIO(t.content))).astype(int)
    faces = [local.face_array(decode_rgb(d)).astype(int) for d in alice]
    assert thumb.shape == faces[0].shape == (64, 64, 3)
    assert np.abs(thumb - faces[0]).mean() < 0.5 * np.abs(thumb - faces[1]).mean()
    assert client.get("/gallery/people/Alice Smith").json()["n_images"] == 3

    r = client.post("/identify", params={"top_k": 3}, files={"image": ("q.jpg", alice[0])})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["matches"][0]["name"] == "Alice Smith"
    assert body["identity"] == ("Alice Smith" if body["score"] >= 0.5 else "unknown")
    # a threshold above every score makes the probe a stranger
    r = client.post("/identify", params={"threshold": 1.0}, files={"image": ("q.jpg", jpeg(99))})
    assert r.json()["identity"] == "unknown" and r.json()["known"] is False

    r = client.delete("/gallery/people/Alice Smith", headers={"X-API-Key": KEY})
    assert r.status_code == 200 and r.json() == {"removed": "Alice Smith"}
    r = client.delete("/gallery/people/Alice Smith", headers={"X-API-Key": KEY})
    assert r.status_code == 404 and r.json()["code"] == "not_enrolled"
    assert client.get("/gallery/people/Alice Smith").status_code == 404
    assert client.get("/gallery/people").json()["count"] == 0


def test_openapi_docs(client):
    spec = client.get("/openapi.json").json()
    for path in ("/verify", "/embed", "/identify", "/gallery/people", "/health"):
        assert path in spec["paths"], path
    assert "APIKeyHeader" in spec["components"]["securitySchemes"]
    assert client.get("/docs").status_code == 200


# -- bad requests ------------------------------------------------------------------------
def test_not_an_image_is_a_400_naming_the_field(client):
    r = client.post(
        "/verify", files={"image1": ("a.jpg", jpeg(1)), "image2": ("notes.txt", b"hello")}
    )
    assert r.status_code == 400
    assert r.json()["code"] == "bad_image" and "image2 (notes.txt)" in r.json()["detail"]
    r = client.post("/embed", files={"image": ("cut.jpg", jpeg(1)[:200])})  # truncated
    assert r.status_code == 400 and r.json()["code"] == "bad_image"
    r = client.post("/embed", files={"image": ("empty.jpg", b"")})
    assert r.status_code == 400 and "empty" in r.json()["detail"]


def test_missing_field_is_a_422_naming_it(client):
    r = client.post("/verify", files={"image1": ("a.jpg", jpeg(1))})
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_request" and "image2" in r.json()["detail"]
    r = client.post("/embed", json={"image": "base64?"})
    assert r.status_code == 422 and "image" in r.json()["detail"]
    r = client.post("/identify", params={"top_k": 0}, files={"image": ("a.jpg", jpeg(1))})
    assert r.status_code == 422 and "top_k" in r.json()["detail"]
    assert "multipart" not in r.json()["detail"]  # the hint is for missing uploads only


def test_too_large_upload_is_a_413(client):
    big = jpeg(5, size=(1200, 1000)) + b"\0" * 600_000  # > 0.5 MB limit
    r = client.post("/embed", files={"image": ("big.jpg", big)})
    assert r.status_code == 413

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b"--x\r\nContent-Disposition: form-data; name=image; filename=a.jpg\r\n\r\n"
        for _ in range(20):
            yield b"\0" * 50_000

    r = client.post(
        "/embed", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=x"}
    )
    assert r.status_code == 413
    assert client.get("/health").status_code == 200  # the server is fine afterwards


def test_writes_need_the_right_key(client):
    files = [("images", ("a.jpg", jpeg(20)))]
    r = client.post("/gallery/people", data={"name": "Eve"}, files=files)
    assert r.status_code == 401 and r.json()["code"] == "missing_api_key"
    r = client.post(
        "/gallery/people", data={"name": "Eve"}, files=files, headers={"X-API-Key": "wrong"}
    )
    assert r.status_code == 403 and r.json()["code"] == "wrong_api_key"
    r = client.delete("/gallery/people/Eve", headers={"X-API-Key": "wrong"})
    assert r.status_code == 403
    assert client.get("/gallery/people").json()["count"] == 0  # nothing was written


def test_bad_image_in_enrollment_enrolls_nothing(client):
    files = [("images", ("ok.jpg", jpeg(30))), ("images", ("bad.jpg", b"GIF89a broken"))]
    r = client.post(
        "/gallery/people", data={"name": "Bob"}, files=files, headers={"X-API-Key": KEY}
    )
    assert r.status_code == 400 and "images[1] (bad.jpg)" in r.json()["detail"]
    r = client.post(
        "/gallery/people",
        data={"name": "Bob", "metadata": "[1, 2]"},
        files=files[:1],
        headers={"X-API-Key": KEY},
    )
    assert r.status_code == 400 and "JSON object" in r.json()["detail"]
    assert client.get("/gallery/people/Bob").status_code == 404


def test_server_without_key_or_gallery(onnx_model):
    with running(create_app(onnx_model)) as c:
        r = c.post("/identify", files={"image": ("a.jpg", jpeg(1))})
        assert r.status_code == 404 and r.json()["code"] == "no_gallery"
        r = c.post(
            "/gallery/people",
            data={"name": "Eve"},
            files=[("images", ("a.jpg", jpeg(1)))],
            headers={"X-API-Key": "anything"},
        )
        assert r.status_code == 403 and r.json()["code"] == "writes_disabled"
        assert c.get("/health").json()["writes_enabled"] is False


def test_no_face_is_a_422(tmp_path, pins_small):
    """Aligned models detect the face first; a photo without one is rejected clearly."""
    pytest.importorskip("yuface")
    import torch

    from siamface.model.checkpoint import Checkpoint, save_checkpoint
    from siamface.model.network import ModelConfig, build_model
    from siamface.tensors.transforms import Preprocessing

    torch.manual_seed(0)
    cfg = ModelConfig(backbone="test_efficientnet", embedding_size=16)
    ckpt = Checkpoint(
        cfg,
        Preprocessing(image_size=64, aligned=True),
        build_model(cfg).state_dict(),
        threshold={"value": 0.3},
    )
    path = save_checkpoint(ckpt, tmp_path / "aligned.safetensors")
    face = next(pins_small.rglob("*.jpg")).read_bytes()
    with running(create_app(path, device="cpu")) as c:
        blank = io.BytesIO()
        Image.new("RGB", (240, 200), (120, 160, 200)).save(blank, "PNG")
        r = c.post("/embed", files={"image": ("sky.png", blank.getvalue())})
        assert r.status_code == 422 and r.json()["code"] == "no_face"
        assert "no face" in r.json()["detail"]
        r = c.post("/embed", files={"image": ("face.jpg", face)})
        assert r.status_code == 200, r.text


# -- batching ------------------------------------------------------------------------------
def test_concurrent_requests_share_batches_and_get_their_own_rows(onnx_model, local):
    images = [jpeg(100 + i) for i in range(12)]
    expected = [local_embedding(local, d) for d in images]
    # a long window: grouping is certain
    app = create_app(onnx_model, batching="on", max_wait_ms=150)
    with running(app) as c:
        base = str(c.base_url)

        async def fire():
            async with httpx.AsyncClient(base_url=base, timeout=30) as ac:
                return await asyncio.gather(
                    *(
                        ac.post("/embed", files={"image": (f"{i}.jpg", d)})
                        for i, d in enumerate(images)
                    )
                )

        responses = asyncio.run(fire())
        stats = c.get("/health").json()["batching"]
    for r, want in zip(responses, expected, strict=True):
        assert r.status_code == 200
        np.testing.assert_allclose(np.array(r.json()["embedding"]), want, atol=1e-5)
    assert stats["requests"] == 12 and stats["images"] == 12
    assert stats["batches"] < 12 and stats["largest_batch_images"] > 1


def test_batcher_groups_caps_and_propagates_errors():
    calls: list[int] = []

    def embed_batch(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        if (x == 255).any():
            raise RuntimeError("model exploded")
        return x.reshape(len(x), -1)[:, :2].astype(np.float32)

    async def scenario():
        b = MicroBatcher(embed_batch, max_batch=4, max_wait_ms=50)
        await b.start()
        try:
            jobs = [np.full((1, 3, 2, 2), i, np.uint8) for i in range(6)]
            out = await asyncio.gather(*(b.embed(j) for j in jobs))
            bad = await asyncio.gather(
                b.embed(np.full((1, 3, 2, 2), 255, np.uint8)),
                b.embed(np.zeros((2, 3, 2, 2), np.uint8)),
                return_exceptions=True,
            )
            return out, bad, b.stats
        finally:
            await b.stop()

    out, bad, stats = asyncio.run(scenario())
    assert [float(o[0, 0]) for o in out] == [0, 1, 2, 3, 4, 5]  # each caller gets its own row
    assert calls[:2] == [4, 2]  # grouped, never more than max_batch
    assert all(isinstance(e, RuntimeError) for e in bad)  # everyone in a failed batch hears
    assert stats.requests == 6 and stats.batches == 2


# -- the command ---------------------------------------------------------------------------
def test_serve_command_starts_and_answers(onnx_model, tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "siamface.cli.main",
            "serve",
            "--model",
            str(onnx_model),
            "--port",
            "0",
            "--log-level",
            "warning",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # "siamface serve: ... on http://127.0.0.1:PORT ..."
        assert "on http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split(" on ")[1].split()[0]
        for _ in range(100):  # bounded: <= 10 s
            try:
                r = httpx.get(f"{url}/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["model"]["backend"] == "onnxruntime"
        assert "gallery writes disabled" in line
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_serve_command_errors(onnx_model, tmp_path):
    from siamface.cli.main import main

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        assert main(["serve", "--model", str(onnx_model), "--port", str(port)]) == 2
    finally:
        busy.close()
    assert main(["serve", "--model", str(tmp_path / "nope.onnx")]) == 2
    assert main(["serve", "--model", str(onnx_model), "--max-upload-mb", "0"]) == 2


def test_gallery_of_another_model_is_refused(onnx_model, tmp_path):
    from siamface.errors import SiamfaceError
    from siamface.gallery import Gallery

    Gallery.create(tmp_path / "g", fingerprint="0" * 16, embedding_size=32).close()
    with pytest.raises(SiamfaceError, match="built with model"):
        create_app(onnx_model, tmp_path / "g")


def test_uploads_decode_like_files(tmp_path, local):
    """An upload and the same file on disk give the same face (EXIF, modes handled alike)."""
    img = Image.new("L", (70, 50), 90)
    img.paste(200, (10, 10, 30, 40))
    p = tmp_path / "gray.png"
    img.save(p)
    from siamface.folders.images import decode_rgb

    a = local.face_array(decode_rgb(p.read_bytes()))
    b = local.face_array(load_rgb(p))
    assert a.shape == (64, 64, 3) and (a == b).all()


def test_batcher_runs_up_to_max_inflight_calls_at_once():
    active, peak = [0], [0]
    lock = threading.Lock()

    def slow(x: np.ndarray) -> np.ndarray:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        return np.zeros((len(x), 2), np.float32)

    async def scenario(inflight: int) -> None:
        b = MicroBatcher(slow, max_batch=1, max_wait_ms=0, max_inflight=inflight)
        await b.start()
        try:
            await asyncio.gather(*(b.embed(np.zeros((1, 3, 2, 2), np.uint8)) for _ in range(4)))
        finally:
            await b.stop()

    asyncio.run(scenario(1))
    assert peak[0] == 1
    peak[0] = 0
    asyncio.run(scenario(2))
    assert peak[0] == 2


def test_faces_the_model_saw_come_back_on_request(client, local):
    """``?faces=true``: the crops the model embedded, as JPEG data URLs (what the page shows)."""
    import base64

    from siamface.folders.images import decode_rgb

    a, b = jpeg(61, size=(130, 90)), jpeg(62)
    files = {"image1": ("a.jpg", a), "image2": ("b.jpg", b)}
    assert client.post("/verify", files=files).json()["faces"] is None
    body = client.post("/verify", params={"faces": "true"}, files=files).json()
    assert body["probability"] is None  # this model has no pair head
    crops = [local.face_array(decode_rgb(d)).astype(int) for d in (a, b)]
    for i, url in enumerate(body["faces"]):
        assert url.startswith("data:image/jpeg;base64,")
        shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
        assert shown.shape == crops[i].shape == (64, 64, 3)
        # this crop (JPEG-compressed), not the other one
        assert np.abs(shown - crops[i]).mean() < 0.5 * np.abs(shown - crops[1 - i]).mean()
    r = client.post("/identify", params={"faces": "true"}, files={"image": ("q.jpg", a)})
    assert r.json()["face"].startswith("data:image/jpeg;base64,")
