"""``siamface data camera-copy``: photo folders as a distant, compressed camera sees them.

Real photos from the sample data, the real CLI entry point; properties of a camera copy, not
a re-computation of it: names and sizes kept, detail lost in proportion to the distance and
the codec, the same bytes every time, and bad input reported, never a traceback.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, copy_identities, needs_data
from PIL import Image

from siamface.cli.main import main

QUIET = ["--no-progress"]


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / max(np.mean((a - b) ** 2), 1e-12)))


def _files(root: Path) -> list[Path]:
    return sorted(f.relative_to(root) for f in root.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Raw celeba_wild photos: 3 people x 2."""
    if not (SHARED_DATA / "celeba_wild").is_dir():
        pytest.skip(f"sample data not found at {SHARED_DATA}")
    return copy_identities(SHARED_DATA / "celeba_wild", tmp_path_factory.mktemp("c") / "p", 3, 2)


@needs_data
def test_a_copy_keeps_names_and_sizes_and_loses_detail_with_distance(photos, tmp_path, capsys):
    copies = {}
    for shrink, q in [(2, 90), (8, 90), (8, 15)]:
        out = tmp_path / f"s{shrink}q{q}"
        args = ["data", "camera-copy", str(photos), str(out), "--shrink", str(shrink)]
        assert main([*args, "--jpeg", str(q), "--json", *QUIET]) == 0
        rep = json.loads(capsys.readouterr().out)
        assert rep["written"] == 6 and rep["unreadable"] == [] and rep["ignored"] == []
        assert _files(out) == _files(photos)  # identity folders and pairs files still match
        copies[(shrink, q)] = out
    psnr = {}
    for key, out in copies.items():
        vals = []
        for rel in _files(photos):
            a, b = _pixels(photos / rel), _pixels(out / rel)
            assert a.shape == b.shape
            vals.append(_psnr(a, b))
        psnr[key] = float(np.mean(vals))
    # farther away loses more; a worse codec at the same distance loses more again
    assert psnr[(2, 90)] > psnr[(8, 90)] + 3 > psnr[(8, 15)] + 3
    # what is left is what the small image could hold: shrinking the copy again and scaling
    # it back changes it far less than it changes the photo
    rel = _files(photos)[0]
    a, b = Image.open(photos / rel).convert("RGB"), Image.open(copies[(8, 90)] / rel)
    small = (a.width // 8, a.height // 8)

    def again(im):
        return np.asarray(im.resize(small, Image.Resampling.BOX).resize(im.size), np.float64)

    assert _psnr(again(b), np.asarray(b, np.float64)) > _psnr(again(a), _pixels(photos / rel)) + 5


@needs_data
def test_the_copy_is_the_same_bytes_every_time_and_faces_are_still_found(photos, tmp_path):
    from siamface.embed.load import create_embedder

    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert main(["data", "camera-copy", str(photos), str(out), *QUIET]) == 0
    assert [(a / r).read_bytes() for r in _files(a)] == [(b / r).read_bytes() for r in _files(b)]
    sface = create_embedder("sface", device="cpu")
    rels = _files(photos)
    clean, err1 = sface.embed_paths([photos / r for r in rels], progress=False, workers=0)
    cam, err2 = sface.embed_paths([a / r for r in rels], progress=False, workers=0)
    assert not err1 and not err2
    same_photo = np.einsum("ij,ij->i", clean, cam)
    assert (same_photo < 0.995).all() and same_photo.mean() > 0.3  # changed, still that face


def test_bad_input_is_reported_and_nothing_is_overwritten(tmp_path, capsys):
    src = tmp_path / "src" / "ann"
    src.mkdir(parents=True)
    Image.fromarray(np.full((80, 60, 3), 120, np.uint8)).save(src / "ok.jpg")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "notes.txt").write_text("hello")
    out = tmp_path / "out"
    assert main(["data", "camera-copy", str(src.parent), str(out), "--json", *QUIET]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["written"] == 1 and [u["path"] for u in rep["unreadable"]] == ["ann/broken.jpg"]
    assert [i["path"] for i in rep["ignored"]] == ["ann/notes.txt"]
    assert _files(out) == [Path("ann/ok.jpg")]

    before = (out / "ann" / "ok.jpg").read_bytes()
    cases = [
        ([str(src.parent), str(out)], "is not an empty folder"),  # never over an earlier copy
        ([str(src.parent), str(src / "inner")], "must be outside"),
        ([str(src.parent), str(tmp_path / "x"), "--shrink", "0.5"], "--shrink must be"),
        ([str(src.parent), str(tmp_path / "x"), "--jpeg", "101"], "--jpeg must be"),
        ([str(tmp_path / "missing"), str(tmp_path / "x")], "is not a folder"),
    ]
    for args, why in cases:
        assert main(["data", "camera-copy", *args, *QUIET]) == 2
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err
    assert (out / "ann" / "ok.jpg").read_bytes() == before
    assert not (src / "inner").exists() and not (tmp_path / "x").exists()

    only_bad = tmp_path / "bad" / "bob"
    only_bad.mkdir(parents=True)
    shutil.copy(src / "broken.jpg", only_bad / "b.jpg")
    assert main(["data", "camera-copy", str(only_bad.parent), str(tmp_path / "y"), *QUIET]) == 2
    assert "no readable photo" in capsys.readouterr().err
