"""One gallery suite, run on every backend: the built-in folder (SQLite + faiss) and Milvus
(a real Milvus-protocol server: milvus-lite's gRPC server, started once per session by the
``milvus_server`` fixture). Synthetic embeddings: no model needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import numpy as np
import pytest
from gallery_helpers import enrolled_gallery, person_images, snapshot, unit

from siamface.errors import SiamfaceError
from siamface.gallery import UNKNOWN, Gallery, ModelMismatchError, NewPerson, open_gallery
from siamface.gallery.faults import FAULT_ENV

FP = "b" * 16
DIM = 32
BACKENDS = ["builtin", "milvus"]


@pytest.fixture(params=BACKENDS)
def spec(request, tmp_path) -> str:
    """Where a new gallery goes, on each backend."""
    if request.param == "builtin":
        return str(tmp_path / "g")
    server = request.getfixturevalue("milvus_server")
    return server.spec(f"g_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def x():
    return person_images(np.random.default_rng(0), 20, 3, DIM)


@pytest.fixture
def gallery(spec, x):
    with enrolled_gallery(spec, x, FP, digests=True) as g:
        yield g


def test_backend_is_chosen_by_spec(gallery, spec):
    assert gallery.backend == ("milvus" if spec.startswith("milvus://") else "builtin")
    assert Gallery.exists(spec) and gallery.info()["backend"] == gallery.backend


def test_identify_top_k_and_unknown(gallery, x):
    rng = np.random.default_rng(1)
    probes = unit(x[:, 0] + 0.3 / np.sqrt(DIM) * rng.standard_normal((20, DIM)))
    res = gallery.search(probes, top_k=3, fingerprint=FP)
    assert [r.identity for r in res] == [f"p{i:02d}" for i in range(20)]
    assert all(len(r.matches) == 3 and r.matches[0].score >= r.matches[1].score for r in res)
    tmpl = unit(x[4].mean(0))  # scores are cosine similarities with the mean template
    assert res[4].score == pytest.approx(float(tmpl @ probes[4]), abs=1e-4)
    strangers = unit(rng.standard_normal((10, DIM)))
    out = gallery.search(strangers, top_k=2, fingerprint=FP)
    assert all(r.identity == UNKNOWN and r.score < 0.7 for r in out)
    assert all(r.known for r in gallery.search(strangers, 2, fingerprint=FP, closed_set=True))
    gallery.set_aggregation("max")  # every image; a person scores by their best one
    best = gallery.search(x[7, 1], top_k=5, fingerprint=FP)[0]
    assert best.identity == "p07" and best.score == pytest.approx(1.0, abs=1e-4)
    assert len({m.name for m in best.matches}) == 5
    gallery.set_aggregation("mean")
    assert gallery.search(x[7, 1], fingerprint=FP)[0].score < 0.999


def test_enroll_append_remove_list_and_reopen(gallery, spec, x):
    rng = np.random.default_rng(2)
    extra = unit(rng.standard_normal((2, DIM)))
    thumb = b"\xff\xd8\xff\xe0" + b"jpeg" * 10
    rec = gallery.enroll(
        "p03", extra, fingerprint=FP, append=True, metadata={"team": "a"}, thumbnail=thumb
    )
    assert rec.n_images == 5 and rec.metadata == {"team": "a"}
    assert gallery.thumbnail("p03") == thumb
    gallery.enroll("new", extra[:1], fingerprint=FP, thumbnail=thumb, metadata={"k": 1})
    assert gallery.remove(["p00", "p01"]) == ["p00", "p01"]
    assert len(gallery) == 19 and "p00" not in gallery and "new" in gallery
    names = {m.name for r in gallery.search(x[:, 0], 5, fingerprint=FP) for m in r.matches}
    assert not names & {"p00", "p01"}
    assert [p.name for p in gallery.people()] == sorted(
        ["new", *(f"p{i:02d}" for i in range(2, 20))]
    )
    assert gallery.counts() == (19, 18 * 3 + 2 + 1)
    exported = gallery.export(["p03"])[0]
    np.testing.assert_allclose(exported.embeddings, np.concatenate([x[3], extra]), atol=1e-6)
    assert exported.refs[:3] == [f"p3_{j}.jpg" for j in range(3)] and exported.thumbnail == thumb
    gallery.close()
    with Gallery.open(spec) as again:
        assert len(again) == 19 and again.person("p03").n_images == 5
        tmpl = unit(np.concatenate([x[3], extra]).mean(0))
        assert again.search(tmpl, fingerprint=FP)[0].score == pytest.approx(1.0, abs=1e-4)
        assert again.thumbnail("new") == thumb and again.person("new").metadata == {"k": 1}
        assert again.duplicates_elsewhere([NewPerson("zz", x[5, :1], ["a.jpg"], ["d5_0"])]) == [
            {"path": "a.jpg", "name": "zz", "other": "p05"}
        ]


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda g, x: g.enroll("p05", x[0], fingerprint=FP), "already enrolled"),
        (lambda g, x: g.enroll("new", x[0][:, :16], fingerprint=FP), "16-d"),
        (lambda g, x: g.enroll("new", x[0], fingerprint="0" * 16), "built with model"),
        (lambda g, x: g.enroll("unknown", x[0], fingerprint=FP), "reserved"),
        (lambda g, x: g.enroll("new", x[0] * np.nan, fingerprint=FP), "NaN"),
        (lambda g, x: g.enroll("new", x[0], thumbnail=b"x" * 40000, fingerprint=FP), "thumbnail"),
        (lambda g, x: g.remove(["p01", "nobody"]), "not enrolled"),
        (
            lambda g, x: g.enroll_many(
                [NewPerson("fresh", x[0]), NewPerson("p09", x[1])], fingerprint=FP
            ),
            "already enrolled",
        ),
        (lambda g, x: g.set_threshold(float("nan")), "cosine"),
        (lambda g, x: g.set_index_kind("annoy"), "index kind"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(gallery, x, call, message):
    before = snapshot(gallery)
    with pytest.raises(SiamfaceError, match=message):
        call(gallery, x)
    assert snapshot(gallery) == before and "fresh" not in gallery


def test_another_models_embeddings_and_collections_are_refused(gallery, spec, x):
    with pytest.raises(ModelMismatchError, match="built with model"):
        gallery.search(x[0, :1], fingerprint="1234567890abcdef")
    with pytest.raises(ModelMismatchError, match="64-d.*32-d"):
        gallery.search(np.ones((1, 64), np.float32), fingerprint=FP)
    other = {"fingerprint": "e" * 16, "embedding_size": DIM}
    with pytest.raises(ModelMismatchError, match="built with model b+"):
        open_gallery(spec, create=other)
    with pytest.raises(SiamfaceError, match="already holds a gallery"):
        Gallery.create(spec, **other)


def test_settings_written_by_one_handle_reach_another(gallery, spec, x):
    reader = Gallery.open(spec)
    v = unit(np.random.default_rng(3).standard_normal(DIM))
    assert reader.search(v, fingerprint=FP)[0].identity != "newcomer"
    gallery.enroll("newcomer", v, fingerprint=FP)
    assert reader.search(v, fingerprint=FP)[0].identity == "newcomer"
    gallery.remove("newcomer")
    assert reader.search(v, fingerprint=FP)[0].identity != "newcomer"
    gallery.set_threshold(0.9999)
    assert reader.search(x[0, 0], fingerprint=FP)[0].identity == UNKNOWN
    reader.close()


def test_empty_gallery_answers_unknown(spec):
    with open_gallery(spec, create={"fingerprint": FP, "embedding_size": DIM}) as g:
        (r,) = g.search(np.ones(DIM, np.float32), top_k=3, fingerprint=FP)
        assert r.identity == UNKNOWN and r.score is None and r.matches == []
        assert g.people() == [] and len(g) == 0 and g.counts() == (0, 0)


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from siamface.gallery import Gallery
    g = Gallery.open(sys.argv[1])
    rng = np.random.default_rng(int(sys.argv[2]))
    for i in range(5):
        v = rng.standard_normal((2, 32)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        g.enroll(f"w{sys.argv[2]}_{i}", v, fingerprint="b" * 16)
        if i == 2:
            g.remove(f"w{sys.argv[2]}_0")
    g.close()
    """
)


def test_concurrent_readers_and_writers(gallery, spec, x):
    """Two writer processes enroll and remove while reader threads search: every search
    sees the enrolled people correctly, and every write lands."""
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, spec, str(seed)]) for seed in (1, 2)]
    errors: list[BaseException] = []
    searched = [0, 0]

    def read(slot: int) -> None:
        try:
            r = Gallery.open(spec)
            while any(w.poll() is None for w in writers) or searched[slot] == 0:
                res = r.search(x[:, 0], top_k=3, fingerprint=FP)
                assert [m.identity for m in res] == [f"p{i:02d}" for i in range(20)]
                searched[slot] += 1
            r.close()
        except BaseException as err:  # reported in the main thread
            errors.append(err)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [w.wait(timeout=300) for w in writers] == [0, 0]
    assert not errors, errors[0]
    assert min(searched) >= 1
    expect = {f"w{s}_{i}" for s in (1, 2) for i in range(1, 5)}
    names = {p.name for p in gallery.people()}
    assert expect <= names and not {"w1_0", "w2_0"} & names and len(names) == 28
    assert gallery.counts() == (28, 60 + 16)


KILLED_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from siamface.gallery import Gallery, NewPerson
    rng = np.random.default_rng(7)
    people = []
    for i in range(int(sys.argv[2])):
        v = rng.standard_normal((3, 32)).astype(np.float32)
        people.append(NewPerson(f"killed{i}", v / np.linalg.norm(v, axis=1, keepdims=True),
                                digests=[f"k{i}_{j}" for j in range(3)]))
    with Gallery.open(sys.argv[1]) as g:
        g.enroll_many(people, fingerprint="b" * 16)
    print("survived")
    """
)


def consistent_state(spec: str) -> dict:
    """Everything observable through the API, checked: each person's stored vectors are all
    there and their own template finds them first."""
    with Gallery.open(spec) as g:
        people = g.people()
        exported = g.export([p.name for p in people])
        assert [len(e.embeddings) for e in exported] == [p.n_images for p in people]
        templates = np.stack([unit(e.embeddings.mean(0)) for e in exported])
        found = g.search(templates, 1, fingerprint=FP, closed_set=True)
        assert [r.identity for r in found] == [p.name for p in people]
        n_people, n_images = g.counts()
        assert (n_people, n_images) == (len(people), sum(p.n_images for p in people))
        return {"names": sorted(p.name for p in people), "images": n_images}


@pytest.mark.parametrize(
    "point", ["enroll:mid-vectors", "enroll:before-commit", "enroll:after-commit"]
)
def test_killed_writer_leaves_no_half_person(gallery, spec, point):
    if point == "enroll:mid-vectors" and gallery.backend == "builtin":
        pytest.skip("the built-in backend writes its vectors in the same transaction")
    n = 600 if point == "enroll:mid-vectors" else 200  # 2400 rows: > one upsert call
    gallery.close()
    before = consistent_state(spec)
    env = {**os.environ, FAULT_ENV: f"{point}:kill"}
    cmd = [sys.executable, "-c", KILLED_WRITER, spec, str(n)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    after = consistent_state(spec)
    if point == "enroll:after-commit":
        assert len(after["names"]) == 20 + n and after["images"] == before["images"] + 3 * n
    else:
        assert after == before  # nobody half-enrolled, nothing visible
        if spec.startswith("milvus://"):  # the dead writer's vectors: invisible, vacuumable
            assert _milvus_rows(spec) > 4 * 20
            with Gallery.open(spec) as g:
                g.rebuild_index()
            assert _milvus_rows(spec) == 4 * 20 and consistent_state(spec) == before
    # running the same enrollment again completes it; nothing is duplicated
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if point == "enroll:after-commit":
        assert again.returncode != 0 and "already enrolled" in again.stderr
    else:
        assert again.returncode == 0, again.stderr
    final = consistent_state(spec)
    assert len(final["names"]) == 20 + n and final["images"] == before["images"] + 3 * n
    if spec.startswith("milvus://"):
        assert _milvus_rows(spec) == 4 * (20 + n)  # 3 images + 1 template each, no leftovers


def _milvus_rows(spec: str) -> int:
    from pymilvus import MilvusClient

    from siamface.gallery.milvus.connection import parse_spec

    uri, name = parse_spec(spec)
    c = MilvusClient(uri=uri)
    try:
        return int(c.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"])
    finally:
        c.close()


# -- Milvus only: what a remote store adds --------------------------------------------------
def test_unreachable_server_and_foreign_collections_give_clear_errors(milvus_server):
    from milvus_server import free_port
    from pymilvus import DataType, MilvusClient

    t = time.monotonic()
    with pytest.raises(SiamfaceError, match="cannot reach the Milvus server at http://127.0.0.1"):
        Gallery.open(f"milvus://127.0.0.1:{free_port()}/nothing_here")
    assert time.monotonic() - t < 60
    name = f"foreign_{uuid.uuid4().hex[:8]}"
    with pytest.raises(SiamfaceError, match="gallery not found"):
        Gallery.open(milvus_server.spec(name))
    c = MilvusClient(uri=milvus_server.uri)
    schema = MilvusClient.create_schema(auto_id=True)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=4)
    c.create_collection(name, schema=schema)
    c.close()
    with pytest.raises(SiamfaceError, match="not a siamface gallery"):
        Gallery.open(milvus_server.spec(name))
    with pytest.raises(SiamfaceError, match="exists and is not a siamface gallery"):
        Gallery.create(milvus_server.spec(name), fingerprint=FP, embedding_size=DIM)
    for bad in ("milvus://127.0.0.1:1/bad-name", "milvus://:19530/x", "ftp://h/x"):
        with pytest.raises(SiamfaceError, match="Milvus|scheme|collection"):
            Gallery.open(bad)


def test_transient_server_outage_is_retried(tmp_path, x):
    """The server dies and comes back (same port, same data) while a client searches and
    enrolls: the calls are retried and succeed, and nothing committed is lost."""
    pytest.importorskip("milvus_lite")
    from milvus_server import MilvusServer

    server = MilvusServer(tmp_path / "srv").start()
    try:
        g = Gallery.create(server.spec("outage"), fingerprint=FP, embedding_size=DIM)
        g.enroll("before", x[0], fingerprint=FP)
        # the server's restart takes seconds more on a loaded machine: allow up to ~2 min
        g.retry_delays = (0.2, 0.5, 1.0) + (2.0,) * 60
        server.kill()
        restart = threading.Timer(1.0, server.start, kwargs={"port": server.port})
        restart.start()
        assert g.search(x[0, 0], fingerprint=FP)[0].identity == "before"
        g.enroll("after", x[1], fingerprint=FP)
        restart.join()
        assert {p.name for p in g.people()} == {"before", "after"}
        g.close()
    finally:
        server.close()


MIGRATE = textwrap.dedent(
    """
    import sys
    from siamface.gallery.migrate import migrate
    rep = migrate(sys.argv[1], sys.argv[2], batch=7, sample=10)
    print(rep.verified)
    """
)


def test_migrate_both_ways_resumable_and_verified(milvus_server, tmp_path, x):
    """builtin -> Milvus (interrupted after its first batch, then resumed) -> builtin."""
    from siamface.gallery.migrate import migrate

    src = str(tmp_path / "src")
    with Gallery.create(src, fingerprint=FP, embedding_size=DIM, threshold=0.6) as g:
        g.enroll_many(
            [
                NewPerson(f"p{i:02d}", x[i], [f"{i}_{j}" for j in range(3)], (), {"i": i})
                for i in range(20)
            ],
            fingerprint=FP,
        )
        g.enroll("thumbed", x[0, :1] * -1, fingerprint=FP, thumbnail=b"\xff\xd8\xff" + b"t" * 9)
        g.set_aggregation("max")
    mil = milvus_server.spec(f"m_{uuid.uuid4().hex[:8]}")
    env = {**os.environ, FAULT_ENV: "enroll:after-commit:kill"}
    cut = subprocess.run([sys.executable, "-c", MIGRATE, src, mil], env=env, timeout=300)
    assert cut.returncode == -signal.SIGKILL
    with Gallery.open(mil) as m:
        assert len(m) == 7  # the first batch only
    rep = migrate(src, mil, batch=7, sample=10)
    assert rep.verified and rep.skipped_existing == 7 and rep.copied_people == 14, rep
    assert rep.counts == {"source": [21, 61], "destination": [21, 61]}
    assert rep.top1_identical == rep.sample == 10 and rep.max_score_diff < 1e-4
    back = str(tmp_path / "back")
    rep2 = migrate(mil, back, batch=5, sample=21)
    assert rep2.verified and rep2.created and rep2.copied_people == 21
    with Gallery.open(src) as a, Gallery.open(back) as b:
        assert [(p.name, p.n_images, p.metadata) for p in a.people()] == [
            (p.name, p.n_images, p.metadata) for p in b.people()
        ]
        assert b.threshold.value == 0.6 and b.aggregation == "max"
        assert b.thumbnail("thumbed") == a.thumbnail("thumbed")
        ea, eb = a.export(["p05"])[0], b.export(["p05"])[0]
        np.testing.assert_array_equal(ea.embeddings, eb.embeddings)
        assert ea.refs == eb.refs
    # into a gallery of another model: refused
    with pytest.raises(SiamfaceError, match="another model|built with model"):
        other = str(tmp_path / "other")
        Gallery.create(other, fingerprint="9" * 16, embedding_size=DIM).close()
        migrate(src, other)
