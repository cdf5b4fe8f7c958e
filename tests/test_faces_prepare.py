"""``siamface prepare``: raw identity folders -> aligned crops, bad files, resume, policies."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SHARED_DATA
from PIL import Image

from siamface.cli.main import main
from siamface.errors import SiamfaceError
from siamface.faces.align import AlignParams, align_face_image
from siamface.faces.detect import DEFAULT_DETECTOR
from siamface.faces.prepare import (
    LOG_NAME,
    MARKER_NAME,
    REPORT_NAME,
    PrepareOptions,
    prepare_folders,
    read_marker,
)
from siamface.folders.images import load_rgb
from siamface.tensors.transforms import Preprocessing

WILD = SHARED_DATA / "celeba_wild"
pytestmark = pytest.mark.skipif(not WILD.is_dir(), reason=f"sample data not found at {WILD}")


def wild_ids(n: int) -> list[Path]:
    return sorted(p for p in WILD.iterdir() if p.is_dir())[:n]


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def portrait(path: Path, size: int) -> Image.Image:
    """A single-face picture: the photo's face, aligned with generous context."""
    pre = Preprocessing(image_size=size, aligned=True, align={"margin": 0.8})
    return Image.fromarray(align_face_image(load_rgb(path), pre))


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory) -> Path:
    """3 identities x 3 wild photos, plus every kind of bad file in the first identity."""
    raw = tmp_path_factory.mktemp("prep") / "raw"
    ids = wild_ids(3)
    for ident in ids:
        (raw / ident.name).mkdir(parents=True)
        for f in sorted(ident.iterdir())[:3]:
            shutil.copy2(f, raw / ident.name / f.name)
    bad = raw / ids[0].name
    source = sorted(ids[1].iterdir())[3]
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(bad / "noise.png")
    Image.new("RGB", (20, 20), (205, 170, 150)).save(bad / "tiny.png")
    load_rgb(source).convert("L").save(bad / "gray.jpg")
    load_rgb(source).convert("CMYK").save(bad / "cmyk.jpg")
    data = source.read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (bad / "notes.txt").write_text("not an image")
    return raw


def test_prepare_end_to_end_bad_files_resume_and_untouched_input(raw_tree, tmp_path):
    before = snapshot(raw_tree)
    out = tmp_path / "aligned"
    report = prepare_folders(raw_tree, out, PrepareOptions(workers=2), progress=False)
    c = report["counts"]
    assert (c["images"], c["identities"]) == (14, 3)
    assert (c["ok"], c["no_face"], c["unreadable"], c["ignored_files"]) == (11, 2, 1, 1)
    assert c["crops_written"] == 11 and c["done_before"] == 0
    first = wild_ids(1)[0].name
    assert sorted(report["problems"]["no_face"]) == [f"{first}/noise.png", f"{first}/tiny.png"]
    (unreadable,) = report["problems"]["unreadable"]
    assert unreadable["path"] == f"{first}/truncated.jpg" and "truncated" in unreadable["reason"]
    crops = sorted(out.rglob("*.png"))
    assert len(crops) == 11
    assert (out / first / "gray.png").is_file() and (out / first / "cmyk.png").is_file()
    for crop in crops:
        with Image.open(crop) as im:
            assert im.size == (112, 112) and im.mode == "RGB"
    marker = read_marker(out)
    assert marker["aligned"] is True and marker["complete"] is True
    assert marker["align"] == AlignParams().to_dict()
    assert (marker["image_size"], marker["detector"]) == (112, DEFAULT_DETECTOR)
    assert json.loads((out / REPORT_NAME).read_text())["counts"] == c
    assert snapshot(raw_tree) == before, "prepare modified its input"

    # Resume: only the missing crop is redone; no-face and unreadable files are not retried.
    crops[0].unlink()
    again = prepare_folders(raw_tree, out, PrepareOptions(workers=2), progress=False)
    assert again["counts"]["processed_now"] == 1 and again["counts"]["crops_written"] == 1
    assert again["counts"]["done_before"] == 13 and again["counts"]["no_face"] == 2
    assert crops[0].is_file()
    # A lost log: every record is recovered by processing the photos again (a crop alone
    # carries no score, box or several-faces flag for the report).
    (out / LOG_NAME).unlink()
    third = prepare_folders(raw_tree, out, PrepareOptions(workers=1), progress=False)
    assert third["counts"]["processed_now"] == 14 and third["counts"]["crops_written"] == 11
    assert third["images"] == report["images"]

    with pytest.raises(SiamfaceError, match="other settings.*image_size"):
        prepare_folders(raw_tree, out, PrepareOptions(image_size=96), progress=False)
    assert snapshot(raw_tree) == before


def test_several_faces_policies_on_a_two_person_photo(tmp_path):
    a_id, b_id = wild_ids(2)
    a = portrait(sorted(a_id.iterdir())[0], 260)
    b = portrait(sorted(b_id.iterdir())[0], 200)
    canvas = Image.new("RGB", (900, 420), (120, 130, 140))
    canvas.paste(a, (10, 80))  # larger face, at the left edge
    canvas.paste(b, (350, 110))  # smaller face, in the middle
    raw = tmp_path / "raw"
    (raw / "group").mkdir(parents=True)
    canvas.save(raw / "group" / "two.jpg", quality=95)

    def run(policy: str) -> dict:
        opts = PrepareOptions(align=AlignParams(face=policy), workers=1)
        return prepare_folders(raw, tmp_path / policy, opts, progress=False)

    largest, central, every = run("largest"), run("central"), run("all")
    (rec_l,), (rec_c,), (rec_a,) = largest["images"], central["images"], every["images"]
    assert rec_l["faces"] >= 2 and rec_l["several_faces"]
    assert (rec_l["box"][0] + rec_l["box"][2]) / 2 < 300  # the big face on the left
    assert 350 < (rec_c["box"][0] + rec_c["box"][2]) / 2 < 560  # the one in the middle
    assert rec_a["outputs"] == ["group/two_face0.png", "group/two_face1.png"]
    assert all((tmp_path / "all" / o).is_file() for o in rec_a["outputs"])
    assert (tmp_path / "largest" / "group" / "two.png").is_file()
    assert largest["problems"]["several_faces"][0]["path"] == "group/two.jpg"


def test_huge_image_is_prepared_without_exhausting_memory(tmp_path):
    """8000x8000 photo with a face: detection runs on a downscaled copy; bounded peak RSS."""
    raw = tmp_path / "raw"
    (raw / "big").mkdir(parents=True)
    face = portrait(sorted(wild_ids(1)[0].iterdir())[0], 1200)
    huge = Image.new("RGB", (8000, 8000), (70, 90, 110))
    huge.paste(face, (5000, 2500))
    huge.save(raw / "big" / "huge.jpg", quality=85)
    del huge
    out = tmp_path / "out"
    code = (
        "import json, sys\n"
        "from siamface.cli.main import main\n"
        f"rc = main(['prepare', {str(raw)!r}, {str(out)!r}, '--workers', '1', '--no-progress'])\n"
        # VmHWM is this address space's peak; ru_maxrss can inherit the parent's (pytest's)
        # high-water mark across fork + exec on Linux, which made this test order-dependent.
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print('PEAK_MB', int(hwm.split()[1]) // 1024)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    peak = int(proc.stdout.split("PEAK_MB")[1].split()[0])
    # The decoded photo alone is 192 MB; a full-resolution detector pass would need GBs.
    assert peak < 1200, f"peak memory {peak} MB"
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["counts"]["ok"] == 1
    (rec,) = report["images"]
    assert rec["box"][0] > 5000 and rec["box"][1] > 2500  # found where it was pasted
    with Image.open(out / "big" / "huge.png") as im:
        assert im.size == (112, 112)


def test_cli_exit_codes_and_json(raw_tree, tmp_path, capsys):
    assert main(["prepare", str(tmp_path / "missing"), str(tmp_path / "o1")]) == 2
    assert "input folder not found" in capsys.readouterr().err

    assert main(["prepare", str(raw_tree), str(raw_tree / "inside")]) == 2
    assert "inside the input folder" in capsys.readouterr().err

    faceless = tmp_path / "faceless" / "nobody"
    faceless.mkdir(parents=True)
    Image.new("RGB", (64, 64), (10, 200, 10)).save(faceless / "green.png")
    assert main(["prepare", str(faceless.parent), str(tmp_path / "o2"), "--no-progress"]) == 2
    assert "no face could be prepared" in capsys.readouterr().err

    notempty = tmp_path / "notempty"
    notempty.mkdir()
    (notempty / "keep.txt").write_text("mine")
    assert main(["prepare", str(raw_tree), str(notempty), "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err

    assert main(["prepare", str(raw_tree), str(tmp_path / "o3"), "--margin", "9"]) == 2
    assert "margin" in capsys.readouterr().err

    one = tmp_path / "one"
    shutil.copytree(raw_tree / wild_ids(1)[0].name, one / "p")
    rc = main(
        ["prepare", str(one), str(tmp_path / "o4"), "--json", "--no-progress", "--size", "64"]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["ok"] == 5 and report["settings"]["image_size"] == 64
    assert (tmp_path / "o4" / MARKER_NAME).is_file()
    rc = main(["prepare", str(one), str(tmp_path / "o5"), "--no-progress", "--workers", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "prepared 5 of 8 images" in text and "no face found (skipped): 2" in text


def test_unexpected_failure_is_reported_and_retried_on_resume(tmp_path, monkeypatch):
    import siamface.faces.prepare as prep

    raw = tmp_path / "raw"
    shutil.copytree(wild_ids(1)[0], raw / "p")
    victim = sorted((raw / "p").iterdir())[1].name
    real_warp = prep.warp_face
    calls = {"n": 0}

    def flaky_warp(img, landmarks, size, margin=0.0):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real_warp(img, landmarks, size, margin)

    monkeypatch.setattr(prep, "warp_face", flaky_warp)
    out = tmp_path / "out"
    report = prepare_folders(raw, out, PrepareOptions(workers=1), progress=False)
    n = report["counts"]["images"]
    assert report["counts"]["ok"] == n - 1 and report["counts"]["unreadable"] == 1
    (bad,) = report["problems"]["unreadable"]
    assert bad["path"] == f"p/{victim}" and "RuntimeError: simulated crash" in bad["reason"]
    monkeypatch.setattr(prep, "warp_face", real_warp)
    again = prepare_folders(raw, out, PrepareOptions(workers=1), progress=False)
    assert again["counts"]["processed_now"] == 1 and again["counts"]["ok"] == n
