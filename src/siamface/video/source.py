"""Frames from a video file, a folder of frames, a webcam or a network stream.

Decoder: OpenCV's ``VideoCapture`` with the FFmpeg build inside the ``opencv-python-headless``
wheel. It is already a dependency (the detector runs on OpenCV), it reads files, webcams,
``rtsp://`` and ``http(s)://`` alike, it honours open/read timeouts
(``CAP_PROP_OPEN_TIMEOUT_MSEC`` / ``CAP_PROP_READ_TIMEOUT_MSEC``, so a URL that never answers
fails in seconds instead of hanging), and it hands back BGR arrays that OpenCV's detector takes
directly. PyAV decodes the same streams (it wraps the same FFmpeg libraries) but would be one
more 30 MB wheel for no gain here; docs/watch.md has the measurement behind the choice.

A file ends cleanly. A live source (stream, webcam) that stops delivering frames is reopened
with exponential backoff; the :class:`Gap` it reports says how long no frames came and how many
attempts it took, so a consumer knows who might have walked by unseen.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from siamface.errors import SiamfaceError

#: File names a folder of frames may hold, read in sorted order.
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")


class SourceError(SiamfaceError):
    """The source cannot be opened or decoded; the message says which and why."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame. ``time`` is seconds into the video (files) or since the watch began
    (live sources); ``wall`` is ``time.monotonic()`` when it was read (for latency)."""

    index: int
    time: float
    image: np.ndarray  # HWC uint8 BGR
    wall: float


@dataclass(frozen=True)
class Gap:
    """A live source delivered no frames from ``start`` to ``end`` (seconds since the watch
    began) and was reconnected after ``attempts`` tries (``recovered`` False: it gave up)."""

    start: float
    end: float
    attempts: int
    recovered: bool
    reason: str

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class SourceSpec:
    """What SOURCE names: ``kind`` is file, folder, camera or stream."""

    kind: str
    target: str | int

    @property
    def live(self) -> bool:
        return self.kind in ("camera", "stream")


def parse_source(source: str | int | os.PathLike) -> SourceSpec:
    """Classify SOURCE: a webcam index (``0``), a stream URL, a folder of frames or a file."""
    if isinstance(source, int) or (isinstance(source, str) and source.strip().isdigit()):
        return SourceSpec("camera", int(source))
    text = str(source)
    if text.lower().startswith(STREAM_SCHEMES):
        return SourceSpec("stream", text)
    path = Path(text).expanduser()
    if path.is_dir():
        return SourceSpec("folder", str(path))
    if path.is_file():
        return SourceSpec("file", str(path))
    raise SourceError(
        f"source not found: {text} (give a video file, a folder of frames, a webcam index "
        "or an rtsp:// / http(s):// URL)"
    )


def _quiet_cv2():
    """cv2 with FFmpeg's and OpenCV's own console chatter off: the watch reports problems
    itself, in one line ("moov atom not found" and OpenCV warnings would only add noise)."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET, read at first open
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    return cv2


def _capture(target: str | int, timeout_s: float):
    """An opened ``cv2.VideoCapture`` (FFmpeg backend for files and URLs) or None."""
    cv2 = _quiet_cv2()

    ms = int(timeout_s * 1000)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
    if isinstance(target, int):
        cap = cv2.VideoCapture(target, cv2.CAP_ANY, params)
    else:
        cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        cap.release()
        return None
    return cap


class _LatestFrame:
    """Reads a live capture in its own thread and keeps only the newest frame.

    A camera does not wait for us: read in step with a slower consumer, its frames queue up in
    socket and decoder buffers and what the watch reports drifts further into the past every
    second. Keeping the newest frame (and counting the ones skipped) bounds that delay to one
    frame's processing time.
    """

    def __init__(self, cap, clock) -> None:
        self.cap, self.clock = cap, clock
        self.cond = threading.Condition()
        self.item: tuple[np.ndarray, float, float] | None = None
        self.seq = self.taken = self.dropped = 0
        self.failed = False
        self._stop = False
        self.thread = threading.Thread(target=self._run, name="siamface-grab", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            ok, img = self.cap.read()
            with self.cond:
                if not ok or img is None:
                    self.failed = True
                    self.cond.notify_all()
                    return
                if self.seq > self.taken:
                    self.dropped += 1
                self.item = (img, self.clock(), time.monotonic())
                self.seq += 1
                self.cond.notify_all()

    def next(self, timeout: float) -> tuple[int, np.ndarray, float, float] | None:
        """(sequence number, BGR frame, source time, wall) of the newest unseen frame; None
        when the capture failed or nothing came within ``timeout``."""
        with self.cond:
            self.cond.wait_for(lambda: self.seq > self.taken or self.failed, timeout)
            if self.seq > self.taken and self.item is not None:
                self.taken = self.seq
                return (self.seq, *self.item)
            return None

    def stop(self, timeout: float) -> bool:
        """Ask the thread to end; True when it did (then the capture may be released)."""
        self._stop = True
        self.thread.join(timeout)
        return not self.thread.is_alive()


class VideoSource:
    """Iterate over the frames of SOURCE (see :func:`parse_source`), resiliently.

    ``start``/``stop`` (seconds) cut a file; ``folder_fps`` times a folder of frames;
    ``timeout`` bounds opening and each read of a live source; ``reconnect_for`` is how long
    (seconds) a dropped live source is retried, with backoff from 0.5 s doubling up to
    ``max_backoff``, before the watch ends with a :class:`Gap` marked not recovered.
    """

    def __init__(
        self,
        source: str | int | os.PathLike,
        *,
        start: float = 0.0,
        stop: float | None = None,
        folder_fps: float = 25.0,
        timeout: float = 10.0,
        reconnect_for: float = 60.0,
        max_backoff: float = 8.0,
    ) -> None:
        self.spec = parse_source(source)
        self.start, self.stop = float(start), stop
        if self.start < 0 or (stop is not None and stop <= self.start):
            raise SourceError(f"bad --start/--stop: {start} .. {stop}")
        self.folder_fps = folder_fps
        self.timeout, self.reconnect_for, self.max_backoff = timeout, reconnect_for, max_backoff
        self.fps: float | None = None
        self.size: tuple[int, int] | None = None
        self._files: list[Path] = []
        self._cap = None
        self._grabber: _LatestFrame | None = None
        #: Live sources: frames decoded but skipped because a newer one was already there.
        self.dropped = 0
        self._dropped_before = 0
        self._t0 = time.monotonic()
        self._open_first()

    # -- opening --------------------------------------------------------------------------
    def _open_first(self) -> None:
        spec = self.spec
        if spec.kind == "folder":
            self._files = sorted(
                p for p in Path(str(spec.target)).iterdir() if p.suffix.lower() in FRAME_SUFFIXES
            )
            if not self._files:
                raise SourceError(f"{spec.target}: no image files ({', '.join(FRAME_SUFFIXES)})")
            self.fps = self.folder_fps
            return
        cap = _capture(spec.target, self.timeout)
        if cap is None:
            raise SourceError(self._cannot_open())
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise SourceError(self._cannot_decode())
        import cv2

        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None
        self.size = (first.shape[1], first.shape[0])
        self._first = first
        self._cap = cap
        if spec.kind == "file" and self.start > 0:
            cap.set(cv2.CAP_PROP_POS_MSEC, self.start * 1000)
            self._first = None

    def _cannot_open(self) -> str:
        spec = self.spec
        if spec.kind == "camera":
            return f"cannot open webcam {spec.target} (no such device, or it is busy)"
        if spec.kind == "stream":
            return (
                f"cannot open stream {spec.target}: no answer within {self.timeout:g} s "
                "(check the URL, that the camera/server is up, and the network)"
            )
        return (
            f"cannot open {spec.target}: no video the FFmpeg inside OpenCV can decode (corrupt "
            "or truncated file, no video track, or an unknown codec)"
        )

    def _cannot_decode(self) -> str:
        return (
            f"cannot decode {self.spec.target}: no video frame could be read (corrupt file, "
            "no video track, or a codec the FFmpeg inside OpenCV cannot decode)"
        )

    def now(self) -> float:
        """Seconds since the watch began."""
        return time.monotonic() - self._t0

    # -- reading --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Frame | Gap]:
        if self.spec.kind == "folder":
            yield from self._folder_frames()
        elif self.spec.live:
            yield from self._live_frames()
        else:
            yield from self._capture_frames()

    def _live_frames(self) -> Iterator[Frame | Gap]:
        """Newest frames of a live source; reconnect when it drops."""
        first = getattr(self, "_first", None)
        index = 0
        if first is not None:
            self._first = None
            yield Frame(0, self.now(), first, time.monotonic())
            index = 1
        last_ok = self.now()
        try:
            while True:
                grab = self._grabber = _LatestFrame(self._cap, self.now)
                while True:
                    got = grab.next(self.timeout + 1.0)
                    if got is None:
                        break
                    seq, img, t, wall = got
                    self.dropped = self._dropped_before + grab.dropped
                    yield Frame(index + seq - 1, t, img, wall)
                    last_ok = self.now()
                index += grab.seq
                self._dropped_before += grab.dropped
                stopped = grab.stop(self.timeout + 1.0)
                self._grabber = None
                if not stopped:
                    self._cap = None  # still inside read(): leave it, never free it under a read
                gap = self._reconnect(last_ok)
                yield gap
                if not gap.recovered:
                    return
        finally:
            self.close()

    def _folder_frames(self) -> Iterator[Frame]:
        import cv2

        for i, path in enumerate(self._files):
            t = i / self.folder_fps
            if t < self.start:
                continue
            if self.stop is not None and t >= self.stop:
                return
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                continue  # an unreadable frame in a folder is skipped, like a dropped frame
            yield Frame(i, t, img, time.monotonic())

    def _capture_frames(self) -> Iterator[Frame]:
        """A file's frames in order, to its end."""
        import cv2

        index = 0
        first = getattr(self, "_first", None)
        self._first = None
        try:
            while True:
                if first is not None:
                    ok, img, first = True, first, None
                else:
                    ok, img = self._cap.read() if self._cap is not None else (False, None)
                if not ok or img is None:
                    return  # end of file
                t = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                if index == 0 and t <= 0 and self.start > 0:
                    t = self.start
                if self.stop is not None and t >= self.stop:
                    return
                yield Frame(index, t, img, time.monotonic())
                index += 1
        finally:
            self.close()

    def _reconnect(self, last_ok: float) -> Gap:
        """Reopen a dropped live source with exponential backoff; the gap runs from the last
        good frame (``last_ok``) to the first frame after reconnecting."""
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        start, attempts, delay = self.now(), 0, 0.5
        while self.now() - start < self.reconnect_for:
            attempts += 1
            cap = _capture(self.spec.target, min(self.timeout, self.reconnect_for))
            if cap is not None:
                self._cap = cap
                return Gap(last_ok, self.now(), attempts, True, "stream dropped; reconnected")
            time.sleep(min(delay, max(0.0, self.reconnect_for - (self.now() - start))))
            delay = min(delay * 2, self.max_backoff)
        return Gap(
            last_ok,
            self.now(),
            attempts,
            False,
            f"stream dropped; no answer for {self.reconnect_for:g} s, giving up",
        )

    def close(self) -> None:
        if self._grabber is not None:
            if not self._grabber.stop(self.timeout + 1.0):
                self._cap = None  # the reader is still inside read(): do not free under it
            self._grabber = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None
