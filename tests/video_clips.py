"""Synthetic video clips with known ground truth, built from the sample photos with ffmpeg.

Each *actor* is one real photo of a person (celeba_wild: a face with its surroundings) that
enters, moves and changes scale across a textured background, and may leave and come back.
The clip is encoded by Debian's ffmpeg (H.264 in MP4); the ground truth (who is where, in
which frame) comes from the same description, so tests and bench/watch.py can score tracks.
Shared by tests/test_watch*.py and bench/watch.py.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


def have_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None


@dataclass
class Actor:
    """A photo of ``person`` visible during each (start_s, end_s) span, moving linearly from
    ``p0`` to ``p1`` (photo centre, fractions of the frame) while its height goes from ``h0``
    to ``h1`` (fraction of the frame height)."""

    person: str
    photo: Path
    spans: list[tuple[float, float]]
    p0: tuple[float, float]
    p1: tuple[float, float]
    h0: float
    h1: float
    enrolled: bool = True
    _img: Image.Image | None = field(default=None, repr=False)

    def image(self) -> Image.Image:
        if self._img is None:
            self._img = Image.open(self.photo).convert("RGB")
        return self._img

    def box_at(self, t: float, width: int, height: int) -> tuple[int, int, int, int] | None:
        """Where the photo is at time ``t`` (x0, y0, x1, y1 in pixels), None when absent."""
        for a, b in self.spans:
            if a <= t < b:
                u = (t - a) / max(b - a, 1e-9)
                cx = (self.p0[0] + (self.p1[0] - self.p0[0]) * u) * width
                cy = (self.p0[1] + (self.p1[1] - self.p0[1]) * u) * height
                h = (self.h0 + (self.h1 - self.h0) * u) * height
                im = self.image()
                w = h * im.width / im.height
                x0, y0 = round(cx - w / 2), round(cy - h / 2)
                return x0, y0, x0 + round(w), y0 + round(h)
        return None


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth textured background (no faces), RGB uint8."""
    rng = np.random.default_rng(seed)
    small = rng.integers(60, 200, size=(9, 16, 3), dtype=np.uint8)
    return np.asarray(
        Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8
    )


def render(actors: list[Actor], t: float, bg: np.ndarray) -> np.ndarray:
    """The frame at time ``t``: every present actor's photo pasted on the background."""
    h, w = bg.shape[:2]
    canvas = Image.fromarray(bg)
    for actor in actors:
        box = actor.box_at(t, w, h)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        canvas.paste(actor.image().resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR), box)
    return np.asarray(canvas, dtype=np.uint8)


def frames(
    actors: list[Actor], seconds: float, fps: float, size: tuple[int, int]
) -> Iterator[np.ndarray]:
    bg = background(*size)
    for i in range(round(seconds * fps)):
        yield render(actors, i / fps, bg)


def encode(
    actors: list[Actor],
    out: Path,
    seconds: float,
    fps: float = 10,
    size: tuple[int, int] = (480, 270),
    codec: tuple[str, ...] = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"),
) -> Path:
    """Encode the clip with ffmpeg (raw RGB frames on its stdin)."""
    w, h = size
    cmd = [
        "ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
        "-s", f"{w}x{h}", "-r", str(fps), "-i", "-", *codec, "-g", str(round(fps)), str(out),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    for frame in frames(actors, seconds, fps, size):
        proc.stdin.write(frame.tobytes())
    proc.stdin.close()
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed: {err}")
    return out


def truth_at(
    actors: list[Actor], t: float, size: tuple[int, int]
) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(person, photo box) of every actor present at time ``t``."""
    out = []
    for a in actors:
        box = a.box_at(t, *size)
        if box is not None:
            out.append((a.person, box))
    return out


def person_of_track(
    actors: list[Actor], box: tuple[float, float, float, float], t: float, size
) -> str | None:
    """The actor whose photo contains the centre of a face ``box`` at time ``t``."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    for person, (x0, y0, x1, y1) in truth_at(actors, t, size):
        if x0 <= cx <= x1 and y0 <= cy <= y1:
            return person
    return None


def single_face_people(
    root: Path, n_people: int, n_photos: int, min_face: float = 40.0
) -> dict[str, list[Path]]:
    """People of ``root`` (identity folders) with ``n_photos`` photos holding exactly one
    detected face, largest side >= ``min_face`` px: actors whose ground truth is unambiguous."""
    from siamface.faces.detect import detect_faces, get_detector

    det = get_detector("yunet", 0.6)
    found: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        good = []
        for photo in sorted(folder.iterdir()):
            with Image.open(photo) as im:
                faces = detect_faces(im.convert("RGB"), det, rotations=False)
            if len(faces) == 1 and faces[0].size >= min_face and faces[0].score >= 0.85:
                good.append(photo)
            if len(good) == n_photos:
                break
        if len(good) == n_photos:
            found[folder.name] = good
        if len(found) == n_people:
            break
    return found
