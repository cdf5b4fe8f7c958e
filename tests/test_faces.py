"""Face detection and alignment: detector interface, geometry, policies, loaders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

from siamface.errors import SiamfaceError
from siamface.faces import DetectorUnavailable, NoFaceError
from siamface.faces import detect as detect_mod
from siamface.faces.align import (
    AlignParams,
    align_face_image,
    aligned_loader,
    arcface_template,
    find_faces,
    similarity_transform,
    transform_params,
    warp_face,
)
from siamface.faces.choose import choose_face
from siamface.faces.detect import Face, detect_faces, get_detector
from siamface.folders.images import ImageLoadError, load_rgb
from siamface.tensors.transforms import Preprocessing

WILD = SHARED_DATA / "celeba_wild"
needs_wild = pytest.mark.skipif(not WILD.is_dir(), reason=f"sample data not found at {WILD}")


def wild_images(n: int, per_id: int = 1) -> list[Path]:
    """``n`` photos, ``per_id`` from each of the first identities (sorted, deterministic)."""
    out: list[Path] = []
    for ident in sorted(p for p in WILD.iterdir() if p.is_dir()):
        out += sorted(ident.iterdir())[:per_id]
        if len(out) >= n:
            return out[:n]
    return out


def noise_image(size: int = 200, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


# --------------------------------------------------------------------------- geometry


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, t = math.radians(23.0), 1.7, np.array([12.0, -30.0])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = src @ (scale * rot).T + t
    m = similarity_transform(src, dst)
    s, a, shift = transform_params(m)
    assert s == pytest.approx(scale, rel=1e-9)
    assert a == pytest.approx(23.0, abs=1e-7)
    np.testing.assert_allclose(shift, t, atol=1e-7)
    np.testing.assert_allclose(src @ m[:, :2].T + m[:, 2], dst, atol=1e-7)


def test_similarity_transform_rejects_degenerate_points():
    with pytest.raises(ValueError, match="degenerate"):
        similarity_transform(np.ones((5, 2)), arcface_template(112))


def test_template_scales_with_size_and_margin():
    t112, t224 = arcface_template(112), arcface_template(224)
    np.testing.assert_allclose(t224 - 0.5, (t112 - 0.5) * 2)
    # A margin pulls the points towards the centre: the eyes get closer together.
    wide = arcface_template(112, margin=0.5)
    assert (wide[1, 0] - wide[0, 0]) == pytest.approx((t112[1, 0] - t112[0, 0]) / 1.5)


@pytest.mark.parametrize("face_scale", [0.6, 9.0])  # 9x: the box-reduce path for huge faces
def test_warp_face_moves_landmarks_onto_the_template(face_scale):
    """Dots drawn at rotated/scaled template positions end up at the template positions."""
    size = 112
    template = arcface_template(size)
    angle = math.radians(-17)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    pts = (template - 56) @ (face_scale * rot).T + np.array([40.0, 30.0]) * face_scale + 80
    w = int(pts[:, 0].max() + 80 * face_scale)
    # Gaussian dots, centred exactly (pixel centres at +0.5, the convention of the module).
    ys, xs = np.mgrid[0:w, 0:w].astype(np.float32) + 0.5
    sigma2 = 2 * (1.5 * face_scale) ** 2
    canvas = np.zeros((w, w), np.float32)
    for x, y in pts:
        canvas = np.maximum(canvas, np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / sigma2))
    img = Image.fromarray((canvas * 255).astype(np.uint8)).convert("RGB")
    out = warp_face(img, pts, size).astype(np.float64)[..., 0]
    assert out.shape == (size, size)
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    for tx, ty in template:
        win = (np.abs(xs - tx) < 5) & (np.abs(ys - ty) < 5)
        wsum = (out * win).sum()
        assert wsum > 0, "dot missing from the aligned crop"
        cx, cy = (xs * out * win).sum() / wsum, (ys * out * win).sum() / wsum
        assert abs(cx - tx) < 0.1 and abs(cy - ty) < 0.1, (cx - tx, cy - ty)


# --------------------------------------------------------------------------- policies / params


def _face(x: float, y: float, size: float, score: float = 0.9) -> Face:
    lm = np.tile(np.array([[x, y]], dtype=np.float32), (5, 1))
    return Face(
        box=(x - size / 2, y - size / 2, x + size / 2, y + size / 2), landmarks=lm, score=score
    )


def test_several_faces_policies():
    big_corner, small_centre, tiny_centre = _face(20, 20, 40), _face(100, 100, 20), _face(99, 99, 4)
    faces = [big_corner, small_centre, tiny_centre]
    assert choose_face(faces, (200, 200), "largest").face is big_corner
    # Most central among faces at least a quarter of the largest's size: not the 4 px speck.
    assert choose_face(faces, (200, 200), "central").face is small_centre
    assert choose_face([], (200, 200), "largest").face is None


def test_align_params_defaults_roundtrip_and_validation():
    assert AlignParams.from_dict({}) == AlignParams()
    p = AlignParams.from_dict({"margin": "0.25", "face": "central", "accept_aligned": "false"})
    assert (p.margin, p.face, p.accept_aligned) == (0.25, "central", False)
    assert AlignParams.from_dict(p.to_dict()) == p
    with pytest.raises(SiamfaceError, match="unknown alignment setting.*colour"):
        AlignParams.from_dict({"colour": 1})
    with pytest.raises(SiamfaceError, match="face policy"):
        AlignParams.from_dict({"face": "loudest"})
    with pytest.raises(SiamfaceError, match="margin"):
        AlignParams.from_dict({"margin": -1})
    with pytest.raises(SiamfaceError, match="bad alignment setting"):
        AlignParams.from_dict({"max_side": "big"})


def test_unknown_or_missing_detector_names_the_fix(monkeypatch):
    with pytest.raises(DetectorUnavailable, match="unknown face detector 'nope'.*yunet"):
        get_detector("nope")
    registry = detect_mod.DETECTORS
    entry = registry.get("yunet")
    facts = dict(
        entry.facts, module="no_such_pkg", install="pip install no-such-pkg", fallback=None
    )
    get_detector.cache_clear()
    with registry.scoped():
        registry.replace("yunet", entry.builder, **facts)
        try:
            with pytest.raises(DetectorUnavailable, match="pip install no-such-pkg"):
                get_detector("yunet")
            with pytest.raises(SiamfaceError, match="pip install no-such-pkg"):
                aligned_loader(Preprocessing(aligned=True, align={"detector": "yunet"}))
        finally:
            get_detector.cache_clear()
    assert registry.get("yunet").facts["module"] == "yuface"  # the real entry is back


def test_no_face_error_is_an_image_load_error():
    assert issubclass(NoFaceError, ImageLoadError)
    pre = Preprocessing(image_size=64, aligned=True)
    with pytest.raises(NoFaceError, match="no face found"):
        align_face_image(noise_image(), pre)
    with pytest.raises(NoFaceError):
        align_face_image(Image.new("RGB", (20, 20), (200, 180, 160)), pre)


# --------------------------------------------------------------------------- real photos


@needs_wild
def test_detector_finds_faces_in_wild_photos():
    det = get_detector()
    paths = wild_images(6)
    found = 0
    for p in paths:
        img = load_rgb(p)
        faces = detect_faces(img, det)
        if not faces:
            continue
        found += 1
        f = faces[0]
        assert 0.5 <= f.score <= 1.0
        assert f.landmarks.shape == (5, 2)
        x0, y0, x1, y1 = f.box
        assert 0 < f.width <= img.width + 1 and 0 < f.height <= img.height + 1
        # The landmarks sit inside (or very near) the box, eyes above the mouth, in order.
        assert (f.landmarks[:, 0] > x0 - 0.1 * f.width).all()
        assert (f.landmarks[:, 0] < x1 + 0.1 * f.width).all()
        assert f.landmarks[0, 0] < f.landmarks[1, 0] and f.landmarks[3, 0] < f.landmarks[4, 0]
        assert f.landmarks[:2, 1].max() < f.landmarks[3:, 1].min()
    assert found >= 5, f"faces found in only {found} of {len(paths)} photos"


@needs_wild
@pytest.mark.parametrize("size", [112, 64])
def test_alignment_puts_eyes_near_the_template(size):
    pre = Preprocessing(image_size=size, aligned=True)
    params = AlignParams()
    template = arcface_template(size)
    errors = []
    for p in wild_images(5):
        crop = align_face_image(load_rgb(p), pre)
        assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
        faces = find_faces(Image.fromarray(crop), params, crop_like=True)
        assert faces, f"no face found again in the aligned crop of {p.name}"
        eyes = faces[0].landmarks[:2]
        errors.append(np.linalg.norm(eyes - template[:2], axis=1).max() / size)
    # Re-detection noise included: eyes within ~8 % of the crop side of the template.
    assert np.median(errors) < 0.06, errors
    assert max(errors) < 0.12, errors


@needs_wild
def test_aligned_loader_accepts_prepared_crops_and_aligns_raw_photos(tmp_path):
    pre = Preprocessing(image_size=112, aligned=True)
    loader = aligned_loader(pre)
    raw = wild_images(1)[0]
    crop = loader(raw)
    assert crop.shape == (112, 112, 3)
    crop_path = tmp_path / "crop.png"
    Image.fromarray(crop).save(crop_path)
    np.testing.assert_array_equal(loader(crop_path), crop)  # already aligned: used as-is
    # The same crop shifted and rotated inside a 112 px frame is aligned again, not accepted.
    moved = Image.fromarray(crop).rotate(35, translate=(18, 10), fillcolor=(0, 0, 0))
    again = align_face_image(moved, pre)
    assert not np.array_equal(again, np.asarray(moved))
    # Refusing as-is input: the crop goes through detection and warping again.
    strict = Preprocessing(image_size=112, aligned=True, align={"accept_aligned": False})
    assert align_face_image(Image.fromarray(crop), strict).shape == (112, 112, 3)
    # For a model of another input size the crop is a photo like any other: re-aligned.
    assert aligned_loader(Preprocessing(image_size=96, aligned=True))(crop_path).shape == (
        96,
        96,
        3,
    )


@needs_wild
@pytest.mark.parametrize("turn", [Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270])
def test_face_lying_on_its_side_comes_out_upright(turn):
    pre = Preprocessing(image_size=112, aligned=True)
    photo = load_rgb(wild_images(1)[0])
    upright = align_face_image(photo, pre).astype(np.float64)
    turned = align_face_image(photo.transpose(turn), pre).astype(np.float64)
    # Same face, same framing: the two crops agree closely, pixel for pixel.
    corr = np.corrcoef(upright.ravel(), turned.ravel())[0, 1]
    assert corr > 0.9, corr
    no_rot = Preprocessing(image_size=112, aligned=True, align={"rotations": False})
    try:
        plain = align_face_image(photo.transpose(turn), no_rot).astype(np.float64)
        assert np.corrcoef(upright.ravel(), plain.ravel())[0, 1] < corr
    except NoFaceError:
        pass  # without rotation tries the detector misses the turned face: also fine


@needs_wild
def test_grayscale_photo_is_aligned_to_rgb():
    img = load_rgb(wild_images(1)[0]).convert("L")
    out = align_face_image(img, Preprocessing(image_size=64, aligned=True))
    assert out.shape == (64, 64, 3)
    assert np.array_equal(out[..., 0], out[..., 1])


@needs_wild
def test_face_in_a_huge_image_is_found_and_aligned():
    face = load_rgb(wild_images(1)[0])
    big = Image.new("RGB", (6000, 6000), (90, 120, 90))
    big.paste(face.resize((face.width * 6, face.height * 6)), (3000, 1500))
    out = align_face_image(big, Preprocessing(image_size=112, aligned=True))
    faces = find_faces(Image.fromarray(out), AlignParams(), crop_like=True)
    assert faces and np.abs(faces[0].landmarks[:2] - arcface_template(112)[:2]).max() < 12


@needs_wild
def test_embed_paths_skips_and_reports_photos_without_a_face(tmp_path):
    """The contract with embed/pipeline.py: aligned checkpoints align raw photos, report no-face."""
    import torch
    from conftest import TINY_BACKBONE

    from siamface.embed.pipeline import embed_files
    from siamface.embed.tensors import batch_embedder
    from siamface.model.network import ModelConfig, build_model

    noise = tmp_path / "noise.png"
    noise_image(seed=3).save(noise)
    paths = [*wild_images(2), noise]
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=TINY_BACKBONE, embedding_size=16))
    pre = Preprocessing(image_size=64, aligned=True)
    embed_batch = batch_embedder(model, pre)
    emb, errors = embed_files(embed_batch, paths, pre, batch_size=4, workers=0, progress=False)
    assert emb.shape == (2, 16)
    assert list(errors) == [2] and "no face" in errors[2]


def test_a_new_backend_plugs_in_by_name_without_touching_callers():
    """Register a stub detector; alignment and the loaders use it through the settings."""
    from siamface.faces.detect import FaceDetector, register_detector

    seen = []
    with detect_mod.DETECTORS.scoped():

        @register_detector("stub", module="numpy", install="-", license="-", summary="test")
        class StubDetector(FaceDetector):
            def detect_array(self, rgb):
                seen.append(rgb.shape)
                h, w = rgb.shape[:2]
                # A face occupying the canvas' middle half, eyes level.
                lm = (arcface_template(112) - 0.5) / 112 * (w / 2) + [w / 4, h / 4]
                return [Face(box=(w / 4, h / 4, 3 * w / 4, 3 * h / 4), landmarks=lm, score=0.99)]

        get_detector.cache_clear()
        try:
            assert "stub" in [i.name for i in detect_mod.detector_infos()]
            img = Image.new("RGB", (400, 400), (0, 0, 0))
            img.paste((255, 255, 255), (100, 100, 300, 300))  # the "face" the stub reports
            pre = Preprocessing(image_size=64, aligned=True, align={"detector": "stub"})
            out = align_face_image(img, pre)
            assert seen == [(400, 400, 3)]
            # The stub's face square fills the crop exactly: all white inside.
            assert out.shape == (64, 64, 3) and out[2:-2, 2:-2].min() == 255
        finally:
            get_detector.cache_clear()
    assert "stub" not in detect_mod.DETECTORS  # the registry is as before


def test_mtcnn_backend_when_installed():
    pytest.importorskip("facenet_pytorch")
    pytest.importorskip("requests")
    if not WILD.is_dir():
        pytest.skip("sample data missing")
    det = get_detector("mtcnn")
    faces = detect_faces(load_rgb(wild_images(1)[0]), det)
    assert faces and faces[0].landmarks[0, 0] < faces[0].landmarks[1, 0]
