"""Domain conditions: what a camera, a codec or a mask does to a face, as named degradations.

Users train their own model where the stock one fails them: low-resolution CCTV, heavy JPEG,
blur, noise, dim or infrared light, masks. A *condition* is a comma-separated list of
degradations with strengths, e.g. ``lowres:28,jpeg:40`` or ``lowres:12-48,jpeg:15-70`` (a range:
each image draws its strength uniformly from it), applied to an **aligned face crop**, where the
five landmarks sit at the ArcFace template positions, so masks and occluders are placed from
them. The same condition is used to train (``siamface train condition=...``) and to measure
(``siamface evaluate --condition ...``).

Every degradation of an image is drawn from a generator seeded by ``(seed, key)`` only (``key``:
the image's index or a hash of its path), never from a global RNG: the same image gets the same
degradation in every run, every resume and every loader worker, and two models compared on it
see the same pixels.

The steps run in the order a camera imposes, whatever order the spec lists them: things in front
of the face (mask, occluder), light (lowlight), optics and sensor at the camera's resolution
(lowres shrinks, then blur, motion, noise), colour (gray, nir), the codec (jpeg, at the low
resolution, as a CCTV stream is encoded), and finally the upscale back to the model's input
size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from siamface.errors import SiamfaceError
from siamface.faces.align import ARCFACE_TEMPLATE_112

#: Face width (pixels) in a 112-px ArcFace-aligned crop: twice the template's eye distance.
#: ``lowres:W`` shrinks the crop so the face is W pixels wide, as a camera that far away sees it.
FACE_WIDTH_112 = 2.0 * 35.24

#: Named conditions (presets) and what they stand for.
PRESETS: dict[str, str] = {
    "cctv": "misalign:0-3,lowres:12-36,jpeg:20-70,blur:0-1.2,noise:0-6",
    "cctv-eval": "lowres:28,jpeg:40",
    "masked": "mask:0.4-0.8",
    "infrared": "nir,noise:2-8",
}


def _template(size: int) -> np.ndarray:
    """The five landmarks of an aligned ``size`` crop (eyes, nose, mouth corners)."""
    return ARCFACE_TEMPLATE_112 * (size / 112.0)


@dataclass
class _State:
    """The image being degraded and how much it was shrunk (for size-relative steps)."""

    img: np.ndarray  # HWC uint8 (or float32 while being processed)
    size: int  # the output size (the model's input)
    scale: float = 1.0  # current width / output width


def _misalign(st: _State, pixels: float, rng: np.random.Generator) -> None:
    """Alignment error: on a small, blurred face the detector's five landmarks are off by a
    few pixels, so the crop a camera yields is shifted, scaled and turned a little. A model
    adapted on perfectly aligned degraded copies has never seen that (``pixels``: the largest
    shift, in pixels of the 112-px crop; scale and rotation errors follow it)."""
    size = st.size
    u = pixels * size / 112.0
    dx, dy = rng.uniform(-u, u, 2)
    scale = 1.0 + rng.uniform(-1.0, 1.0) * pixels / 70.0
    angle = rng.uniform(-1.0, 1.0) * 1.5 * pixels
    m = cv2.getRotationMatrix2D((size / 2.0, size / 2.0), angle, scale)
    m[:, 2] += (dx, dy)
    st.img = cv2.warpAffine(
        st.img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def _lowres(st: _State, width: float, rng: np.random.Generator) -> None:
    target = FACE_WIDTH_112 * st.size / 112.0
    f = min(1.0, max(2.0, width) / target)
    small = max(4, round(st.size * f))
    st.img = cv2.resize(st.img, (small, small), interpolation=cv2.INTER_AREA)
    st.scale = small / st.size


def _blur(st: _State, sigma: float, rng: np.random.Generator) -> None:
    s = sigma * st.scale
    if s > 0.05:
        st.img = cv2.GaussianBlur(st.img, (0, 0), s)


def _motion(st: _State, length: float, rng: np.random.Generator) -> None:
    n = max(1, round(length * st.scale))
    if n < 2:
        return
    k = np.zeros((n, n), np.float32)
    k[n // 2, :] = 1.0 / n
    angle = float(rng.uniform(0, 180))
    rot = cv2.getRotationMatrix2D(((n - 1) / 2, (n - 1) / 2), angle, 1.0)
    k = cv2.warpAffine(k, rot, (n, n))
    k /= max(k.sum(), 1e-6)
    st.img = cv2.filter2D(st.img, -1, k)


def _noise(st: _State, sigma: float, rng: np.random.Generator) -> None:
    x = st.img.astype(np.float32) + rng.normal(0.0, sigma, st.img.shape).astype(np.float32)
    st.img = np.clip(x, 0, 255).astype(np.uint8)


def _lowlight(st: _State, gamma: float, rng: np.random.Generator) -> None:
    """Dim light: gamma > 1 darkens (and the sensor's gain leaves fewer levels)."""
    x = (st.img.astype(np.float32) / 255.0) ** gamma
    st.img = np.clip(x * 255.0, 0, 255).astype(np.uint8)


def _gray(st: _State, _: float, rng: np.random.Generator) -> None:
    g = cv2.cvtColor(st.img, cv2.COLOR_RGB2GRAY)
    st.img = np.repeat(g[:, :, None], 3, axis=2)


def _nir(st: _State, _: float, rng: np.random.Generator) -> None:
    """A near-infrared look: one channel, red-weighted (skin is bright in NIR), flat contrast."""
    x = st.img.astype(np.float32)
    g = 0.6 * x[..., 0] + 0.3 * x[..., 1] + 0.1 * x[..., 2]
    g = 0.7 * g + 0.3 * 160.0
    st.img = np.repeat(np.clip(g, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def _jpeg(st: _State, quality: float, rng: np.random.Generator) -> None:
    q = int(round(min(100, max(1, quality))))
    bgr = np.ascontiguousarray(st.img[..., ::-1])
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q])
    if ok:
        st.img = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


_MASK_COLOURS = np.array(
    [[170, 200, 225], [235, 235, 235], [30, 30, 35], [90, 120, 170], [200, 170, 150]], np.uint8
)


def _mask(st: _State, coverage: float, rng: np.random.Generator) -> None:
    """A surgical/cloth mask from the landmarks: from the nose bridge (``coverage`` of the way
    from the eyes to the nose tip) down past the chin, cheek to cheek."""
    lm = _template(st.size)
    eyes_y = (lm[0, 1] + lm[1, 1]) / 2
    nose = lm[2]
    top = eyes_y + (nose[1] - eyes_y) * (1.0 - coverage)
    mouth_y = (lm[3, 1] + lm[4, 1]) / 2
    chin = mouth_y + 1.3 * (mouth_y - nose[1])
    half = 1.05 * (lm[1, 0] - lm[0, 0])
    cx = nose[0] + rng.uniform(-1.5, 1.5)
    pts = np.array(
        [
            [cx - half, top + 4],
            [cx, top - 1],
            [cx + half, top + 4],
            [cx + half * 1.02, mouth_y],
            [cx + half * 0.55, chin],
            [cx - half * 0.55, chin],
            [cx - half * 1.02, mouth_y],
        ],
        np.float32,
    )
    colour = _MASK_COLOURS[rng.integers(len(_MASK_COLOURS))].astype(np.float32)
    colour = np.clip(colour * rng.uniform(0.8, 1.1), 0, 255).astype(np.uint8)
    img = st.img.copy()
    cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], colour.tolist(), cv2.LINE_AA, 4)
    st.img = img


def _occluder(st: _State, _: float, rng: np.random.Generator) -> None:
    """Dark glasses over both eyes, placed from the eye landmarks."""
    lm = _template(st.size)
    d = lm[1, 0] - lm[0, 0]
    img = st.img.copy()
    shade = int(rng.integers(10, 60))
    for eye in lm[:2]:
        centre = (int(round(eye[0])), int(round(eye[1])))
        axes = (int(round(0.36 * d)), int(round(0.24 * d)))
        cv2.ellipse(img, centre, axes, 0, 0, 360, (shade, shade, shade), -1, cv2.LINE_AA)
    y = int(round((lm[0, 1] + lm[1, 1]) / 2))
    cv2.line(img, (int(lm[0, 0] + 0.3 * d), y), (int(lm[1, 0] - 0.3 * d), y), (shade,) * 3, 2)
    st.img = img


@dataclass(frozen=True)
class Degradation:
    """One registered degradation: its default and allowed strengths, and what it does."""

    name: str
    order: int
    default: float
    low: float
    high: float
    unit: str
    fn: Callable[[_State, float, np.random.Generator], None]


REGISTRY: dict[str, Degradation] = {
    d.name: d
    for d in [
        Degradation("mask", 0, 0.6, 0.2, 1.0, "share of the eyes-to-nose span covered", _mask),
        Degradation("occluder", 1, 1.0, 0.0, 1.0, "(dark glasses)", _occluder),
        Degradation("lowlight", 2, 2.0, 1.0, 4.0, "gamma (>1 darker)", _lowlight),
        Degradation("misalign", 3, 2.0, 0.0, 8.0, "landmark error, px of 112", _misalign),
        Degradation("lowres", 4, 28.0, 8.0, 112.0, "face width in pixels", _lowres),
        Degradation("blur", 5, 1.0, 0.0, 5.0, "gaussian sigma, px", _blur),
        Degradation("motion", 6, 5.0, 0.0, 25.0, "motion blur length, px", _motion),
        Degradation("noise", 7, 5.0, 0.0, 40.0, "sensor noise sigma (0-255)", _noise),
        Degradation("gray", 8, 1.0, 0.0, 1.0, "(grayscale)", _gray),
        Degradation("nir", 9, 1.0, 0.0, 1.0, "(near-infrared look)", _nir),
        Degradation("jpeg", 10, 40.0, 5.0, 100.0, "JPEG quality", _jpeg),
    ]
}


@dataclass(frozen=True)
class Step:
    """A degradation with a strength range (``low == high``: a fixed strength)."""

    deg: Degradation
    low: float
    high: float

    def spec(self) -> str:
        if self.low == self.high:
            return f"{self.deg.name}:{self.low:g}"
        return f"{self.deg.name}:{self.low:g}-{self.high:g}"


class Condition:
    """A parsed condition: degradation steps in camera order, applied deterministically."""

    def __init__(self, steps: list[Step], seed: int = 0) -> None:
        self.steps = sorted(steps, key=lambda s: s.deg.order)
        self.seed = int(seed)

    @property
    def spec(self) -> str:
        return ",".join(s.spec() for s in self.steps)

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __repr__(self) -> str:
        return f"Condition({self.spec!r}, seed={self.seed})"

    def apply(self, img: np.ndarray, key: int) -> np.ndarray:
        """``img`` (HWC uint8 aligned face crop) degraded; same ``(seed, key)``, same result."""
        if not self.steps:
            return img
        rng = np.random.default_rng([self.seed, int(key) & 0xFFFFFFFFFFFF])
        size = img.shape[0]
        st = _State(np.ascontiguousarray(img), size)
        for step in self.steps:
            strength = step.low if step.low == step.high else rng.uniform(step.low, step.high)
            step.deg.fn(st, float(strength), rng)
        if st.img.shape[0] != size or st.img.shape[1] != img.shape[1]:
            st.img = cv2.resize(st.img, (img.shape[1], size), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(st.img, dtype=np.uint8)

    def apply_chw(self, img, key: int):
        """The same on a uint8 CHW torch tensor (the training set's pixel store)."""
        import torch  # noqa: PLC0415 - only the training path needs it

        out = self.apply(img.permute(1, 2, 0).numpy(), key)
        return torch.from_numpy(out).permute(2, 0, 1).contiguous()


def path_key(path: object) -> int:
    """A stable integer key for an image file (its path string), for :meth:`Condition.apply`."""
    return int.from_bytes(hashlib.sha256(str(path).encode()).digest()[:6], "big")


def parse_condition(spec: str | None, seed: int = 0) -> Condition:
    """``"lowres:28,jpeg:15-70,mask"`` (or a preset name) -> a :class:`Condition`.

    Raises :class:`SiamfaceError` naming the known degradations or the allowed range."""
    if not spec or spec.strip().lower() in ("none", "null", "clean"):
        return Condition([], seed)
    steps: list[Step] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, value = part.partition(":")
        name = name.strip().lower()
        if name in PRESETS and not value:
            steps.extend(parse_condition(PRESETS[name], seed).steps)
            continue
        deg = REGISTRY.get(name)
        if deg is None:
            raise SiamfaceError(
                f"unknown condition {name!r}; known: {', '.join(REGISTRY)} "
                f"(presets: {', '.join(PRESETS)})"
            )
        try:
            if not value:
                lo = hi = deg.default
            elif "-" in value.strip()[1:]:
                a, b = value.strip().split("-", 1) if value[0] != "-" else (value, value)
                lo, hi = float(a), float(b)
            else:
                lo = hi = float(value)
        except ValueError:
            raise SiamfaceError(
                f"condition {part!r}: strength must be a number or a range like "
                f"{deg.name}:{deg.low:g}-{deg.high:g}"
            ) from None
        if lo > hi:
            lo, hi = hi, lo
        if lo < deg.low or hi > deg.high:
            raise SiamfaceError(
                f"condition {part!r}: {deg.name} takes {deg.low:g}-{deg.high:g} ({deg.unit})"
            )
        if any(s.deg.name == name for s in steps):
            raise SiamfaceError(f"condition {spec!r} names {name} twice")
        steps.append(Step(deg, lo, hi))
    return Condition(steps, seed)


def describe_conditions() -> str:
    """One line per degradation and preset, for ``--help``."""
    lines = [
        f"  {d.name}:{d.default:g}  ({d.low:g}-{d.high:g}, {d.unit})" for d in REGISTRY.values()
    ]
    lines += [f"  {k} = {v}" for k, v in PRESETS.items()]
    return "\n".join(lines)
