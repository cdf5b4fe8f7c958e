"""A Milvus gallery whose creation was interrupted is recognised as half-made, explained, and
removed by `gallery check --repair` or `gallery drop` (with confirmation); nothing siamface
did not make is ever dropped. Against a real Milvus-protocol server (tests/milvus_server.py)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from siamface.cli.main import main
from siamface.errors import SiamfaceError
from siamface.gallery import Gallery, NewPerson
from siamface.gallery.faults import FAULT_ENV

FP, DIM = "m" * 16, 8


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _collections(server) -> set[str]:
    from pymilvus import MilvusClient

    c = MilvusClient(uri=server.uri)
    try:
        return set(c.list_collections())
    finally:
        c.close()


def _half_made(server, monkeypatch, point: str) -> str:
    """A gallery whose creation stopped at ``point`` (as a killed process leaves it)."""
    spec = server.spec(f"half_{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv(FAULT_ENV, f"{point}:raise")
    with pytest.raises(SiamfaceError, match="cannot create"):
        Gallery.create(spec, fingerprint=FP, embedding_size=DIM)
    monkeypatch.delenv(FAULT_ENV)
    return spec


def _usable(spec: str) -> None:
    v = np.ones((1, DIM), np.float32) / np.sqrt(DIM)
    with Gallery.create(spec, fingerprint=FP, embedding_size=DIM) as g:
        g.enroll_many([NewPerson("Ada", v)], fingerprint=FP)
        assert len(g) == 1


@pytest.mark.parametrize("point", ["create:collection", "create:before-marker"])
def test_half_made_gallery_is_explained_and_repaired(milvus_server, monkeypatch, capsys, point):
    spec = _half_made(milvus_server, monkeypatch, point)
    for attempt in (
        lambda: Gallery.open(spec),
        lambda: Gallery.create(spec, fingerprint=FP, embedding_size=DIM),
    ):
        with pytest.raises(SiamfaceError) as info:
            attempt()
        assert "half-made" in str(info.value) and f"gallery drop {spec}" in str(info.value)
    rc, out, _ = _cli(capsys, "gallery", "check", spec)
    assert rc == 1 and "half-made" in out
    rc, _, err = _cli(capsys, "gallery", "check", spec, "--repair")  # not confirmed
    assert rc == 2 and "--yes" in err
    rc, out, err = _cli(capsys, "gallery", "check", spec, "--repair", "--yes")
    assert rc == 0 and "removed" in out, err
    assert not any(c.startswith(spec.rsplit("/", 1)[1]) for c in _collections(milvus_server))
    _usable(spec)  # the name is free again


def test_drop_half_made_complete_and_never_foreign(milvus_server, monkeypatch, capsys):
    from pymilvus import DataType, MilvusClient

    spec = _half_made(milvus_server, monkeypatch, "create:collection")
    rc, out, err = _cli(capsys, "gallery", "drop", spec, "--yes")
    assert rc == 0 and "__meta" in out, err
    _usable(spec)
    rc, out, err = _cli(capsys, "gallery", "check", spec)  # a complete gallery's vectors
    assert rc == 0 and "sound" in out, err
    rc, _, err = _cli(capsys, "gallery", "drop", spec)  # a complete gallery: asks first
    assert rc == 2 and "--yes" in err and "1 people" in err
    assert _cli(capsys, "gallery", "drop", spec, "--yes")[0] == 0
    with pytest.raises(SiamfaceError, match="not found"):
        Gallery.open(spec)
    name = f"foreign_{uuid.uuid4().hex[:8]}"
    c = MilvusClient(uri=milvus_server.uri)
    schema = MilvusClient.create_schema(auto_id=True)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=4)
    c.create_collection(name, schema=schema)
    c.close()
    rc, _, err = _cli(capsys, "gallery", "drop", milvus_server.spec(name), "--yes")
    assert rc == 2 and "not made by siamface" in err and "nothing dropped" in err
    assert name in _collections(milvus_server)


def test_builtin_gallery_drop(capsys, tmp_path):
    g = tmp_path / "g"
    _usable(str(g))
    (g / "notes.txt").write_text("mine")  # not the gallery's: kept
    rc, _, err = _cli(capsys, "gallery", "drop", g)
    assert rc == 2 and "--yes" in err and (g / "gallery.sqlite").is_file()
    assert _cli(capsys, "gallery", "drop", g, "--yes")[0] == 0
    assert sorted(p.name for p in g.iterdir()) == ["notes.txt"]
    rc, _, err = _cli(capsys, "gallery", "drop", tmp_path, "--yes")
    assert rc == 2 and "not a siamface gallery" in err
