"""Input that used to be dropped without a word is reported by every command that scans
folders: a dangling symlink, an empty identity folder, a 1x1 "photo", a .gif file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import SHARED_DATA, copy_identities, needs_data
from PIL import Image

from siamface.cli.main import main
from siamface.folders.images import MIN_IMAGE_SIDE, ImageLoadError, load_rgb

pytestmark = needs_data
FAST = ["--workers", "0", "--no-progress"]


def _spoil(root):
    """Add the four silently-ignored cases to an identity-folder tree; returns their names."""
    people = sorted(p for p in root.iterdir() if p.is_dir())
    a, b = people[0], people[1]
    (a / "ghost.jpg").symlink_to(root / "nowhere" / "gone.jpg")  # dangling
    Image.new("RGB", (1, 1), (120, 90, 80)).save(b / "tiny.png")
    src = next(a.glob("*.jpg"))
    Image.open(src).save(b / "animated.gif")
    (root / "nobody").mkdir()
    return {"ghost": a / "ghost.jpg", "tiny": b / "tiny.png", "gif": b / "animated.gif"}


@pytest.fixture(scope="module")
def spoiled(pins_small, tmp_path_factory):
    root = tmp_path_factory.mktemp("spoiled") / "faces"
    shutil.copytree(pins_small, root, symlinks=True)
    return root, _spoil(root)


def test_tiny_images_are_unreadable_with_the_reason(tmp_path):
    for size in ((1, 1), (MIN_IMAGE_SIDE - 1, 200)):
        p = tmp_path / f"{size[0]}x{size[1]}.png"
        Image.new("RGB", size).save(p)
        with pytest.raises(ImageLoadError, match="image too small"):
            load_rgb(p)
    Image.new("RGB", (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE)).save(tmp_path / "ok.png")
    assert load_rgb(tmp_path / "ok.png").size == (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE)
    link = tmp_path / "dangling.jpg"
    link.symlink_to(tmp_path / "missing.jpg")
    with pytest.raises(ImageLoadError, match="broken symbolic link"):
        load_rgb(link)


def test_embed_lists_every_file_it_did_not_embed(spoiled, tiny_checkpoint, tmp_path, capsys):
    root, bad = spoiled
    out = tmp_path / "e.npz"
    rc = main(["embed", "--model", str(tiny_checkpoint), "--data", str(root), "--out",
               str(out), "--json", *FAST])  # fmt: skip
    assert rc == 0
    skipped = {s["path"]: s["reason"] for s in json.loads(capsys.readouterr().out)["skipped"]}
    rel = {k: v.relative_to(root).as_posix() for k, v in bad.items()}
    assert "broken symbolic link" in skipped[rel["ghost"]]
    assert "image too small (1x1" in skipped[rel["tiny"]]
    assert "unsupported file type '.gif'" in skipped[rel["gif"]]
    assert "folder without image files" in skipped["nobody"]
    z = np.load(out)
    assert set(z["skipped"]) == set(skipped) and rel["tiny"] not in set(z["paths"])


def test_data_check_reports_them(spoiled, capsys):
    root, bad = spoiled
    assert main(["data", "check", str(root), "--json", "--no-progress"]) == 0
    rep = json.loads(capsys.readouterr().out)
    unreadable = {u["path"]: u["reason"] for u in rep["unreadable"]}
    assert "broken symbolic link" in unreadable[str(bad["ghost"])]
    assert "image too small" in unreadable[str(bad["tiny"])]
    ignored = {u["path"]: u["reason"] for u in rep["ignored_files"]}
    assert "'.gif'" in ignored[str(bad["gif"])]
    assert rep["empty_identities"] == [str(root / "nobody")]
    assert any("nobody" in w for w in rep["warnings"])
    assert rep["identities"] == 12  # the empty folder is not an identity
    assert main(["data", "check", str(root), "--no-progress"]) == 0
    text = capsys.readouterr().out
    for words in ("ghost.jpg", "tiny.png", "animated.gif", "empty identity folders"):
        assert words in text


def test_evaluate_reports_them(spoiled, tiny_checkpoint, tmp_path, capsys):
    root, bad = spoiled
    rc = main(["evaluate", "--model", str(tiny_checkpoint), "--data", str(root), "--out",
               str(tmp_path / "ev"), "--no-plots", *FAST])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "not used" in out  # the note on ignored files and empty folders
    data = json.loads((tmp_path / "ev" / "report.json").read_text())["data"]
    unreadable = {u["path"]: u["reason"] for u in data["unreadable"]}
    assert "broken symbolic link" in unreadable[str(bad["ghost"])]
    assert "image too small" in unreadable[str(bad["tiny"])]
    ignored = {u["path"]: u["reason"] for u in data["ignored"]}
    assert str(bad["gif"]) in ignored and "empty identity folder" in ignored[str(root / "nobody")]


def test_gallery_enroll_refuses_a_tiny_image_and_lists_the_rest(
    spoiled, tiny_checkpoint, tmp_path, capsys
):
    root, _ = spoiled
    g = tmp_path / "g"
    rc = main(["gallery", "enroll", str(g), str(root), "--model", str(tiny_checkpoint)])
    err = capsys.readouterr().err
    assert rc == 2 and "image too small (1x1" in err and "broken symbolic link" in err
    rc = main(["gallery", "enroll", str(g), str(root), "--model", str(tiny_checkpoint),
               "--skip-bad", "--json"])  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    text = json.dumps(out)
    assert "tiny.png" in text and "animated.gif" in text and "nobody" in text


def test_prepare_reports_them(tmp_path, capsys):
    raw = copy_identities(SHARED_DATA / "celeba_wild", tmp_path / "raw", 2, 2)
    bad = _spoil(raw)
    out = tmp_path / "faces"
    assert main(["prepare", str(raw), str(out), "--no-progress", "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "animated.gif" in text and "nobody" in text
    rep = json.loads((out / "siamface_prepare_report.json").read_text())
    unreadable = {u["path"]: u["reason"] for u in rep["problems"]["unreadable"]}
    rel = {k: str(v.relative_to(raw)) for k, v in bad.items()}
    assert "broken symbolic link" in unreadable[rel["ghost"]]
    assert "image too small" in unreadable[rel["tiny"]]
    ignored = {u["path"]: u["reason"] for u in rep["ignored_files"]}
    assert str(bad["gif"]) in ignored and "empty identity" in ignored[str(raw / "nobody")]
