"""Gallery API: enroll / search / remove, open-set decisions, model checks, persistence,
derived-index consistency and concurrent access. Synthetic embeddings: no model needed."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from gallery_helpers import enrolled_gallery, person_images, snapshot, unit

from siamface.decide.threshold import Threshold
from siamface.errors import SiamfaceError
from siamface.gallery import (
    UNKNOWN,
    Gallery,
    ModelMismatchError,
    NewPerson,
    index_choice,
    index_file,
)
from siamface.gallery.sync import INDEX_NAME

FP = "f" * 16
DIM = 32


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def x(rng):
    return person_images(rng, 20, 3, DIM)


@pytest.fixture
def gallery(tmp_path, x):
    with enrolled_gallery(tmp_path / "g", x, FP) as g:
        yield g


def test_search_finds_own_identity_and_rejects_strangers(gallery, rng, x):
    probes = unit(x[:, 0] + 0.3 / np.sqrt(DIM) * rng.standard_normal((20, DIM)))
    res = gallery.search(probes, top_k=3, fingerprint=FP)
    assert [r.identity for r in res] == [f"p{i:02d}" for i in range(20)]
    assert all(len(r.matches) == 3 and r.matches[0].score >= r.matches[1].score for r in res)
    # scores are exact cosine similarities with the mean template
    tmpl = unit(x[4].mean(0))
    assert res[4].score == pytest.approx(float(tmpl @ probes[4]), abs=1e-5)
    strangers = unit(rng.standard_normal((10, DIM)))
    out = gallery.search(strangers, top_k=2, fingerprint=FP)
    assert all(r.identity == UNKNOWN and not r.known for r in out)
    assert all(r.score is not None and r.score < 0.7 for r in out)
    assert not any(m.accepted for r in out for m in r.matches)
    # closed-set always names someone
    closed = gallery.search(strangers, top_k=2, fingerprint=FP, closed_set=True)
    assert all(r.known for r in closed)
    assert json.dumps([r.to_dict() for r in out])  # JSON-ready


def test_max_aggregation_scores_best_image(gallery, rng, x):
    gallery.set_aggregation("max")
    assert gallery.info()["index"]["vectors"] == 60  # one vector per image now
    res = gallery.search(x[7, 1], top_k=5, fingerprint=FP)[0]
    assert res.identity == "p07" and res.score == pytest.approx(1.0, abs=1e-5)
    assert len({m.name for m in res.matches}) == 5  # distinct people, not images
    gallery.set_aggregation("mean")
    assert gallery.search(x[7, 1], fingerprint=FP)[0].score < 0.999


def test_enroll_append_remove_and_persistence(gallery, tmp_path, rng, x):
    extra = unit(rng.standard_normal((2, DIM)))
    rec = gallery.enroll("p03", extra, fingerprint=FP, append=True, metadata={"team": "a"})
    assert rec.n_images == 5 and rec.metadata == {"team": "a"}
    assert gallery.remove(["p00", "p01"]) == ["p00", "p01"]
    assert len(gallery) == 19 - 1 and "p00" not in gallery
    names = {m.name for r in gallery.search(x[:, 0], 5, fingerprint=FP) for m in r.matches}
    assert not names & {"p00", "p01"}
    gallery.close()
    again = Gallery.open(tmp_path / "g")
    assert len(again) == 18 and again.person("p03").n_images == 5
    tmpl = unit(np.concatenate([x[3], extra]).mean(0))
    assert again.search(tmpl, fingerprint=FP)[0].score == pytest.approx(1.0, abs=1e-5)
    again.close()


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda g, x: g.enroll("p05", x[0], fingerprint=FP), "already enrolled"),
        (lambda g, x: g.enroll("new", x[0][:, :16], fingerprint=FP), "16-d"),
        (lambda g, x: g.enroll("new", x[0], fingerprint="0" * 16), "built with model"),
        (lambda g, x: g.enroll("unknown", x[0], fingerprint=FP), "reserved"),
        (lambda g, x: g.enroll(" pad", x[0], fingerprint=FP), "invalid name"),
        (lambda g, x: g.enroll("new", np.zeros((0, DIM)), fingerprint=FP), "no images"),
        (lambda g, x: g.enroll("new", x[0] * np.nan, fingerprint=FP), "NaN"),
        (lambda g, x: g.enroll("new", x[0], ["a.jpg"], fingerprint=FP), "refs"),
        (lambda g, x: g.remove(["p01", "nobody"]), "not enrolled"),
        (
            lambda g, x: g.enroll_many(
                [NewPerson("a", x[0]), NewPerson("a", x[1])], fingerprint=FP
            ),
            "twice",
        ),
        (
            lambda g, x: g.enroll_many(
                [NewPerson("fresh", x[0]), NewPerson("p09", x[1])], fingerprint=FP
            ),
            "already enrolled",
        ),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(gallery, call, message, x):
    before = snapshot(gallery)
    with pytest.raises(SiamfaceError, match=message):
        call(gallery, x)
    assert snapshot(gallery) == before
    assert "fresh" not in gallery


def test_probe_of_wrong_model_or_size_is_refused(gallery, x):
    q = x[0, :1]
    with pytest.raises(ModelMismatchError, match="built with model"):
        gallery.search(q, fingerprint="1234567890abcdef")
    with pytest.raises(ModelMismatchError, match="64-d.*32-d"):
        gallery.search(np.ones((1, 64), np.float32), fingerprint=FP)
    with pytest.raises(SiamfaceError, match="top_k"):
        gallery.search(q, top_k=0, fingerprint=FP)
    with pytest.raises(SiamfaceError, match="all-zero"):
        gallery.search(np.zeros((1, DIM)), fingerprint=FP)


def test_missing_corrupt_and_foreign_gallery_folders(tmp_path):
    with pytest.raises(SiamfaceError, match="gallery not found"):
        Gallery.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SiamfaceError, match="not a siamface gallery"):
        Gallery.open(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "gallery.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(SiamfaceError, match="corrupt or not SQLite"):
        Gallery.open(bad)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SiamfaceError, match="is a file"):
        Gallery.open(tmp_path / "afile")
    with pytest.raises(SiamfaceError, match="already holds a gallery"):
        Gallery.create(bad, fingerprint=FP, embedding_size=DIM)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"x")
    with pytest.raises(SiamfaceError, match="non-empty folder"):
        Gallery.create(other, fingerprint=FP, embedding_size=DIM)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    sqlite3.connect(foreign / "gallery.sqlite").execute("CREATE TABLE t(x)").connection.commit()
    with pytest.raises(SiamfaceError, match="unreadable"):
        Gallery.open(foreign)
    with pytest.raises(SiamfaceError, match="aggregation"):
        Gallery.create(tmp_path / "x", fingerprint=FP, embedding_size=DIM, aggregation="median")


def test_index_is_rebuilt_when_missing_damaged_or_stale(gallery, tmp_path, x):
    path = tmp_path / "g"
    expect = [r.identity for r in gallery.search(x[:, 0], fingerprint=FP)]
    gallery.close()
    for damage in ("delete", "garbage", "truncate"):
        f = path / INDEX_NAME
        if damage == "delete":
            f.unlink()
        elif damage == "garbage":
            f.write_bytes(b"junk")
        else:
            f.write_bytes(f.read_bytes()[:200])
        with Gallery.open(path) as g:
            if damage == "truncate":
                with pytest.warns(UserWarning, match="damaged"):
                    got = g.search(x[:, 0], fingerprint=FP)
            else:
                got = g.search(x[:, 0], fingerprint=FP)
            assert [r.identity for r in got] == expect
        assert index_file.read_index_header(f)["version"] == 1  # rebuilt file saved
    # stale: the database moved on without the index (e.g. writer died after commit)
    old = (path / INDEX_NAME).read_bytes()
    with Gallery.open(path) as g:
        g.enroll("late", x[0, :1] * -1, fingerprint=FP)
    (path / INDEX_NAME).write_bytes(old)
    with Gallery.open(path) as g:
        assert g.search(x[0, 0] * -1, fingerprint=FP)[0].identity == "late"
        assert g.info()["index"]["current"]


def test_second_handle_sees_writes_of_the_first(gallery, tmp_path, rng, x):
    reader = Gallery.open(tmp_path / "g")
    v = unit(rng.standard_normal(DIM))
    assert reader.search(v, fingerprint=FP)[0].identity != "newcomer"
    gallery.enroll("newcomer", v, fingerprint=FP)
    assert reader.search(v, fingerprint=FP)[0].identity == "newcomer"
    gallery.remove("newcomer")
    assert reader.search(v, fingerprint=FP)[0].identity != "newcomer"
    probe = x[0, 0]
    assert reader.search(probe, fingerprint=FP)[0].identity == "p00"
    gallery.set_threshold(0.9999)  # settings written by one handle reach the other
    assert reader.search(probe, fingerprint=FP)[0].identity == UNKNOWN
    reader.close()


def test_auto_index_switches_to_compressed_and_back(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(index_choice, "EXACT_MAX", 300)
    g = Gallery.create(tmp_path / "big", fingerprint=FP, embedding_size=DIM, threshold=0.5)
    x = person_images(rng, 400, 1, DIM, spread=0.0)[:, 0]
    g.enroll_many([NewPerson(f"id{i}", x[i]) for i in range(200)], fingerprint=FP)
    assert g.info()["index"]["kind"] == "flat"
    g.enroll_many([NewPerson(f"id{i}", x[i]) for i in range(200, 400)], fingerprint=FP)
    assert g.info()["index"]["kind"] == "pqfs"
    probes = unit(x + 0.8 / np.sqrt(DIM) * rng.standard_normal(x.shape))
    res = g.search(probes, top_k=5, fingerprint=FP)
    own = np.mean([any(m.name == f"id{i}" for m in r.matches) for i, r in enumerate(res)])
    assert own > 0.95
    # reported scores are the true cosine similarities although the index is compressed
    for r, p in zip(res[:20], probes[:20], strict=True):
        for m in r.matches:
            assert m.score == pytest.approx(float(x[int(m.name[2:])] @ p), abs=1e-3)
    g.remove([f"id{i}" for i in range(150)])
    assert g.info()["index"]["kind"] == "flat"
    g.close()


def test_threshold_settings(gallery, rng, x):
    v = x[2, 0]
    gallery.set_threshold(0.999)
    assert gallery.search(v, fingerprint=FP)[0].identity == UNKNOWN
    gallery.set_threshold(None)
    assert gallery.search(v, fingerprint=FP)[0].identity == "p02"
    with pytest.raises(SiamfaceError, match="cosine"):
        gallery.set_threshold(3)
    # a threshold given for one search decides that search only
    gallery.set_threshold(0.999)
    r = gallery.search(v, fingerprint=FP, threshold=Threshold.given(0.2))[0]
    assert r.identity == "p02" and r.threshold == 0.2
    assert gallery.search(v, fingerprint=FP)[0].identity == UNKNOWN
    assert gallery.threshold.value == 0.999


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from siamface.gallery import Gallery
    g = Gallery.open(sys.argv[1])
    rng = np.random.default_rng(1)
    for i in range(6):
        v = rng.standard_normal((2, 32)).astype(np.float32)
        g.enroll(f"w{i}", v / np.linalg.norm(v, axis=1, keepdims=True), fingerprint="f" * 16)
    g.close()
    """
)


def test_concurrent_reader_and_writer_processes(gallery, tmp_path, x):
    """Searches keep working (and stay consistent) while another process enrolls."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "g")])
    reader = Gallery.open(tmp_path / "g")
    seen = 0
    while proc.poll() is None or seen == 0:
        res = reader.search(x[:, 0], top_k=3, fingerprint=FP)
        assert [r.identity for r in res] == [f"p{i:02d}" for i in range(20)]
        seen += 1
    assert proc.wait() == 0
    assert len(reader) == 26
    assert {f"w{i}" for i in range(6)} <= {p.name for p in reader.people()}
    reader.close()


def test_empty_gallery_answers_unknown(tmp_path):
    with Gallery.create(tmp_path / "e", fingerprint=FP, embedding_size=DIM) as g:
        (r,) = g.search(np.ones(DIM, np.float32), top_k=3, fingerprint=FP)
        assert r.identity == UNKNOWN and r.score is None and r.matches == []
        assert g.people() == [] and len(g) == 0


def _jpeg(colour=(200, 30, 30), size=(112, 112), noise: bool = False) -> bytes:
    import io

    from PIL import Image

    if noise:  # incompressible pixels: a large JPEG
        arr = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
        img = Image.fromarray(arr)
    else:
        img = Image.new("RGB", size, colour)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=100)
    return buf.getvalue()


def test_thumbnails_stored_kept_on_append_and_refused_when_too_large(gallery, tmp_path, rng, x):
    from siamface.gallery.thumbnail import MAX_THUMBNAIL_BYTES, make_thumbnail

    assert gallery.thumbnail("p00") is None and gallery.thumbnail("nobody") is None
    first = make_thumbnail(np.full((300, 200, 3), 90, np.uint8))
    import io

    from PIL import Image

    assert max(Image.open(io.BytesIO(first)).size) == 112 and len(first) <= MAX_THUMBNAIL_BYTES
    v = unit(rng.standard_normal((2, DIM)))
    gallery.enroll("thumbed", v[:1], fingerprint=FP, thumbnail=first)
    assert gallery.thumbnail("thumbed") == first
    # appending keeps the first face; a person without one gets the appended one
    gallery.enroll("thumbed", v[1:], fingerprint=FP, append=True, thumbnail=_jpeg())
    assert gallery.thumbnail("thumbed") == first
    gallery.enroll("p01", v[1:], fingerprint=FP, append=True, thumbnail=_jpeg())
    assert gallery.thumbnail("p01") == _jpeg()
    big = _jpeg(size=(400, 400), noise=True)
    assert len(big) > MAX_THUMBNAIL_BYTES
    before = snapshot(gallery)
    for bad, msg in ((big, "at most 32768"), (b"GIF89a...", "not a JPEG"), ("x", "JPEG bytes")):
        with pytest.raises(SiamfaceError, match=msg):
            gallery.enroll("toolarge", v[:1], fingerprint=FP, thumbnail=bad)
    assert snapshot(gallery) == before and "toolarge" not in gallery
    gallery.remove("thumbed")  # removed with the person
    gallery.enroll("thumbed", v[:1], fingerprint=FP)
    assert gallery.thumbnail("thumbed") is None
    gallery.close()
    with Gallery.open(tmp_path / "g") as again:
        assert again.thumbnail("p01") == _jpeg()
