"""Face tracks across frames with norfair (the maintained ``norfair-enough`` release).

Why norfair: it takes any detector's boxes, predicts them with a Kalman filter between
detections (``period``: detect every Nth frame, track in between), and installs in seconds
(numpy, scipy, rich). Its alternatives failed on dependencies here: supervision 0.31 no longer
has ByteTrack, which moved to ``trackers`` (which, like supervision 0.26, requires the GUI
``opencv-python`` wheel beside our ``opencv-python-headless``: two cv2 packages in one
environment), the original ``norfair`` 2.3 pins numpy < 2, and boxmot brings a re-id model
stack. docs/watch.md has the details.

Matching uses the distance between box centres in units of the tracked face's size, so a face
that moved less than its own width between detections stays the same track even when the
boxes barely overlap (fast motion, detection every 3rd frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def center_distance(candidates: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """(n_candidates, n_objects) centre offsets in units of each track's face size; rows are
    boxes flattened as x0, y0, x1, y1 (norfair's vectorised distance contract)."""
    c = (candidates[:, :2] + candidates[:, 2:]) / 2
    o = (objects[:, :2] + objects[:, 2:]) / 2
    size = np.sqrt(np.abs(np.prod(objects[:, 2:] - objects[:, :2], axis=1))).clip(min=1.0)
    return np.linalg.norm(c[:, None, :] - o[None, :, :], axis=2) / size[None, :]


@dataclass
class TrackedBox:
    """A live track this frame: id, box (detected this frame, else the prediction), and the
    index of its face in this frame's detections (None when only predicted)."""

    track_id: int
    box: tuple[float, float, float, float]
    face_index: int | None


class FaceTracker:
    """Wrap ``norfair.Tracker`` for face boxes; ``lost_after`` frames without a detection end
    a track (a person who leaves and returns later gets a new track)."""

    def __init__(self, lost_after: int = 15, max_distance: float = 1.0) -> None:
        from norfair import Tracker
        from norfair.distances import VectorizedDistance

        self._tracker = Tracker(
            distance_function="iou",  # replaced below: Tracker() takes names or scalar callables
            distance_threshold=max_distance,
            hit_counter_max=max(2, int(lost_after)),
            initialization_delay=0,
        )
        self._tracker.distance_function = VectorizedDistance(center_distance)
        self._frame = 0

    def update(
        self, boxes: list[tuple[float, float, float, float]] | None, period: int = 1
    ) -> list[TrackedBox]:
        """Feed this frame's boxes (None on a frame without detection) -> live tracks."""
        from norfair import Detection

        self._frame += 1
        dets = None
        if boxes is not None:
            dets = [
                Detection(
                    np.array([[b[0], b[1]], [b[2], b[3]]], dtype=np.float64),
                    data=(self._frame, i),
                )
                for i, b in enumerate(boxes)
            ]
        objects = self._tracker.update(dets, period=period)
        out = []
        for obj in objects:
            if obj.id is None:
                continue
            matched = obj.last_detection is not None and obj.last_detection.data[0] == self._frame
            if matched and boxes is not None:
                i = obj.last_detection.data[1]
                out.append(TrackedBox(int(obj.id), tuple(boxes[i]), i))
            else:
                e = obj.estimate
                out.append(TrackedBox(int(obj.id), (e[0, 0], e[0, 1], e[1, 0], e[1, 1]), None))
        return out

    def alive_ids(self) -> set[int]:
        """Tracks the tracker still keeps (including ones briefly without a detection)."""
        return {int(o.id) for o in self._tracker.tracked_objects if o.id is not None}
