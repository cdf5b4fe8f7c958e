"""Stored state damaged on disk (a disk error, a sync tool, a person editing a file) is found,
named and rebuilt or refused, never trusted: the scan index, the decoded-pixel cache, the
teacher-embedding cache, gallery vectors and models with degenerate output."""

from __future__ import annotations

import json
import logging
import sqlite3

import numpy as np
import pytest
import torch
from conftest import needs_data

from siamface.folders.scan_index import INDEX_FILE, ScanIndex, scan_files

pytestmark = needs_data


def _scan(files, db, keep=True):
    return scan_files(files, 32, "decode", ScanIndex(db), keep_pixels=keep, progress=False)


@pytest.fixture
def scanned(pins_small, tmp_path):
    files = sorted(pins_small.rglob("*.jpg"))[:12]
    db = tmp_path / INDEX_FILE
    first = _scan(files, db)
    assert all(f.ok for f in first.facts) and first.pixels is not None
    return files, db, first


def test_scan_index_row_edited_by_hand_is_found_and_rebuilt(scanned, caplog):
    files, db, first = scanned
    with sqlite3.connect(db) as c:  # a good photo marked corrupt, another one's digest changed
        c.execute("UPDATE files SET ok=0, error='bad' WHERE path=?", (str(files[3]),))
        c.execute("UPDATE files SET sha256=? WHERE path=?", ("0" * 64, str(files[5])))
    with caplog.at_level(logging.WARNING):
        again = _scan(files, db, keep=False)
    assert [f.ok for f in again.facts] == [True] * len(files)
    assert again.facts == first.facts and again.checked == len(files)  # rebuilt from files
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "scan index" in msg and str(db) in msg and "damaged" in msg
    assert _scan(files, db, keep=False).checked == 0  # the rebuilt index is trusted again


def test_scan_index_of_random_bytes_is_named_and_rebuilt(scanned, caplog):
    files, db, first = scanned
    for extra in ("-wal", "-shm"):
        db.with_name(db.name + extra).unlink(missing_ok=True)
    db.write_bytes(np.random.default_rng(0).bytes(20000))
    with caplog.at_level(logging.WARNING):
        again = _scan(files, db, keep=False)
    assert again.facts == first.facts
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert str(db) in msg and "damaged" in msg
    assert _scan(files, db, keep=False).checked == 0  # kept on disk again, not in memory


@pytest.mark.parametrize("damage", ["zeros", "one_row", "no_digests"])
def test_pixel_cache_damaged_at_same_size_is_not_trusted(scanned, caplog, damage):
    files, db, first = scanned
    (npy,) = db.parent.glob("pixels-*.npy")
    arr = np.load(npy, mmap_mode="r+")
    if damage == "zeros":
        arr[:] = 0
    elif damage == "one_row":
        arr[7, 1, 5, 5] ^= 1
    else:
        npy.with_name(npy.name + ".sums").unlink()
    arr.flush()
    del arr
    with caplog.at_level(logging.WARNING):
        again = _scan(files, db)
    assert not again.pixels_from_disk
    assert torch.equal(again.pixels, first.pixels)  # decoded again, not black images
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "decoded-pixel cache" in msg and npy.name in msg and "damaged" in msg
    assert _scan(files, db).pixels_from_disk  # saved again with its digests


def test_pixel_cache_intact_is_mapped_without_notice(scanned, caplog):
    files, db, first = scanned
    with caplog.at_level(logging.WARNING):
        again = _scan(files, db)
    assert again.pixels_from_disk and torch.equal(again.pixels, first.pixels)
    assert not [r for r in caplog.records if "damaged" in r.getMessage()]


# ----------------------------------------------------------------------------- teacher cache
def _teacher(tiny_checkpoint, pins_small, tmp_path, monkeypatch, caplog):
    from siamface.train.distill import teacher_embeddings

    monkeypatch.setenv("SIAMFACE_CACHE", str(tmp_path / "cache"))
    paths = sorted(pins_small.rglob("*.jpg"))[:6]
    logs: list[str] = []
    with caplog.at_level(logging.WARNING):
        emb, ok = teacher_embeddings(
            str(tiny_checkpoint), paths, progress=False, log_fn=logs.append
        )
    return emb, ok, logs


@pytest.mark.parametrize("damage", ["shuffled", "nan", "short", "random_bytes"])
def test_teacher_cache_damage_is_found_and_embedded_again(
    tiny_checkpoint, pins_small, tmp_path, monkeypatch, caplog, damage
):
    first, ok, logs = _teacher(tiny_checkpoint, pins_small, tmp_path, monkeypatch, caplog)
    assert ok.all() and any("(0 cached)" in line for line in logs)
    (db,) = (tmp_path / "cache" / "teachers").glob("teacher-*.sqlite")
    if damage == "random_bytes":
        for extra in ("-wal", "-shm"):
            db.with_name(db.name + extra).unlink(missing_ok=True)
        db.write_bytes(np.random.default_rng(1).bytes(30000))
    else:
        with sqlite3.connect(db) as c:
            rows = c.execute("SELECT digest, vec FROM emb ORDER BY digest").fetchall()
            if damage == "shuffled":  # the vectors of two images swapped
                (d0, v0), (d1, v1) = rows[0], rows[1]
                c.execute("UPDATE emb SET vec=? WHERE digest=?", (v1, d0))
                c.execute("UPDATE emb SET vec=? WHERE digest=?", (v0, d1))
            elif damage == "nan":
                nan = np.full(len(rows[2][1]) // 4, np.nan, np.float32).tobytes()
                c.execute("UPDATE emb SET vec=? WHERE digest=?", (nan, rows[2][0]))
            else:
                c.execute("UPDATE emb SET vec=? WHERE digest=?", (rows[3][1][:40], rows[3][0]))
    caplog.clear()
    again, ok2, logs2 = _teacher(tiny_checkpoint, pins_small, tmp_path, monkeypatch, caplog)
    assert ok2.all() and np.isfinite(again).all()
    np.testing.assert_allclose(again, first, atol=1e-5)  # the right targets, embedded again
    assert any("(0 cached)" in line for line in logs2)
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "teacher cache" in msg and str(db) in msg and "damaged" in msg
    caplog.clear()
    _, _, logs3 = _teacher(tiny_checkpoint, pins_small, tmp_path, monkeypatch, caplog)
    assert not logs3 and not caplog.records  # rebuilt cache: all hits, no notice


# ----------------------------------------------------------------------------- gallery vectors
def _cli(capsys, *argv):
    from siamface.cli.main import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def gallery(capsys, tiny_checkpoint, pins_small, tmp_path):
    import shutil

    people = tmp_path / "people"
    for d in sorted(pins_small.iterdir())[:4]:
        (people / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:3]:
            shutil.copy2(f, people / d.name / f.name)
    g = tmp_path / "gal"
    rc, _, err = _cli(capsys, "gallery", "enroll", g, "--model", tiny_checkpoint, people)
    assert rc == 0, err
    return g, people


def _damage(g, name: str, how: str) -> None:
    with sqlite3.connect(g / "gallery.sqlite") as c:
        (pid,) = c.execute("SELECT id FROM people WHERE name=?", (name,)).fetchone()
        blob = c.execute("SELECT embedding FROM images WHERE person_id=?", (pid,)).fetchone()[0]
        bad = {
            "nan": np.full(len(blob) // 4, np.nan, np.float32).tobytes(),
            "short": blob[:-4],
            "zero": bytes(len(blob)),
        }[how]
        c.execute("UPDATE images SET embedding=? WHERE person_id=?", (bad, pid))
        c.execute("UPDATE people SET template=? WHERE id=?", (bad, pid))


@pytest.mark.parametrize("how", ["nan", "short", "zero"])
def test_damaged_gallery_vectors_name_the_person_and_are_repaired(capsys, gallery, how):
    g, people = gallery
    victim = sorted(p.name for p in people.iterdir())[1]
    probe = sorted((people / victim).iterdir())[0]
    rc, out, _ = _cli(capsys, "identify", g, probe, "--json")
    assert rc == 0 and victim in out
    _damage(g, victim, how)
    rc, out, err = _cli(capsys, "identify", g, probe, "--json")
    assert rc == 2 and victim in err and "damaged" in err and "gallery check" in err
    assert len(err.strip().splitlines()) == 1
    rc, _, err = _cli(capsys, "gallery", "set", g, "--rebuild")  # index rebuilt from the db
    assert rc == 2 and victim in err and "damaged" in err
    rc, out, _ = _cli(capsys, "gallery", "check", g, "--json")
    report = json.loads(out)
    assert rc == 1 and {p["person"] for p in report["problems"]} == {victim}
    assert {p["kind"] for p in report["problems"]} == {"image", "template"}
    rc, _, err = _cli(capsys, "gallery", "check", g, "--repair")  # not confirmed: unchanged
    assert rc == 2 and "--yes" in err
    rc, out, err = _cli(capsys, "gallery", "check", g, "--repair", "--yes", "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert not report["remaining"]
    assert any(d["action"].startswith("re-embedded") for d in report["repaired"])
    rc, out, _ = _cli(capsys, "identify", g, probe, "--json")
    assert rc == 0 and json.loads(out)["identity"] == victim


def test_gallery_check_drops_what_cannot_be_re_embedded(capsys, gallery):
    g, people = gallery
    names = sorted(p.name for p in people.iterdir())
    _damage(g, names[0], "nan")
    import shutil

    shutil.rmtree(people / names[0])  # the stored image files are gone: nothing to re-embed
    rc, out, err = _cli(capsys, "gallery", "check", g, "--repair", "--yes")
    assert rc == 0, err
    assert "person removed" in out and names[0] in out
    rc, out, _ = _cli(capsys, "gallery", "list", g, "--json")
    assert names[0] not in {p["name"] for p in json.loads(out)["people"]}
    assert _cli(capsys, "gallery", "check", g)[0] == 0


# ----------------------------------------------------------------------------- aligned faces
@pytest.mark.parametrize("damage", ["swapped", "random_bytes"])
def test_aligned_face_cache_damage_is_found(tmp_path, caplog, damage):
    from siamface.faces.cache import FaceCache
    from siamface.tensors.transforms import Preprocessing

    cache = FaceCache(Preprocessing(image_size=16, aligned=True), root=tmp_path)
    faces = {d: np.full((16, 16, 3), v, np.uint8) for d, v in (("a" * 64, 10), ("b" * 64, 200))}
    for d, f in faces.items():
        cache.put(d, f)
    cache.put("c" * 64, None, "no face")
    assert np.array_equal(cache.get("a" * 64), faces["a" * 64])
    cache._conn.close()
    if damage == "swapped":
        with sqlite3.connect(cache.path) as c:
            rows = dict(c.execute("SELECT digest, png FROM faces WHERE png IS NOT NULL"))
            c.execute("UPDATE faces SET png=? WHERE digest=?", (rows["b" * 64], "a" * 64))
    else:
        for extra in ("-wal", "-shm"):
            cache.path.with_name(cache.path.name + extra).unlink(missing_ok=True)
        cache.path.write_bytes(np.random.default_rng(2).bytes(8192))
    fresh = FaceCache(Preprocessing(image_size=16, aligned=True), root=tmp_path)
    with caplog.at_level(logging.WARNING):
        assert fresh.get("a" * 64) is None  # never another photo's face
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "aligned-face cache" in msg and str(fresh.path) in msg and "damaged" in msg
    fresh.put("a" * 64, faces["a" * 64])  # rebuilt: usable again
    assert np.array_equal(fresh.get("a" * 64), faces["a" * 64])
