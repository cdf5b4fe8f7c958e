"""Boxes and names drawn on frames, written to a video file or encoded for MJPEG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from siamface.errors import OutputError
from siamface.gallery import UNKNOWN

KNOWN_BGR = (60, 200, 60)
UNKNOWN_BGR = (40, 160, 255)


def draw(image: np.ndarray, boxes: list[dict]) -> np.ndarray:
    """A copy of the BGR ``image`` with each track's box, id and name (score) drawn."""
    import cv2

    out = image.copy()
    thick = max(1, round(max(out.shape[:2]) / 500))
    for b in boxes:
        x0, y0, x1, y1 = (round(v) for v in b["box"])
        color = UNKNOWN_BGR if b["person"] == UNKNOWN else KNOWN_BGR
        cv2.rectangle(out, (x0, y0), (x1, y1), color, thick if b["detected"] else 1)
        label = f"#{b['track']} {b['person']}"
        if b.get("score") is not None and b["person"] != UNKNOWN:
            label += f" {b['score']:.2f}"
        scale = 0.4 * thick
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = max(th + 4, y0)
        cv2.rectangle(out, (x0, ty - th - 4), (x0 + tw + 4, ty), color, -1)
        cv2.putText(out, label, (x0 + 2, ty - 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1)
    return out


def jpeg(image: np.ndarray, quality: int = 80) -> bytes:
    """BGR image -> JPEG bytes (one part of an MJPEG stream)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OutputError("cannot encode a frame as JPEG")
    return buf.tobytes()


class VideoOut:
    """``--video OUT.mp4``: annotated frames to an MP4 (mp4v) file, opened on the first frame
    (its size is the processed frames' size)."""

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.is_dir():
            raise OutputError(f"--video: folder {self.path.parent} does not exist")
        self.fps = max(1.0, float(fps))
        self._writer = None

    def __call__(self, view) -> None:
        import cv2

        img = draw(view.image, view.boxes)
        if self._writer is None:
            h, w = img.shape[:2]
            self._writer = cv2.VideoWriter(
                str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h)
            )
            if not self._writer.isOpened():
                raise OutputError(f"--video: cannot write {self.path}")
        self._writer.write(img)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
