"""5-point face alignment onto the ArcFace template: any photo -> a canonical face crop.

The similarity transform (rotation, uniform scale, translation; no shear) that best maps the
detected eyes, nose and mouth corners onto fixed template positions puts every face upright,
at the same scale and place, so the embedding network compares faces rather than poses,
framing and backgrounds. The template is the standard 112x112 one used by ArcFace/InsightFace
models, scaled to the checkpoint's ``image_size``.

The parameters live in ``Preprocessing.align`` (a plain dict saved in every checkpoint and in
the ``siamface prepare`` marker file); :class:`AlignParams` documents and validates its keys.
An empty dict means the defaults.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from siamface.errors import SiamfaceError
from siamface.faces.choose import (
    DEFAULT_FACE_POLICY,
    FACE_POLICIES,
    FaceChoice,
    FacePick,
    choose_face,
)
from siamface.faces.detect import (
    DEFAULT_DETECTOR,
    DEFAULT_MAX_SIDE,
    PAD_RETRY,
    Face,
    detect_faces,
    get_detector,
    refine_face,
)
from siamface.faces.errors import AmbiguousFaceError, NoFaceError
from siamface.folders.images import load_rgb

if TYPE_CHECKING:  # torch-free at run time: prepare's worker processes never load torch
    from siamface.tensors.transforms import Preprocessing

#: ArcFace / InsightFace landmark template for a 112x112 crop (pixel-index coordinates):
#: eye on the image's left, eye on the image's right, nose tip, left and right mouth corner.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

TEMPLATES = ("arcface",)

# How close a same-size input's landmarks must already be to the template for it to be
# returned untouched (see align_face): scale within 20 %, rotation within 15 degrees,
# landmark centroid within 10 % of the side. Measured on 110 crops this module made from
# celeba_wild, OpenCV YuNet's landmarks found again on the crop differ from the template by
# 2 degrees (median; 95th percentile 6, 99th 15), scale 3 % (99th 15 %), shift 2 px (99th
# 8 px at 112 px): 98 % of crops are recognised (95 % with 10 degrees).
_IDENTITY_SCALE_TOL = 0.20
_IDENTITY_ANGLE_TOL_DEG = 15.0
_IDENTITY_SHIFT_TOL = 0.10


@dataclass(frozen=True)
class AlignParams:
    """Keys of ``Preprocessing.align`` (all optional; an empty dict means these defaults).

    * ``detector``: face-detector backend name (``yunet``; ``mtcnn`` if installed).
    * ``min_score``: detections below this confidence (0-1) are ignored.
    * ``margin``: extra context around the face, as a fraction of the crop: 0 is the plain
      ArcFace framing (eyebrows to chin); 0.2 shrinks the face so that the crop shows 20 %
      more around it.
    * ``face``: which face when several are found: ``auto`` (default: the face the photo is
      about, by size, place and detector score, boxes that merge two faces set aside; see
      :mod:`siamface.faces.choose`), ``largest``, ``central`` (nearest the image centre among
      faces at least a quarter of the largest's size) or ``score`` (the detector's most
      confident, as OpenCV's own pipeline takes). ``prepare`` also accepts ``all`` (one crop
      per face); single-image alignment then uses ``auto``.
    * ``max_side``: photos are downscaled to at most this longest side *for detection*
      (the crop itself is cut from the full-resolution image).
    * ``rotations``: when no upright face is found, also look in the photo turned by 90, 270
      and 180 degrees (faces lying on their side; the crop comes out upright).
    * ``accept_aligned``: an image that already has the output size and whose face is
      already where the template puts it (or where no face is found) is used as it is.
    * ``template``: landmark template; only ``arcface`` for now.
    """

    detector: str = DEFAULT_DETECTOR
    min_score: float = 0.5
    margin: float = 0.0
    face: str = DEFAULT_FACE_POLICY
    max_side: int = DEFAULT_MAX_SIDE
    rotations: bool = True
    accept_aligned: bool = True
    template: str = "arcface"

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_score <= 1.0:
            raise SiamfaceError(f"align min_score must be in [0, 1], got {self.min_score}")
        if not 0.0 <= self.margin <= 3.0:
            raise SiamfaceError(f"align margin must be in [0, 3], got {self.margin}")
        if self.face not in FACE_POLICIES:
            raise SiamfaceError(
                f"align face policy must be one of {', '.join(FACE_POLICIES)}, got {self.face!r}"
            )
        if self.max_side < 64:
            raise SiamfaceError(f"align max_side must be >= 64, got {self.max_side}")
        if self.template not in TEMPLATES:
            raise SiamfaceError(f"align template must be one of {TEMPLATES}, got {self.template!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> AlignParams:
        """Validate a ``Preprocessing.align`` dict; unknown keys are an error, not ignored."""
        d = dict(d or {})
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise SiamfaceError(
                f"unknown alignment setting(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        try:
            for key, typ in known.items():
                if key not in d:
                    continue
                if typ == "float":
                    d[key] = float(d[key])
                elif typ == "int":
                    d[key] = int(d[key])
                elif typ == "bool":
                    v = d[key]
                    if isinstance(v, str):
                        if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
                            raise ValueError(f"{key} must be true or false, got {v!r}")
                        v = v.lower() in ("true", "1", "yes")
                    d[key] = bool(v)
                else:
                    d[key] = str(d[key])
        except (TypeError, ValueError) as err:
            raise SiamfaceError(f"bad alignment setting: {err}") from err
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def arcface_template(size: int, margin: float = 0.0) -> np.ndarray:
    """Template landmarks for a ``size`` x ``size`` crop, in continuous pixel coordinates.

    ``margin`` pulls the points towards the centre by ``1 / (1 + margin)`` so the crop
    shows more context. The +0.5 converts the template's pixel-index convention (OpenCV's)
    to PIL's continuous one, where pixel centres sit at half-integers.
    """
    centred = (ARCFACE_TEMPLATE_112 - 56.0) / (1.0 + margin) + 56.0
    return centred * (size / 112.0) + 0.5


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama 1991) mapping ``src`` points to ``dst``.

    Returns the 2x3 matrix ``M`` with ``dst ~= M[:, :2] @ src + M[:, 2]``. A reflection is
    never returned (a mirrored face is still the same face, but not the same geometry).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    var_s = (sc**2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("degenerate landmarks (all points coincide)")
    cov = dc.T @ sc / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((s * d).sum() / var_s)
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def _invert(m: np.ndarray) -> np.ndarray:
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def transform_params(m: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(scale, rotation in degrees, translation) of a 2x3 similarity matrix."""
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    angle = math.degrees(math.atan2(m[1, 0], m[0, 0]))
    return scale, angle, m[:, 2]


def warp_face(
    img: Image.Image, landmarks: np.ndarray, size: int, margin: float = 0.0
) -> np.ndarray:
    """Cut the aligned ``size`` x ``size`` face out of ``img`` -> HWC uint8 RGB.

    The warp is OpenCV's ``warpAffine`` (bilinear, black outside the photo) with the
    least-squares similarity onto the template, as ``cv2.FaceRecognizerSF.alignCrop`` does,
    so a model gets the crop its authors fed it. Only the region the crop needs is touched,
    and it is box-reduced first when the face is much larger than the output (plain bilinear
    warping would alias), so a face in a huge photo costs little.
    """
    import cv2  # noqa: PLC0415 - a core dependency, but importing it slows every --help

    dst = arcface_template(size, margin)
    m = similarity_transform(landmarks, dst)
    inv = _invert(m)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64)
    src_corners = corners @ inv[:, :2].T + inv[:, 2]
    w, h = img.size
    x0 = int(np.clip(math.floor(src_corners[:, 0].min()) - 2, 0, w))
    y0 = int(np.clip(math.floor(src_corners[:, 1].min()) - 2, 0, h))
    x1 = int(np.clip(math.ceil(src_corners[:, 0].max()) + 2, 0, w))
    y1 = int(np.clip(math.ceil(src_corners[:, 1].max()) + 2, 0, h))
    if x1 - x0 < 1 or y1 - y0 < 1:
        # The face lies entirely outside the photo: only possible with bogus landmarks.
        raise NoFaceError("face landmarks fall outside the image")
    region = img.crop((x0, y0, x1, y1))
    lm = np.asarray(landmarks, dtype=np.float64) - [x0, y0]
    scale = transform_params(m)[0]
    factor = int(1.0 / (2.0 * scale)) if scale < 0.5 else 1
    factor = max(1, min(factor, region.width, region.height))
    if factor > 1:
        region = region.reduce(factor)  # box filter: output scale becomes 0.5-1 px/px
        lm = lm / factor
    # OpenCV samples at pixel indices; our points are continuous (pixel centres at +0.5).
    m = similarity_transform(lm - 0.5, dst - 0.5)
    src = np.ascontiguousarray(np.asarray(region, dtype=np.uint8))
    out = cv2.warpAffine(
        src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    return np.asarray(out, dtype=np.uint8)


def find_faces(img: Image.Image, params: AlignParams, crop_like: bool = False) -> list[Face]:
    """All faces above ``params.min_score``, largest first, in ``img`` coordinates.

    ``crop_like``: the image is probably a face crop, so look on a padded canvas first.
    """
    det = get_detector(params.detector, params.min_score)
    pads = (PAD_RETRY, 0.0) if crop_like else (0.0, PAD_RETRY)
    return detect_faces(img, det, max_side=params.max_side, pads=pads, rotations=params.rotations)


def locate_face(
    img: Image.Image, params: AlignParams, pick: FacePick | str | int | None = None
) -> FaceChoice:
    """Every face in ``img`` and the one to use (``params.face``'s rule, or the person's
    ``pick``), its landmarks re-read at full resolution when the photo was downscaled for
    detection."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    faces = find_faces(img, params)
    return _refined(img, choose_face(faces, img.size, params.face, pick), params)


def _refined(img: Image.Image, choice: FaceChoice, params: AlignParams) -> FaceChoice:
    if choice.index is None:
        return choice
    det = get_detector(params.detector, params.min_score)
    faces = list(choice.faces)
    faces[choice.index] = refine_face(img, faces[choice.index], det, params.max_side)
    return replace(choice, faces=tuple(faces))


def is_template_aligned(face: Face, size: int, margin: float) -> bool:
    """True when ``face`` already sits where alignment would put it in a ``size`` crop."""
    template = arcface_template(size, margin)
    scale, angle, _ = transform_params(similarity_transform(face.landmarks, template))
    shift = face.landmarks.mean(0) - template.mean(0)
    return (
        abs(scale - 1.0) <= _IDENTITY_SCALE_TOL
        and abs(angle) <= _IDENTITY_ANGLE_TOL_DEG
        and float(np.abs(shift).max()) <= _IDENTITY_SHIFT_TOL * size
    )


#: The no-face fallback of the pairs protocol takes the face to fill this fraction of the
#: photo's shorter side, centred: the framing of face-centred benchmark photos, where a
#: detector's miss is the detector's fault and the pair must still be scored.
CENTRE_FACE_FRACTION = 0.5


def centre_face(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """The photo's centre framed as an aligned face would be (no detection): the template
    placed in the middle square of :data:`CENTRE_FACE_FRACTION` of the shorter side. Only
    for protocols that must score every listed pair (LFW-style pairs files) when no face
    is found; the report lists the photos it was used for."""
    params = AlignParams.from_dict(pre.align)
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    side = CENTRE_FACE_FRACTION * min(w, h)
    x0, y0 = (w - side) / 2, (h - side) / 2
    landmarks = arcface_template(112, 0.0) * (side / 112.0) + [x0, y0]
    return warp_face(img, landmarks.astype(np.float32), pre.image_size, params.margin)


@dataclass(frozen=True)
class AlignedFace:
    """An aligned crop and the choice behind it (what commands report)."""

    crop: np.ndarray  # HWC uint8 RGB of the model's size
    choice: FaceChoice | None  # None: the input was already an aligned crop


#: What to do with a photo whose face is ambiguous (two equally likely candidates): use the
#: ``auto`` winner (evaluation), or refuse it (training, enrolment, interactive commands).
AMBIGUOUS_ACTIONS = ("pick", "refuse")


def align_face(
    img: Image.Image,
    pre: Preprocessing,
    pick: FacePick | str | int | None = None,
    ambiguous: str = "pick",
) -> AlignedFace:
    """Detect the faces in ``img``, choose one, and return it aligned with the choice.

    Several faces: ``pick`` (a person's choice) or else ``pre.align['face']`` decides; with
    ``ambiguous="refuse"`` a photo with two equally likely faces raises
    :class:`~siamface.faces.AmbiguousFaceError`. Raises :class:`~siamface.faces.NoFaceError`
    (an ``ImageLoadError``, so batch code skips and reports the file) when no face is found.

    Already-aligned input (``accept_aligned``, default on): an image that is exactly
    ``image_size`` x ``image_size`` is returned unchanged when the face found in it already
    matches the template (within 20 % scale, 15 degrees, 10 % shift) or when no face is found
    at all (detectors often miss a face that fills the frame; at exactly the output size the
    image is most likely a crop made by ``siamface prepare``). A same-size image with a face
    elsewhere is aligned like any photo.
    """
    if ambiguous not in AMBIGUOUS_ACTIONS:
        raise SiamfaceError(f"ambiguous must be one of {AMBIGUOUS_ACTIONS}, got {ambiguous!r}")
    params = AlignParams.from_dict(pre.align)
    size = pre.image_size
    if img.mode != "RGB":
        img = img.convert("RGB")
    same_size = params.accept_aligned and img.size == (size, size)
    faces = find_faces(img, params, crop_like=same_size)
    if (
        pick is None
        and same_size
        and (not faces or any(is_template_aligned(f, size, params.margin) for f in faces))
    ):
        return AlignedFace(np.asarray(img, dtype=np.uint8), None)
    if not faces:
        raise NoFaceError(
            f"no face found (detector {params.detector}, min score {params.min_score})"
        )
    choice = _refined(img, choose_face(faces, img.size, params.face, pick), params)
    if choice.ambiguous and ambiguous == "refuse":
        raise AmbiguousFaceError(choice.ambiguity(), choice)
    assert choice.face is not None
    return AlignedFace(warp_face(img, choice.face.landmarks, size, params.margin), choice)


def align_face_image(img: Image.Image, pre: Preprocessing, ambiguous: str = "pick") -> np.ndarray:
    """:func:`align_face`'s crop alone (HWC uint8 RGB of ``pre.image_size``)."""
    return align_face(img, pre, ambiguous=ambiguous).crop


class AlignedLoader:
    """Path -> aligned HWC uint8 face; a class rather than a closure so it pickles into
    DataLoader workers under any start method. ``ambiguous="refuse"`` makes photos with two
    equally likely faces fail as :class:`AmbiguousFaceError` (skipped and listed)."""

    def __init__(self, pre: Preprocessing, ambiguous: str = "pick") -> None:
        self.pre = pre
        self.ambiguous = ambiguous
        params = AlignParams.from_dict(pre.align)  # bad settings fail here, not per image
        get_detector(params.detector, params.min_score)  # missing package fails here too

    def __call__(self, path: Path) -> np.ndarray:
        return align_face_image(load_rgb(path), self.pre, self.ambiguous)


def aligned_loader(pre: Preprocessing, ambiguous: str = "pick") -> AlignedLoader:
    """The loader for checkpoints trained on aligned faces (``pre.aligned`` is True)."""
    return AlignedLoader(pre, ambiguous)
