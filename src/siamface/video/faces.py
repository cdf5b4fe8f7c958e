"""Every face in a frame: detect all, align each, embed them in one batch.

Detection runs on a downscaled copy of the frame (``detect_side`` px on the longest side):
YuNet finds faces of ~10 px and up, so a 720p frame read at 640 px still finds 20 px faces,
at a third of the cost. Faces are then cut from the full-resolution frame with the same
5-point alignment the model was trained with, and the model embeds all of them in a single
batch (one forward pass per frame, however many people are in it), through a frozen inference
graph of the same network when one gives the same embeddings (``fastpath``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from siamface.faces.align import AlignParams, warp_face
from siamface.faces.detect import Face, FaceDetector, get_detector, is_available
from siamface.faces.errors import NoFaceError
from siamface.video.fastpath import fast_embedder
from siamface.video.quality import QualityParams, face_quality

#: The detector for video: the same YuNet network as the default ``yunet`` (yuface), run by
#: OpenCV. On the shared 2-core test machine a 640x360 frame took 18 ms of CPU with OpenCV's
#: runtime and 309 ms with yuface's (its OpenMP runtime spins against torch's), and a video
#: runs the detector on every frame, not once per photo.
WATCH_DETECTOR = "yunet-opencv"


@dataclass
class FrameFace:
    """One face of a frame: where it is (frame pixels), its aligned crop, embedding, quality."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float
    crop: np.ndarray  # HWC uint8 RGB, the model's input size
    quality: dict[str, float]
    embedding: np.ndarray | None = None


class FaceFinder:
    """Detect (min size, min score), align and embed every face of a BGR frame."""

    def __init__(
        self,
        embedder,
        *,
        detector: str | None = None,
        min_score: float = 0.6,
        min_size: float = 24.0,
        detect_side: int = 640,
        roi: tuple[int, int, int, int] | None = None,
        fast: bool = True,
    ) -> None:
        # ``fast``: embed through the frozen graph (same embeddings, ~30 % less CPU for
        # SFace); False keeps the model as loaded (the bench's baseline).
        self.embedder = fast_embedder(embedder) if fast else embedder
        pre = embedder.preprocessing
        params = AlignParams.from_dict(pre.align)
        self.size = pre.image_size
        self.margin = params.margin
        self.aligned = pre.aligned
        if detector is None:
            detector = WATCH_DETECTOR if is_available(WATCH_DETECTOR) else params.detector
        self.detector: FaceDetector = get_detector(detector, min_score)
        self.min_size = float(min_size)
        self.detect_side = int(detect_side)
        self.roi = roi
        self.qparams = QualityParams(min_size=self.min_size, min_score=min_score)

    def detect(self, bgr: np.ndarray) -> list[Face]:
        """Faces in frame pixels, of at least ``min_size`` px, inside the ROI."""
        import cv2

        x0, y0 = 0, 0
        view = bgr
        if self.roi is not None:
            x0, y0, w, h = self.roi
            view = bgr[y0 : y0 + h, x0 : x0 + w]
        h, w = view.shape[:2]
        f = min(1.0, self.detect_side / max(h, w))
        if f < 1.0:
            view = cv2.resize(view, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
        rgb = np.ascontiguousarray(view[:, :, ::-1])
        scale = np.array([1.0 / f, 1.0 / f])
        offset = np.array([x0, y0], dtype=np.float64)
        faces = [
            face.mapped(lambda p: p * scale + offset) for face in self.detector.detect_array(rgb)
        ]
        return [face for face in faces if face.size >= self.min_size]

    def crops(self, bgr: np.ndarray, faces: list[Face]) -> list[FrameFace]:
        """Aligned crops and their quality (no embedding yet)."""
        img = Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))
        out = []
        for face in faces:
            try:
                if self.aligned:
                    crop = warp_face(img, face.landmarks, self.size, self.margin)
                else:
                    crop = np.asarray(
                        img.crop(tuple(round(v) for v in face.box)).resize((self.size,) * 2),
                        dtype=np.uint8,
                    )
            except NoFaceError:
                continue
            q = face_quality(face.size, face.score, face.landmarks, crop, self.qparams)
            out.append(FrameFace(face.box, face.landmarks, face.score, crop, q))
        return out

    def embed(self, faces: list[FrameFace]) -> None:
        """Fill in ``embedding`` for all faces with one batch through the model."""
        if not faces:
            return
        batch = np.stack([f.crop for f in faces]).transpose(0, 3, 1, 2)
        emb = self.embedder.embed_batch(np.ascontiguousarray(batch))
        for f, e in zip(faces, emb, strict=True):
            f.embedding = np.asarray(e, dtype=np.float32)

    def __call__(self, bgr: np.ndarray) -> list[FrameFace]:
        faces = self.crops(bgr, self.detect(bgr))
        self.embed(faces)
        return faces
