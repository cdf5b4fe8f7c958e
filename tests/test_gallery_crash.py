"""An interrupted enrollment leaves the gallery consistent: nothing half-written, nothing
committed lost. Faults are injected exactly before and after the commit, in-process
(exception) and in a subprocess that is killed with SIGKILL."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from gallery_helpers import random_units

from siamface.gallery import Gallery, NewPerson
from siamface.gallery.faults import FAULT_ENV as _FAULT_ENV
from siamface.gallery.index_file import read_index_header
from siamface.gallery.sync import INDEX_NAME

FP = "c" * 16
DIM = 16


def _vecs(seed: int, n: int) -> np.ndarray:
    return random_units(seed, n, DIM)


@pytest.fixture
def gpath(tmp_path):
    path = tmp_path / "g"
    with Gallery.create(path, fingerprint=FP, embedding_size=DIM, threshold=0.9) as g:
        x = _vecs(0, 10)
        g.enroll_many([NewPerson(f"base{i}", x[i : i + 1]) for i in range(10)], fingerprint=FP)
    return path


def state(path) -> dict:
    """Everything observable about a gallery, checked for internal consistency."""
    conn = sqlite3.connect(path / "gallery.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    orphans = conn.execute(
        "SELECT COUNT(*) FROM images WHERE person_id NOT IN (SELECT id FROM people)"
    ).fetchone()[0]
    bad_counts = conn.execute(
        "SELECT COUNT(*) FROM people p WHERE n_images != "
        "(SELECT COUNT(*) FROM images i WHERE i.person_id = p.id)"
    ).fetchone()[0]
    conn.close()
    assert orphans == 0 and bad_counts == 0
    with Gallery.open(path) as g:
        names = [p.name for p in g.people()]
        # every enrolled person is found by their own embedding, through the index
        for p in g.people():
            tmpl = g.store.vectors_by_id("person", [p.id], DIM)[2]
            assert g.search(tmpl, 1, fingerprint=FP)[0].identity == p.name
        info = g.info()
    assert info["index"]["current"] and info["index"]["vectors"] == len(names)
    return {"names": names, "version": info["version"], "images": info["images"]}


def test_exception_before_commit_changes_nothing(gpath, monkeypatch):
    before = state(gpath)
    index_before = (gpath / INDEX_NAME).read_bytes()
    monkeypatch.setenv(_FAULT_ENV, "enroll:before-commit:raise")
    with Gallery.open(gpath) as g:
        with pytest.raises(RuntimeError, match="injected"):
            g.enroll_many(
                [NewPerson(f"new{i}", _vecs(i + 50, 2)) for i in range(5)], fingerprint=FP
            )
        monkeypatch.delenv(_FAULT_ENV)
        assert "new0" not in g
        assert len(g.search(_vecs(1, 1), 3, fingerprint=FP)[0].matches) == 3
    assert state(gpath) == before
    assert (gpath / INDEX_NAME).read_bytes() == index_before


def test_exception_after_commit_loses_nothing(gpath, monkeypatch):
    monkeypatch.setenv(_FAULT_ENV, "enroll:after-commit:raise")
    with Gallery.open(gpath) as g:
        with pytest.raises(RuntimeError, match="injected"):
            g.enroll("late", _vecs(99, 3), fingerprint=FP)
        monkeypatch.delenv(_FAULT_ENV)
        # committed: the same handle finds the person (its index catches up)
        tmpl = _vecs(99, 3).mean(0)
        assert g.search(tmpl, fingerprint=FP)[0].identity == "late"
    s = state(gpath)
    assert "late" in s["names"] and s["images"] == 13


KILLED_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from siamface.gallery import Gallery, NewPerson
    rng = np.random.default_rng(7)
    people = []
    for i in range(200):
        v = rng.standard_normal((3, 16)).astype(np.float32)
        people.append(NewPerson(f"killed{i}", v / np.linalg.norm(v, axis=1, keepdims=True)))
    with Gallery.open(sys.argv[1]) as g:
        g.enroll_many(people, fingerprint="c" * 16)
    print("survived")
    """
)


@pytest.mark.parametrize("point", ["enroll:before-commit", "enroll:after-commit"])
def test_killed_writer_process(gpath, point):
    before = state(gpath)
    env = {**__import__("os").environ, _FAULT_ENV: f"{point}:kill"}
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(gpath)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "survived" not in proc.stdout
    after = state(gpath)  # consistent either way (index rebuilt when stale)
    if point == "enroll:before-commit":
        assert after == before
        assert read_index_header(gpath / INDEX_NAME)["version"] == before["version"]
    else:
        assert len(after["names"]) == 210 and after["version"] == before["version"] + 1
