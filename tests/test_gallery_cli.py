"""``siamface gallery`` / ``identify`` / ``evaluate-1n`` end to end with a tiny model, and
enrollment planning (folders, names, bad images, images without a face)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siamface.cli.main import main
from siamface.embed.load import Embedder
from siamface.embed.pipeline import embed_files
from siamface.errors import SiamfaceError
from siamface.folders.images import ImageLoadError, load_rgb, resize_uint8
from siamface.gallery import Gallery, NewPerson
from siamface.gallery.enroll import embed_plan, plan_enrollment
from siamface.tensors.transforms import Preprocessing


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def people(pins_small, tmp_path) -> Path:
    """Six identity folders of four images (a private copy)."""
    dst = tmp_path / "people"
    for d in sorted(pins_small.iterdir())[:6]:
        (dst / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:4]:
            shutil.copy2(f, dst / d.name / f.name)
    return dst


def listing(capsys, gallery) -> dict:
    rc, out, _ = run_cli(capsys, "gallery", "list", gallery, "--json")
    assert rc == 0
    return json.loads(out)


def test_enroll_identify_list_remove(capsys, tiny_checkpoint, people, tmp_path):
    g = tmp_path / "gal"
    rc, out, err = run_cli(
        capsys,
        "gallery",
        "enroll",
        g,
        "--model",
        tiny_checkpoint,
        people,
        "--json",
        "--no-progress",
        "--metadata",
        '{"site": "hq"}',
    )
    assert rc == 0, err
    res = json.loads(out)
    assert res["created"] and res["people"] == 6 and res["images"] == 24
    names = sorted(p.name for p in people.iterdir())
    info = listing(capsys, g)
    assert [p["name"] for p in info["people"]] == names
    assert info["people"][0]["metadata"] == {"site": "hq"}
    assert info["gallery"]["threshold"] == 0.5  # the model's threshold by default
    # each person's first face, as the model sees it (64 px input), as a small JPEG
    with Gallery.open(g) as gal:
        thumb = gal.thumbnail(names[0])
    face = Image.open(io.BytesIO(thumb))
    assert face.format == "JPEG" and face.size == (64, 64)
    # identify an enrolled image: its person ranks first with a high score
    probe = sorted((people / names[2]).iterdir())[0]
    rc, out, _ = run_cli(capsys, "identify", g, probe, "--top-k", "3", "--json")
    assert rc == 0
    r = json.loads(out)
    assert r["matches"][0]["name"] == names[2] and len(r["matches"]) == 3
    assert r["identity"] in (names[2], "unknown")
    rc, out, _ = run_cli(capsys, "identify", g, probe, "--threshold", "1.0")
    assert rc == 0 and "unknown" in out and names[2] in out
    # more images of one person; a new single person by --name (no model needed any more)
    extra = sorted((people / names[0]).iterdir())[0]
    rc, _, err = run_cli(capsys, "gallery", "enroll", g, "--name", "Solo Person", extra)
    assert rc == 0, err
    rc, _, _ = run_cli(capsys, "gallery", "enroll", g, "--name", names[1], "--append", extra)
    assert rc == 0
    info = listing(capsys, g)
    counts = {p["name"]: p["n_images"] for p in info["people"]}
    assert counts["Solo Person"] == 1 and counts[names[1]] == 5
    rc, out, _ = run_cli(capsys, "gallery", "remove", g, "Solo Person", names[0])
    assert rc == 0 and "5 people remain" in out
    rc, out, _ = run_cli(capsys, "gallery", "set", g, "--threshold", "0.3", "--aggregation", "max")
    assert rc == 0 and "max" in out
    assert listing(capsys, g)["gallery"]["index"]["vectors"] == 4 * 4 + 5  # every image


def _bad_call(capsys, *argv) -> str:
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2, (out, err)
    assert "Traceback" not in err
    return err


def test_bad_input_gives_clear_errors_and_leaves_gallery_unchanged(
    capsys, tiny_checkpoint, people, tmp_path
):
    g = tmp_path / "gal"
    assert run_cli(capsys, "gallery", "enroll", g, "--model", tiny_checkpoint, people)[0] == 0
    before = listing(capsys, g)
    # duplicate name
    err = _bad_call(capsys, "gallery", "enroll", g, people)
    assert "already enrolled" in err
    # an unreadable image among good ones: nothing enrolled
    mixed = tmp_path / "mixed" / "newbie"
    mixed.mkdir(parents=True)
    shutil.copy2(next((people / sorted(p.name for p in people.iterdir())[0]).iterdir()), mixed)
    (mixed / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    err = _bad_call(capsys, "gallery", "enroll", g, mixed.parent)
    assert "broken.jpg" in err and "nothing was enrolled" in err
    # ... unless --skip-bad, tested on a copy so the original stays comparable
    # empty folder, loose images without a name, missing inputs
    (tmp_path / "empty").mkdir()
    assert "no images found" in _bad_call(capsys, "gallery", "enroll", g, tmp_path / "empty")
    assert "--name" in _bad_call(capsys, "gallery", "enroll", g, mixed / "broken.jpg")
    assert "not found" in _bad_call(capsys, "gallery", "enroll", g, tmp_path / "nothing")
    # an image of the wrong model's size / another model
    other = tmp_path / "other.safetensors"
    _other_model(tiny_checkpoint, other, embedding_size=16)
    err = _bad_call(capsys, "gallery", "enroll", g, "--model", other, "--name", "x", mixed)
    assert "16-d" in err
    _other_model(tiny_checkpoint, other, embedding_size=32)
    probe = next(mixed.glob("*.jpg"))
    assert "built with model" in _bad_call(capsys, "identify", g, probe, "--model", other)
    assert listing(capsys, g) == before
    # --skip-bad enrolls the readable image and lists the skipped one
    rc, out, err = run_cli(capsys, "gallery", "enroll", g, mixed.parent, "--skip-bad", "--json")
    assert rc == 0
    res = json.loads(out)
    assert res["people"] == 7 and [Path(s["path"]).name for s in res["skipped_images"]] == [
        "broken.jpg"
    ]
    # missing / corrupt gallery folders
    assert "gallery not found" in _bad_call(capsys, "gallery", "list", tmp_path / "nope")
    assert "give --model" in _bad_call(capsys, "gallery", "enroll", tmp_path / "new", people)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "gallery.sqlite").write_bytes(b"garbage" * 1000)
    assert "corrupt" in _bad_call(capsys, "identify", corrupt, probe)
    assert "not a siamface gallery" in _bad_call(
        capsys, "gallery", "enroll", people, "--model", tiny_checkpoint, people
    )
    assert "cannot use" in _bad_call(capsys, "identify", g, mixed / "broken.jpg")


def _other_model(tiny_checkpoint: Path, out: Path, embedding_size: int) -> None:
    import torch

    from siamface.model.checkpoint import load_checkpoint, save_checkpoint
    from siamface.model.network import ModelConfig, build_model

    ck = load_checkpoint(tiny_checkpoint)
    torch.manual_seed(embedding_size)
    ck.model_cfg = ModelConfig(backbone=ck.model_cfg.backbone, embedding_size=embedding_size)
    ck.state_dict = build_model(ck.model_cfg).state_dict()
    save_checkpoint(ck, out)


class FakeEmbedder(Embedder):
    """Colour statistics as 'embeddings'; files named *noface* have no detectable face."""

    def __init__(self) -> None:
        self.preprocessing = Preprocessing(image_size=16)
        self.fingerprint, self.embedding_size, self.threshold = "0" * 16, 8, None
        self.source, self.info = Path("fake"), {}

    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        x = pixels.reshape(len(pixels), 3, -1).astype(np.float32)
        f = np.concatenate([x.mean(2), x.std(2), np.ones((len(x), 2))], 1)
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    def embed_paths(self, paths, batch_size=64, workers=None, progress=False, ambiguous="pick"):
        def loader(p: Path) -> np.ndarray:
            if "noface" in p.name:
                raise ImageLoadError("no face found")
            return resize_uint8(load_rgb(p), 16)

        return embed_files(self.embed_batch, paths, self.preprocessing, loader=loader, workers=0)


def _img(path: Path, colour) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 20), colour).save(path)
    return path


def test_plan_and_embed_with_images_without_a_face(tmp_path):
    root = tmp_path / "ids"
    _img(root / "ann" / "1.png", (200, 10, 10))
    _img(root / "ann" / "2.png", (190, 20, 10))
    _img(root / "bob" / "noface.png", (10, 10, 200))
    _img(root / "bob" / "1.png", (10, 20, 190))
    (root / "notes.txt").write_text("ignored")
    plan = plan_enrollment([root])
    assert [(n, len(p)) for n, p in plan.groups] == [("ann", 2), ("bob", 2)]
    assert plan.ignored and plan.ignored[0][0].name == "notes.txt"
    fake = FakeEmbedder()
    with pytest.raises(SiamfaceError, match=r"(?s)no face found.*nothing was enrolled"):
        embed_plan(fake, plan)
    got = embed_plan(fake, plan, skip_bad=True)
    assert [p.name for p in got.people] == ["ann", "bob"]
    assert [p.name for p, _ in got.skipped_images] == ["noface.png"]
    # a person whose only image has no face is skipped (with --skip-bad) and listed
    only = plan_enrollment([_img(tmp_path / "x" / "noface.jpg", (1, 2, 3))], name="ghost")
    with pytest.raises(SiamfaceError, match="no usable image"):
        embed_plan(fake, only, skip_bad=True)
    # one folder of images = one person named after it; --name collects files
    assert plan_enrollment([root / "ann"]).groups[0][0] == "ann"
    solo = plan_enrollment([root / "ann" / "1.png", root / "bob"], name="Zed")
    assert solo.groups[0][0] == "Zed" and len(solo.groups[0][1]) == 3
    with pytest.raises(SiamfaceError, match="not an image"):
        plan_enrollment([root / "notes.txt"], name="Zed")
    # enrolling through the API records duplicates of identical files under two names
    g = Gallery.create(tmp_path / "g", fingerprint=fake.fingerprint, embedding_size=8)
    people = embed_plan(fake, plan, skip_bad=True).people
    g.enroll_many(people, fingerprint=fake.fingerprint)
    twin = plan_enrollment([root / "ann" / "1.png"], name="ann twin")
    dupes = g.duplicates_elsewhere(embed_plan(fake, twin).people)
    assert [d["other"] for d in dupes] == ["ann"]
    g.close()


def test_evaluate_1n_cli(capsys, tiny_checkpoint, pins_small, tmp_path):
    out_file = tmp_path / "report.json"
    rc, out, err = run_cli(
        capsys,
        "evaluate-1n",
        "--model",
        tiny_checkpoint,
        "--data",
        pins_small,
        "--strangers",
        "4",
        "--enroll-images",
        "3",
        "--json",
        "--out",
        out_file,
        "--far",
        "0.05",
        "--far",
        "0.001",
    )
    assert rc == 0, err
    rep = json.loads(out)
    assert rep == json.loads(out_file.read_text())
    assert rep["split"]["enrolled_identities"] == 8 and rep["split"]["stranger_identities"] == 4
    assert rep["split"]["genuine_probes"] == 8 * 5 and rep["split"]["stranger_probes"] == 32
    for agg in ("mean", "max"):
        m = rep["results"][agg]
        assert 0 <= m["rank"]["1"] <= m["rank"]["5"] <= m["rank"]["10"] <= 1
        assert m["dir_at_far"]["1e-03"] is None  # below 1/32: not measurable
        assert 0 <= m["dir_at_far"]["5e-02"] <= m["rank"]["1"]
    assert rep["best_aggregation"] in ("mean", "max")
    err = _bad_call(
        capsys, "evaluate-1n", "--model", tiny_checkpoint, "--data", pins_small, "--strangers", "11"
    )
    assert "stranger" in err


def test_cli_on_a_milvus_gallery_and_migrate(
    capsys, tiny_checkpoint, people, tmp_path, milvus_server
):
    """The same commands against a Milvus server, then `gallery migrate` to a folder."""
    spec = milvus_server.spec("cli_gallery")
    rc, out, err = run_cli(
        capsys,
        "gallery",
        "enroll",
        spec,
        "--model",
        tiny_checkpoint,
        people,
        "--json",
        "--no-progress",
    )
    assert rc == 0, err
    assert json.loads(out)["people"] == 6
    names = sorted(p.name for p in people.iterdir())
    probe = sorted((people / names[2]).iterdir())[0]
    rc, out, _ = run_cli(capsys, "identify", spec, probe, "--top-k", "3", "--json")
    assert rc == 0 and json.loads(out)["matches"][0]["name"] == names[2]
    with Gallery.open(spec) as g:
        assert Image.open(io.BytesIO(g.thumbnail(names[0]))).size == (64, 64)
    assert run_cli(capsys, "gallery", "remove", spec, names[0])[0] == 0
    info = listing(capsys, spec)
    assert info["gallery"]["backend"] == "milvus" and len(info["people"]) == 5
    dst = tmp_path / "copy"
    rc, out, err = run_cli(capsys, "gallery", "migrate", spec, dst, "--json", "--sample", "5")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["verified"] and rep["copied_people"] == 5 and rep["top1_identical"] == 5
    rc, out, _ = run_cli(capsys, "identify", dst, probe, "--top-k", "3", "--json")
    assert rc == 0 and json.loads(out)["matches"][0]["name"] == names[2]
    # unreachable server: one clear line, exit 2
    from milvus_server import free_port

    err = _bad_call(capsys, "gallery", "list", f"milvus://127.0.0.1:{free_port()}/x")
    assert "cannot reach the Milvus server" in err


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MB filesystem (tmpfs), to fill up. Needs the right to mount (root in CI)."""
    import subprocess

    where = tmp_path / "small"
    where.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()}): disk-full CLI test")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder: Path, spare: int = 0) -> Path:
    """Fill the filesystem, then give back ``spare`` bytes."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - spare))
    return filler


@pytest.mark.parametrize("spare", [0, 96 * 1024])
def test_enroll_on_a_full_disk_says_so(capsys, tiny_checkpoint, people, small_disk, spare):
    """Full before the gallery is opened (spare 0), or filling up while the enrollment is
    written (spare: opening still fits): either way the real cause, and nothing written."""
    g = small_disk / "gal"
    names = sorted(p.name for p in people.iterdir())
    rc, _, err = run_cli(
        capsys, "gallery", "enroll", g, "--model", tiny_checkpoint, people / names[0]
    )
    assert rc == 0, err
    before = listing(capsys, g)
    filler = _fill(small_disk, spare)
    many = [people / n for n in names[1:]]
    err = _bad_call(capsys, "gallery", "enroll", g, *many)
    # full before any work: refused by the output check; filling up while writing: rolled back
    full = "the disk is full" in err if spare == 0 else "is full; nothing was written" in err
    assert full and "cannot rollback" not in err, err
    filler.unlink()
    assert listing(capsys, g) == before  # nothing half-written; the gallery still works
    rc, _, err = run_cli(capsys, "gallery", "enroll", g, people / names[1])
    assert rc == 0, err


def _synthetic_gallery(path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    with Gallery.create(path, fingerprint="a" * 16, embedding_size=8, threshold=0.5) as g:
        g.enroll_many([NewPerson(f"p{i}", x[i]) for i in range(5)], fingerprint="a" * 16)


def _edit_setting(path: Path, key: str, raw: str) -> None:
    import sqlite3

    conn = sqlite3.connect(path / "gallery.sqlite")
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, raw))
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    "key,raw,repair",
    [
        ("threshold", '"high"', ["--threshold", "0.5"]),
        ("threshold", "5", ["--no-threshold"]),
        ("threshold", "not json", ["--threshold", "0.4"]),
        ("aggregation", '"median"', ["--aggregation", "mean"]),
        ("index_kind", '"bogus"', ["--index", "auto"]),
        ("index_params", "[1, 2]", ["--index", "auto"]),
        ("embedding_size", '"x"', None),
        ("embedding_size", "-3", None),
        ("fingerprint", "123", None),
        ("version", '"x"', None),
        ("format_version", '"9"', None),
        ("model_source", "42", None),
    ],
)
def test_hand_edited_settings_give_a_clear_error(capsys, tmp_path, key, raw, repair):
    g = tmp_path / "g"
    _synthetic_gallery(g)
    _edit_setting(g, key, raw)
    err = _bad_call(capsys, "gallery", "list", g)
    assert key in err and str(g) in err and len(err.strip().splitlines()) == 1, err
    assert ("gallery set" in err) == (repair is not None), err
    if repair is not None:  # the command the message names repairs it
        rc, _, err = run_cli(capsys, "gallery", "set", g, *repair)
        assert rc == 0, err
        assert len(listing(capsys, g)["people"]) == 5


def test_damaged_index_header_is_rebuilt(capsys, tmp_path):
    """An index file whose header is a JSON list, or has fields of the wrong type, is
    treated as damaged: listed as 'not built', and rebuilt from the database on search."""
    import struct

    from siamface.gallery.index_file import _MAGIC, read_index_header

    g = tmp_path / "g"
    _synthetic_gallery(g)
    f = g / "index.bin"
    body = f.read_bytes()
    head_len = struct.unpack("<Q", body[len(_MAGIC) : len(_MAGIC) + 8])[0]
    rest = body[len(_MAGIC) + 8 + head_len :]
    good = read_index_header(f)
    for header in ([1, 2, 3], {**good, "dim": "eight"}, {**good, "params": [1]}, "text"):
        raw = json.dumps(header).encode()
        f.write_bytes(_MAGIC + struct.pack("<Q", len(raw)) + raw + rest)
        info = listing(capsys, g)["gallery"]
        if not isinstance(header, dict):
            assert info["index"]["kind"] is None and not info["index"]["current"]
        with (
            Gallery.open(g) as gal,
            pytest.warns(UserWarning, match="damaged|rebuild")
            if (isinstance(header, dict))
            else contextlib.nullcontext(),
        ):
            q = np.ones(8, np.float32)
            assert gal.search(q, 2, fingerprint="a" * 16, closed_set=True)[0].known
        assert read_index_header(f)["dim"] == 8  # rebuilt and saved


def test_database_full_during_enrollment_is_reported_and_rolled_back(tmp_path):
    """SQLITE_FULL in the middle of a transaction (SQLite's own page limit standing in for
    the disk): the real cause is reported, nothing is written, the gallery still works."""
    g = tmp_path / "g"
    _synthetic_gallery(g)
    rng = np.random.default_rng(1)
    big = [NewPerson(f"n{i}", rng.standard_normal((50, 8)).astype(np.float32)) for i in range(50)]
    with Gallery.open(g) as gal:
        before = [p.to_dict() for p in gal.people()], gal.counts()
        pages = gal.store.conn.execute("PRAGMA page_count").fetchone()[0]
        gal.store.conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        with pytest.raises(SiamfaceError, match="is full; nothing was written"):
            gal.enroll_many(big, fingerprint="a" * 16)
        assert ([p.to_dict() for p in gal.people()], gal.counts()) == before
        gal.store.conn.execute("PRAGMA max_page_count = 1073741823")
        gal.enroll_many(big[:2], fingerprint="a" * 16)
        assert len(gal) == 7
