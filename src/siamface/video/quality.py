"""How much one face crop should count toward its track's identity: a 0-1 quality.

A track is named from the quality-weighted mean of its embeddings, so a blurred, tiny,
turned-away or barely-detected face adds little, and one poor frame cannot name anyone.
Each factor is 0-1 and they multiply, so any single defect is enough to discount a face:

* size: faces under ``min_size`` px are worthless, at ``good_size`` px and above full weight;
* detection score: 0.5 (YuNet's usual floor) -> 0, 0.9 and above -> 1;
* sharpness: variance of the Laplacian of the aligned grey crop (``var / (var + k)``);
* pose: yaw estimated from the 5 landmarks (the nose's offset from the eyes' midpoint, in
  inter-ocular distances; 0 frontal, ~0.5 for a profile) -> 1 frontal, 0 at ``max_yaw``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QualityParams:
    min_size: float = 24.0
    good_size: float = 80.0
    min_score: float = 0.5
    good_score: float = 0.9
    sharp_k: float = 60.0
    max_yaw: float = 0.45


def yaw_of(landmarks: np.ndarray) -> float:
    """Signed yaw proxy from 5 landmarks (ArcFace order): nose offset / eye distance."""
    lm = np.asarray(landmarks, dtype=np.float64)
    eyes = lm[1] - lm[0]
    dist = float(np.hypot(*eyes))
    if dist < 1e-6:
        return 1.0
    mid = (lm[0] + lm[1]) / 2
    # project the nose offset on the eye axis: rotation (roll) does not count as yaw
    return float(np.dot(lm[2] - mid, eyes) / dist**2)


def sharpness_of(crop_rgb: np.ndarray) -> float:
    """Variance of the Laplacian of a face crop (higher = sharper)."""
    import cv2

    grey = cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def _ramp(x: float, lo: float, hi: float) -> float:
    return float(np.clip((x - lo) / max(hi - lo, 1e-9), 0.0, 1.0))


def face_quality(
    size: float,
    score: float,
    landmarks: np.ndarray,
    crop_rgb: np.ndarray,
    params: QualityParams = QualityParams(),  # noqa: B008 - frozen dataclass
) -> dict[str, float]:
    """Each factor and their product ``quality`` for one face."""
    sharp = sharpness_of(crop_rgb)
    factors = {
        "size": _ramp(size, params.min_size, params.good_size),
        "score": _ramp(score, params.min_score, params.good_score),
        "sharpness": sharp / (sharp + params.sharp_k),
        "pose": 1.0 - _ramp(abs(yaw_of(landmarks)), 0.0, params.max_yaw),
    }
    factors["quality"] = float(np.prod(list(factors.values())))
    return factors
