"""Robust image decoding, folder scanning, identity split and the dataset report."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from siamface.errors import SiamfaceError
from siamface.folders.identities import scan_identity_folders
from siamface.folders.images import ImageLoadError, load_rgb
from siamface.folders.report import build_report
from siamface.folders.split import split_identities


def _save(img: Image.Image, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


@pytest.mark.parametrize(
    "mode,suffix",
    [
        ("L", ".pgm"),
        ("RGBA", ".png"),
        ("P", ".png"),
        ("I;16", ".png"),
        ("CMYK", ".jpg"),
        ("RGB", ".webp"),
        ("1", ".bmp"),
    ],
)
def test_load_rgb_converts_every_mode_to_8bit_rgb(tmp_path, mode, suffix):
    arr = (np.arange(40 * 30) % 251).reshape(30, 40)
    if mode == "I;16":
        img = Image.fromarray((arr * 200).astype(np.uint16))
    else:
        img = Image.fromarray(arr.astype(np.uint8)).convert(mode)
    out = load_rgb(_save(img, tmp_path / f"x{suffix}"))
    assert out.mode == "RGB" and out.size == (40, 30)
    if mode == "I;16":  # 16-bit data is rescaled, not clipped to white
        assert np.asarray(out).max() == 255 and np.asarray(out).min() == 0


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (60, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = _save(img, tmp_path / "rot.jpg", exif=exif)
    assert load_rgb(path).size == (20, 60)


@pytest.mark.parametrize(
    "content,reason",
    [(b"", "empty"), (b"hello world, not an image", "not a recognised"), (None, "truncated")],
)
def test_bad_files_raise_image_load_error(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    if content is None:  # a real JPEG cut in half
        _save(Image.new("RGB", (64, 64), (1, 2, 3)), path, quality=95)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=reason):
        load_rgb(path)


def test_missing_file_raises(tmp_path):
    with pytest.raises(ImageLoadError, match="not found"):
        load_rgb(tmp_path / "nope.png")


def test_scan_prefixes_identities_when_combining_roots(tmp_path):
    for root in ("a", "b"):
        _save(Image.new("RGB", (8, 8)), tmp_path / root / "0001" / "x.png")
    (tmp_path / "a" / "README.txt").write_text("hi")
    scan = scan_identity_folders([tmp_path / "a", tmp_path / "b"])
    assert scan.identities == ["a/0001", "b/0001"]
    assert any("README" in str(p) for p, _ in scan.ignored)


@pytest.mark.parametrize("kind", ["missing", "file", "empty"])
def test_scan_rejects_bad_roots(tmp_path, kind):
    root = tmp_path / "root"
    if kind == "file":
        root.write_text("x")
    elif kind == "empty":
        (root / "person").mkdir(parents=True)
    with pytest.raises(SiamfaceError):
        scan_identity_folders([root])


def test_split_is_identity_disjoint_seeded_and_sized():
    ids = [f"id{i:03d}" for i in range(50)]
    tr, va = split_identities(ids, 0.2, seed=1)
    assert len(va) == 10 and not set(tr) & set(va) and sorted(tr + va) == ids
    assert split_identities(ids, 0.2, seed=1) == (tr, va)
    assert split_identities(ids, 0.2, seed=2)[1] != va
    assert len(split_identities(ids, 7, seed=0)[1]) == 7
    assert split_identities(ids, 0, seed=0) == (ids, [])
    with pytest.raises(SiamfaceError):
        split_identities(ids[:3], 2, seed=0)


def test_report_counts_pairs_duplicates_and_exclusions(tmp_path):
    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    for ident, n in (("alice", 3), ("bob", 2), ("carol", 1)):
        for k in range(n):
            arr = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            _save(Image.fromarray(arr), root / ident / f"{k}.png")
    shutil.copy(root / "alice" / "0.png", root / "alice" / "dup.png")  # within identity
    shutil.copy(root / "alice" / "1.png", root / "bob" / "stolen.png")  # across identities
    scan = scan_identity_folders([root])
    rep = build_report(scan.samples)
    # alice 4 images, bob 3; carol (1 image) excluded
    assert rep.identities == 2 and rep.images == 7
    assert rep.positive_pairs == 6 + 3 and rep.negative_pairs == 21 - 9
    assert rep.excluded_identities == ["carol"]
    assert len(rep.duplicates_within_identity) == 1
    assert rep.duplicates_across_identities[0]["identities"] == ["alice", "bob"]
    assert any("labelling" in w for w in rep.warnings)
    assert any("below the article's small-task" in w for w in rep.warnings)
