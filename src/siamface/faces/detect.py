"""Face detectors with five landmarks, behind one small interface and a registry by name.

Callers ask for a detector by name (:func:`get_detector`) and get :class:`Face` records in
the image's own pixel coordinates, whatever the backend. Adding a backend means writing one
:class:`FaceDetector` subclass with :func:`register_detector`; nothing that calls it changes.

Backends (measured on the celeba_wild sample, see docs/faces.md):

* ``yunet`` (default): YuNet from libfacedetection via the ``yuface`` wheel, BSD-3-Clause,
  weights compiled into the library, ~1 MB, no dependencies. Fastest and finds the most faces.
* ``mtcnn``: MTCNN from ``facenet-pytorch`` (MIT, weights ship in the wheel). Optional; its
  version pins would downgrade torch, so it is installed with ``--no-deps``.

Detectors see a *detection canvas*, not the full photo: huge images are downscaled (an
8000x8000 photo must not cost gigabytes in the detector), tiny ones upscaled (detectors have
a minimum face size), and a face that fills the whole frame (a tight or already-aligned crop)
gets a second chance on a padded canvas, since detectors need some context around a face.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from siamface.errors import SiamfaceError
from siamface.faces.errors import DetectorUnavailable

DEFAULT_DETECTOR = "yunet"
#: Longest side of the detection canvas; larger photos are downscaled for detection only.
DEFAULT_MAX_SIDE = 640
#: Shorter canvases are upscaled to this longest side (detectors miss faces under ~20 px).
DEFAULT_MIN_SIDE = 160
#: Padding (fraction of the longest side, each border) for the second, padded attempt.
PAD_RETRY = 0.3
#: Below this best score the photo is also searched turned by 90/270/180 degrees. Upright
#: faces score 0.89-0.95 with YuNet (5th-50th percentile on celeba_wild); a sideways face
#: is often found upright with a low score and wrong landmarks, or not at all.
ROTATE_BELOW_SCORE = 0.8


@dataclass(frozen=True)
class Face:
    """One detected face, in the pixel coordinates of the image it was found in.

    ``landmarks`` is a (5, 2) float array in the ArcFace order, by image position: eye on the
    image's left, eye on the image's right, nose tip, left mouth corner, right mouth corner.
    ``score`` is the detector's confidence in [0, 1].
    """

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    landmarks: np.ndarray
    score: float

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def size(self) -> float:
        """Geometric mean of width and height: the face's scale in pixels."""
        return float(np.sqrt(max(self.width, 0.0) * max(self.height, 0.0)))

    @property
    def center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)

    def mapped(self, fn: Callable[[np.ndarray], np.ndarray]) -> Face:
        """This face with every point ``p`` (an (N, 2) array) replaced by ``fn(p)``."""
        x0, y0, x1, y1 = self.box
        corners = fn(np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=np.float64))
        lo, hi = corners.min(0), corners.max(0)
        lm = fn(self.landmarks.astype(np.float64)).astype(np.float32)
        return Face(
            box=(float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])),
            landmarks=lm,
            score=self.score,
        )

    def to_dict(self) -> dict:
        return {
            "box": [round(float(v), 1) for v in self.box],
            "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks],
            "score": round(float(self.score), 3),
        }


class FaceDetector(ABC):
    """A backend: finds faces with 5 landmarks in an RGB array at the array's own scale."""

    name: str = ""

    def __init__(self, min_score: float = 0.5) -> None:
        if not 0.0 <= min_score <= 1.0:
            raise SiamfaceError(f"min_score must be in [0, 1], got {min_score}")
        self.min_score = min_score

    @abstractmethod
    def detect_array(self, rgb: np.ndarray) -> list[Face]:
        """Faces with score >= ``min_score`` in a contiguous HWC uint8 RGB array."""


@dataclass(frozen=True)
class DetectorInfo:
    """What the registry knows about a backend before importing it."""

    name: str
    cls: type[FaceDetector]
    module: str  # import name of the package it needs
    install: str  # command that installs it
    license: str
    summary: str


_REGISTRY: dict[str, DetectorInfo] = {}


def register_detector(
    name: str, *, module: str, install: str, license: str, summary: str
) -> Callable[[type[FaceDetector]], type[FaceDetector]]:
    """Class decorator adding a backend to the registry under ``name``."""

    def deco(cls: type[FaceDetector]) -> type[FaceDetector]:
        cls.name = name
        _REGISTRY[name] = DetectorInfo(name, cls, module, install, license, summary)
        return cls

    return deco


def detector_infos() -> list[DetectorInfo]:
    """All registered backends, default first."""
    return sorted(_REGISTRY.values(), key=lambda i: (i.name != DEFAULT_DETECTOR, i.name))


def is_available(name: str) -> bool:
    """True when backend ``name`` is registered and its package can be imported."""
    info = _REGISTRY.get(name)
    return info is not None and importlib.util.find_spec(info.module) is not None


def _info(name: str) -> DetectorInfo:
    if name not in _REGISTRY:
        raise DetectorUnavailable(
            f"unknown face detector {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def check_detector_available(name: str = DEFAULT_DETECTOR) -> None:
    """Raise :class:`DetectorUnavailable` when ``name`` is unknown or its package is missing,
    without creating the detector (safe before forking worker processes)."""
    info = _info(name)
    if importlib.util.find_spec(info.module) is None:
        raise DetectorUnavailable(
            f"face detector {name!r} needs the package '{info.module}', which is not "
            f"installed; install it with: {info.install}"
        )


@functools.lru_cache(maxsize=8)
def get_detector(name: str = DEFAULT_DETECTOR, min_score: float = 0.5) -> FaceDetector:
    """The backend ``name``, loaded once per process (model weights load on first use)."""
    check_detector_available(name)
    return _info(name).cls(min_score=float(min_score))


def _unrotate(k: int, width: int, height: int) -> Callable[[np.ndarray], np.ndarray]:
    """Map points of ``np.rot90(canvas, k)`` back to the ``width`` x ``height`` canvas."""

    def back(p: np.ndarray) -> np.ndarray:
        x, y = p[:, 0], p[:, 1]
        if k == 1:
            return np.stack([width - y, x], 1)
        if k == 2:
            return np.stack([width - x, height - y], 1)
        return np.stack([y, height - x], 1)  # k == 3

    return back


def detect_faces(
    img: Image.Image,
    detector: FaceDetector,
    max_side: int = DEFAULT_MAX_SIDE,
    min_side: int = DEFAULT_MIN_SIDE,
    pads: tuple[float, ...] = (0.0, PAD_RETRY),
    rotations: bool = True,
) -> list[Face]:
    """Faces in an RGB PIL image, largest first, in ``img``'s pixel coordinates.

    Detection runs on a canvas whose longest side is clamped to ``[min_side, max_side]``,
    bordered in grey by each fraction in ``pads`` in turn until a face is found: the padded
    try rescues tight crops, where the face touches the frame. If ``rotations`` and no face
    scored ``ROTATE_BELOW_SCORE``, the canvas is also tried turned by 90, 270 and 180
    degrees, keeping the orientation with the best score: detectors are trained on upright
    faces, and every celeba_wild photo where none was found held a face on its side or upside
    down. Landmarks stay in the subject's order, so alignment turns such faces upright.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    longest = max(w, h)
    canvas = img
    if longest > max_side or longest < min_side:
        f = (max_side if longest > max_side else min_side) / longest
        size = (max(1, round(w * f)), max(1, round(h * f)))
        # reducing_gap: a fast box pre-reduction, so a huge photo costs little time here.
        canvas = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    arr = np.ascontiguousarray(np.asarray(canvas, dtype=np.uint8))
    ch, cw = arr.shape[:2]
    to_image = np.array([w / cw, h / ch])

    def run(view: np.ndarray, pad: int, k: int) -> list[Face]:
        if pad:
            view = np.pad(view, ((pad, pad), (pad, pad), (0, 0)), constant_values=128)
        faces = detector.detect_array(np.ascontiguousarray(view))
        back = _unrotate(k, cw, ch) if k else (lambda p: p)
        return [f.mapped(lambda p: back(p - pad) * to_image) for f in faces]

    faces: list[Face] = []
    for frac in pads:
        faces = run(arr, round(frac * max(ch, cw)), 0)
        if faces:
            break
    if rotations and (not faces or max(f.score for f in faces) < ROTATE_BELOW_SCORE):
        for k in (1, 3, 2):
            turned = run(np.rot90(arr, k), 0, k)
            if turned and max(f.score for f in turned) > max((f.score for f in faces), default=0):
                faces = turned
    return sorted(faces, key=lambda f: f.size, reverse=True)


# --------------------------------------------------------------------------- backends


def _import_yuface():
    """Import yuface with its private OpenMP runtime limited to few threads.

    yuface bundles its own libgomp, which reads ``OMP_NUM_THREADS`` once, when loaded. With
    its default (all cores) it busy-waits so hard on a shared machine that a 320 px image
    took 0.8 s instead of 0.03 s in our measurements, and ``prepare`` already runs one
    process per core. ``SIAMFACE_DETECT_THREADS`` (default 1) sets the count.
    """
    threads = os.environ.get("SIAMFACE_DETECT_THREADS", "1")
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = threads
    try:
        import yuface  # noqa: PLC0415 - optional backend, loaded on first use
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous
    return yuface


@register_detector(
    "yunet",
    module="yuface",
    install="pip install yuface   (wheels: Python 3.10/3.11 on Linux x86_64 and Windows)",
    license="BSD-3-Clause",
    summary="YuNet (libfacedetection) via yuface: fast CPU detector, 5 landmarks",
)
class YuNetDetector(FaceDetector):
    """YuNet: boxes, scores 0-100 and 5 integer landmarks from a BGR uint8 array."""

    def __init__(self, min_score: float = 0.5) -> None:
        super().__init__(min_score)
        self._yuface = _import_yuface()

    def detect_array(self, rgb: np.ndarray) -> list[Face]:
        if rgb.shape[0] < 2 or rgb.shape[1] < 2:
            return []
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "image too large" - we control canvas size
            confs, boxes, lms = self._yuface.detect(bgr, conf=self.min_score)
        faces = []
        for c, (x, y, bw, bh), lm in zip(confs, boxes, lms, strict=True):
            faces.append(
                Face(
                    box=(float(x), float(y), float(x + bw), float(y + bh)),
                    # +0.5: integer pixel indices -> pixel centres.
                    landmarks=lm.reshape(5, 2).astype(np.float32) + 0.5,
                    score=float(c) / 100.0,
                )
            )
        return faces


@register_detector(
    "mtcnn",
    module="facenet_pytorch",
    install="pip install --no-deps facenet-pytorch && pip install requests",
    license="MIT",
    summary="MTCNN from facenet-pytorch: slower, similar recall, sub-pixel landmarks",
)
class MTCNNDetector(FaceDetector):
    """MTCNN (P/R/O-Net cascade) on torch; landmarks already in ArcFace order."""

    def __init__(self, min_score: float = 0.5) -> None:
        super().__init__(min_score)
        try:
            from facenet_pytorch import MTCNN  # noqa: PLC0415 - optional backend
        except ImportError as err:  # e.g. its 'requests' import when installed --no-deps
            raise DetectorUnavailable(
                f"face detector 'mtcnn' failed to import ({err}); install it with: "
                f"{_REGISTRY['mtcnn'].install}"
            ) from err
        self._mtcnn = MTCNN(keep_all=True, device="cpu", post_process=False)

    def detect_array(self, rgb: np.ndarray) -> list[Face]:
        if rgb.shape[0] < 12 or rgb.shape[1] < 12:  # smaller than P-Net's window
            return []
        boxes, probs, lms = self._mtcnn.detect(Image.fromarray(rgb), landmarks=True)
        if boxes is None:
            return []
        return [
            Face(box=tuple(float(v) for v in b), landmarks=lm.astype(np.float32), score=float(p))
            for b, p, lm in zip(boxes, probs, lms, strict=True)
            if p >= self.min_score
        ]
