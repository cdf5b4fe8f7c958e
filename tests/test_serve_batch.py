"""Batch endpoints of the REST service against a real uvicorn server: many photos per request,
multipart or JSON/base64, per-photo errors, limits, and the same numbers as the single-photo
endpoints."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from test_serve_api import KEY, jpeg, running

from siamface.serve.routes.batch import MAX_BATCH_ITEMS


@pytest.fixture(scope="module")
def client(tiny_checkpoint, tmp_path_factory):
    from siamface.serve import create_app

    app = create_app(tiny_checkpoint, tmp_path_factory.mktemp("batch") / "g", api_key=KEY)
    with running(app) as c:
        for name, seed in (("Ada", 1), ("Bob", 2)):
            r = c.post(
                "/gallery/people",
                data={"name": name},
                files={"images": ("a.jpg", jpeg(seed))},
                headers={"X-API-Key": KEY},
            )
            assert r.status_code == 201, r.text
        yield c


def _single(c, seed: int) -> np.ndarray:
    r = c.post("/embed", files={"image": ("a.jpg", jpeg(seed))})
    assert r.status_code == 200
    return np.array(r.json()["embedding"])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_embed_batch_multipart_and_json_match_single_calls(client):
    photos = [jpeg(1), jpeg(2), b"GIF89a broken", jpeg(3)]
    r = client.post(
        "/embed/batch", files=[("images", (f"{i}.jpg", p)) for i, p in enumerate(photos)]
    )
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["index"] for x in res] == [0, 1, 2, 3]
    assert res[2]["error"]["code"] == "bad_image" and res[2]["embedding"] is None
    assert "images[2]" in res[2]["error"]["detail"]
    for i, seed in ((0, 1), (1, 2), (3, 3)):
        np.testing.assert_allclose(res[i]["embedding"], _single(client, seed), atol=1e-5)
    as_json = [_b64(p) for p in photos]
    as_json[1] = "data:image/jpeg;base64," + as_json[1]  # a data URL works too
    j = client.post("/embed/batch", json={"images": as_json}).json()["results"]
    for a, b in zip(res, j, strict=True):
        assert (a["embedding"] is None) == (b["embedding"] is None)
        if a["embedding"] is not None:
            np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-6)


def test_verify_batch_pairs_match_single_verify(client):
    pairs = [(1, 1), (1, 2), (2, 3)]
    body = {
        "image1": [_b64(jpeg(a)) for a, _ in pairs],
        "image2": [_b64(jpeg(b)) for _, b in pairs],
    }
    r = client.post("/verify/batch", json=body)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    for (a, b), x in zip(pairs, res, strict=True):
        one = client.post(
            "/verify", files={"image1": ("a.jpg", jpeg(a)), "image2": ("b.jpg", jpeg(b))}
        ).json()
        assert x["similarity"] == pytest.approx(one["similarity"], abs=1e-5)
        assert x["same"] == one["same"] and x["threshold"] == one["threshold"]
    body["image2"] = body["image2"][:2]
    r = client.post("/verify/batch", json=body)
    assert r.status_code == 422 and "pairs" in r.json()["detail"]
    bad = {"image1": [_b64(jpeg(1))], "image2": [_b64(b"not an image")]}
    x = client.post("/verify/batch", json=bad).json()["results"][0]
    assert x["error"]["code"] == "bad_image" and x["error"]["field"] == "image2[0]"


def test_identify_batch_answers_per_photo_with_a_faces_list(client):
    photos = [jpeg(2), jpeg(1), b"junk"]
    r = client.post("/identify/batch?top_k=2", json={"images": [_b64(p) for p in photos]})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    for seed, x in ((2, res[0]), (1, res[1])):
        one = client.post("/identify?top_k=2", files={"image": ("a.jpg", jpeg(seed))}).json()
        assert x["identity"] == one["identity"] and x["score"] == pytest.approx(one["score"])
        assert [m["name"] for m in x["matches"]] == [m["name"] for m in one["matches"]]
        assert len(x["faces"]) == 1 and x["faces"][0]["identity"] == one["identity"]
    assert res[0]["identity"] == "Bob" and res[1]["identity"] == "Ada"
    assert res[2]["error"]["code"] == "bad_image" and res[2]["faces"] == []


@pytest.mark.parametrize(
    ("kwargs", "status", "words"),
    [
        ({"json": {"images": []}}, 422, "no photos"),
        ({"json": {"images": [_b64(b"x")] * (MAX_BATCH_ITEMS + 1)}}, 422, "at most"),
        ({"json": {"images": ["%%% not base64"]}}, 400, "base64"),
        ({"json": {"images": "one string"}}, 400, "list"),
        ({"json": [1, 2]}, 400, "object"),
        (
            {
                "content": b"[" * 50_000 + b"]" * 50_000,
                "headers": {"content-type": "application/json"},
            },
            400,
            "deeper",
        ),
        ({"content": b"images=1", "headers": {"content-type": "text/plain"}}, 400, "multipart"),
    ],
)
def test_batch_limits_and_bad_bodies_get_clear_errors(client, kwargs, status, words):
    r = client.post("/embed/batch", **kwargs)
    assert r.status_code == status and words in r.json()["detail"], r.text
