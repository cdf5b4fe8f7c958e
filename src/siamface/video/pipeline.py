"""The watch loop: frames -> faces -> tracks -> identities -> events.

:func:`watch` is a generator of JSON-ready event dicts (the CLI prints them as JSON lines, the
web page lists them, Python callers iterate). Event kinds:

* ``start``: the source as opened (kind, fps, size) and the threshold in use;
* ``identity``: a track was named (or its name was revised) - track id, person or
  ``unknown``, score, frame and time, faces seen so far, ``latency_ms`` from reading the frame
  to the event;
* ``track``: a track ended (the person left, or the video ended) - person, score, first and
  last seen (frame and time), duration, faces, identity switches, the best face crop's path;
* ``gap``: a live source dropped and was reconnected (or not);
* ``summary``: at the end - who appeared, when and for how long, frame counts and speed.

Renderers (``--video``, the web page's MJPEG stream) get every processed frame with its boxes
through ``on_frame``; the generator itself stays free of drawing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from siamface.decide.threshold import Threshold
from siamface.embed.load import Embedder, create_embedder, model_available
from siamface.errors import SiamfaceError
from siamface.gallery import UNKNOWN, Gallery, open_gallery
from siamface.video.ahead import run_ahead
from siamface.video.faces import FaceFinder, FrameFace
from siamface.video.fastpath import graph_name
from siamface.video.identity import IdentityRules, TrackIdentity
from siamface.video.source import Frame, Gap, VideoSource
from siamface.video.tracking import FaceTracker


@dataclass(frozen=True)
class WatchOptions:
    """Everything ``siamface watch`` can be told (defaults = the CLI's)."""

    every: int = 1  # process every Nth decoded frame
    fps: float | None = None  # or: process at most this many frames per second of video
    detect_every: int = 1  # run the detector on every Kth processed frame, track in between
    roi: tuple[int, int, int, int] | None = None  # x, y, w, h in frame pixels
    max_side: int | None = None  # downscale frames whose longest side is larger
    detect_side: int = 640
    start: float = 0.0
    stop: float | None = None
    max_seconds: float | None = None
    min_face: float = 24.0
    min_score: float = 0.6
    detector: str | None = None
    threshold: Threshold | float | None = None  # None: the gallery's (else the model's)
    lost_after: float = 1.0  # seconds without a detection that end a track
    settle_faces: int = 8  # embed every face of a track until it has this many embedded
    reembed_every: int = 4  # then every Nth detection (and any better face than before)
    crops_dir: str | None = None
    # Decode + detect in a thread ahead of embedding (two cores at once). Off by default: on
    # the shared, loaded 2-core machine it ran 0.74-1.26x the one-core loop's rate with 2-4x
    # its latency (threads handing frames over wait for the scheduler and the GIL); from CPU
    # time it could reach ~1.8x on two idle cores (docs/watch.md).
    overlap: bool = False
    timeout: float = 10.0
    reconnect_for: float = 60.0
    folder_fps: float = 25.0
    rules: IdentityRules = field(default_factory=IdentityRules)

    def __post_init__(self) -> None:
        if self.every < 1 or self.detect_every < 1 or self.reembed_every < 1:
            raise SiamfaceError("--every, --detect-every and --reembed-every must be at least 1")
        if self.fps is not None and self.fps <= 0:
            raise SiamfaceError(f"--fps must be positive, got {self.fps}")
        if self.max_side is not None and self.max_side < 64:
            raise SiamfaceError(f"--max-side must be at least 64, got {self.max_side}")
        if self.roi is not None and (self.roi[2] < 16 or self.roi[3] < 16):
            raise SiamfaceError(f"--roi must be at least 16x16 px, got {self.roi}")


@dataclass
class TrackState:
    """What the loop remembers about one track."""

    track_id: int
    identity: TrackIdentity
    first: tuple[int, float]
    last: tuple[int, float]
    best_quality: float = -1.0
    best_crop: np.ndarray | None = None
    detections: int = 0
    embedded_at: int = 0
    odd: int = 0  # consecutive faces unlike the track's template
    box: tuple[float, float, float, float] = (0, 0, 0, 0)


@dataclass
class FrameView:
    """A processed frame for renderers: the (resized) BGR image and the live tracks on it."""

    frame: Frame
    image: np.ndarray
    boxes: list[dict]


def _when(frame_time: tuple[int, float]) -> dict:
    return {"frame": frame_time[0], "time": round(frame_time[1], 3)}


def resolve_threshold(gallery, embedder, given: Threshold | float | None) -> Threshold:
    """The open-set threshold: given, else the gallery's, else the model's calibrated one.
    Watching without any threshold would name every face after its nearest enrolled person,
    so that is refused."""
    if given is not None:
        return given if isinstance(given, Threshold) else Threshold.given(given)
    own = gallery.threshold
    if own is not None:
        return own
    stored = Threshold.parse(embedder.threshold)
    if stored is not None:
        return stored
    raise SiamfaceError(
        "no open-set threshold: set one on the gallery ('siamface gallery set --threshold') "
        "or give --threshold; without one every face would be named after someone"
    )


def open_source(source, options: WatchOptions) -> VideoSource:
    """Open SOURCE with the options' start/stop, timeouts and reconnection settings."""
    o = options
    return VideoSource(
        source,
        start=o.start,
        stop=o.stop,
        folder_fps=o.folder_fps,
        timeout=o.timeout,
        reconnect_for=o.reconnect_for,
    )


class Watcher:
    """One watch session; iterate :meth:`events`. Owns the source, tracker and track states."""

    def __init__(
        self,
        source,
        gallery,
        embedder,
        options: WatchOptions | None = None,
        on_frame: Callable[[FrameView], None] | None = None,
    ) -> None:
        self.opts = options or WatchOptions()
        self.gallery, self.embedder, self.on_frame = gallery, embedder, on_frame
        # ``source`` may be a VideoSource opened already (the CLI opens it first, so a bad
        # source fails in a second, before any model loads).
        gallery.check_model(embedder.fingerprint, embedder.embedding_size)
        if len(gallery) == 0:
            raise SiamfaceError("the gallery is empty; enroll people first")
        self.threshold = resolve_threshold(gallery, embedder, self.opts.threshold)
        o = self.opts
        self.finder = FaceFinder(
            embedder,
            detector=o.detector,
            min_score=o.min_score,
            min_size=o.min_face,
            detect_side=o.detect_side,
            roi=o.roi,
        )
        self.source = source if isinstance(source, VideoSource) else open_source(source, o)
        src_fps = self.source.fps or 25.0
        self.step = o.every if o.fps is None else max(1, round(src_fps / o.fps))
        proc_fps = src_fps / self.step
        self.tracker = FaceTracker(lost_after=max(2, round(o.lost_after * proc_fps)))
        self.tracks: dict[int, TrackState] = {}  # by the tracker's id
        self._next_id = 0  # our track ids: a track split in two gets a new one
        # Running totals for the summary, not the ended tracks' events: a camera watched for
        # days ends thousands of tracks (the 1-hour looped-stream check ended 2460), and a
        # list of their events would grow with every one.
        self.people: dict[str, dict] = {}
        self.tallies = {"tracks": 0, "unknown_tracks": 0, "gaps": 0}
        self.counts = {"frames": 0, "processed": 0, "detected": 0, "faces": 0, "embedded": 0}
        #: CPU seconds of each half of the loop: decode + detect + align ("prepare") and
        #: track + embed + decide ("identify"). Unlike wall time, other jobs on the machine
        #: barely change them; the larger one bounds the rate on two idle cores.
        self.cpu = {"prepare": 0.0, "identify": 0.0}
        if o.crops_dir:
            Path(o.crops_dir).mkdir(parents=True, exist_ok=True)

    # -- the loop -------------------------------------------------------------------------
    def events(self) -> Iterator[dict]:
        src = self.source
        yield {
            "event": "start",
            "source": str(src.spec.target),
            "kind": src.spec.kind,
            "fps": src.fps,
            "size": list(src.size) if src.size else None,
            "threshold": round(self.threshold.value, 6),
            "step": self.step,
            "detect_every": self.opts.detect_every,
            "embedding_graph": graph_name(self.finder.embedder),
            "overlap": self.opts.overlap,
        }
        t0 = time.monotonic()
        items = self._prepared(t0)
        if self.opts.overlap:
            # Decode + detect + align the next frame in a thread while this one is tracked,
            # embedded and decided here: the two halves cost about the same, so two idle
            # cores nearly double the rate (one frame ahead, never more: latency, memory).
            items = run_ahead(items, join_timeout=self.opts.timeout + 5.0)
        try:
            for item in items:
                if isinstance(item, Gap):
                    gap = {
                        "event": "gap",
                        "start": round(item.start, 3),
                        "end": round(item.end, 3),
                        "seconds": round(item.seconds, 3),
                        "attempts": item.attempts,
                        "recovered": item.recovered,
                        "reason": item.reason,
                    }
                    self.tallies["gaps"] += 1
                    yield gap
                    continue
                c = time.thread_time()
                done = list(self._process(*item))
                self.cpu["identify"] += time.thread_time() - c
                yield from done
        finally:
            items.close()  # the caller stopped early: release the source now
        for tid in sorted(self.tracks):
            yield self._end_track(tid)
        yield self._summary(time.monotonic() - t0)

    def _prepared(self, t0: float) -> Iterator[Gap | tuple[Frame, np.ndarray, list | None]]:
        """The first half of the loop: frames to process (``--every``/``--fps``, until
        ``--max-seconds``), resized, with their detected and aligned faces (None on frames
        the detector skips); gaps passed through. Closes the source when done."""
        src, o = self.source, self.opts
        last_t = -1e9
        c = time.thread_time()  # CPU of this half, whichever thread runs it (not the yields)
        try:
            for item in src:
                if isinstance(item, Gap):
                    self.cpu["prepare"] += time.thread_time() - c
                    yield item
                    c = time.thread_time()
                    continue
                self.counts["frames"] += 1
                if o.max_seconds is not None and time.monotonic() - t0 > o.max_seconds:
                    break
                if src.spec.live and o.fps is not None:
                    if item.time - last_t < 1.0 / o.fps * 0.95:
                        continue  # live: pace by the clock, frame numbers are not regular
                    last_t = item.time
                elif item.index % self.step:
                    continue
                img = self._resize(item.image)
                n = self.counts["processed"]
                self.counts["processed"] += 1
                faces = None
                if n % o.detect_every == 0:
                    faces = self.finder.crops(img, self.finder.detect(img))  # embedded later
                    self.counts["detected"] += 1
                    self.counts["faces"] += len(faces)
                self.cpu["prepare"] += time.thread_time() - c
                yield item, img, faces
                c = time.thread_time()
        finally:
            c = time.thread_time()
            src.close()
            self.cpu["prepare"] += time.thread_time() - c

    def _resize(self, img: np.ndarray) -> np.ndarray:
        m = self.opts.max_side
        if m is None or max(img.shape[:2]) <= m:
            return img
        import cv2

        f = m / max(img.shape[:2])
        size = (round(img.shape[1] * f), round(img.shape[0] * f))
        return cv2.resize(img, size, interpolation=cv2.INTER_AREA)

    def _process(
        self, frame: Frame, img: np.ndarray, faces: list[FrameFace] | None
    ) -> Iterator[dict]:
        """The second half: tracking, embedding, decisions, events (``faces`` None: a frame
        the detector skipped, the tracker predicts)."""
        if faces is not None:
            live = self.tracker.update([f.box for f in faces], period=self.opts.detect_every)
        else:
            live = self.tracker.update(None)
        now = (frame.index, frame.time)
        matched: list[tuple[TrackState, FrameFace]] = []
        for tb in live:
            st = self.tracks.get(tb.track_id)
            if st is None:
                st = self.tracks[tb.track_id] = self._new_track(now)
            st.box = tb.box
            if tb.face_index is None:
                continue
            face = faces[tb.face_index]
            st.detections += 1
            if not st.odd:  # while its faces look like someone else, the track is not "seen"
                st.last = now
            if face.quality["quality"] > st.best_quality:
                st.best_quality, st.best_crop = face.quality["quality"], face.crop
            if self._wants_embedding(st, face):
                matched.append((st, face))
        # The model is the costly step (a 112 px face costs more than detecting a whole
        # frame): one batch per frame, and only for the faces that can still change a track's
        # answer (see _wants_embedding).
        self.finder.embed([face for _, face in matched])
        self.counts["embedded"] += len(matched)
        updated = []
        for st, face in matched:
            if self._other_person(st, face):
                # The tracker carried this track over to someone else (one person left as
                # another stepped into the same place): end it, and start a new one.
                key = next(k for k, v in self.tracks.items() if v is st)
                yield self._end_track(key)
                st = self.tracks[key] = self._new_track(now)
                st.box, st.detections = face.box, 1
                st.best_quality, st.best_crop = face.quality["quality"], face.crop
            elif st.odd:
                continue  # one odd face is held back, not mixed into the evidence
            st.last = now
            st.identity.add(face.embedding, face.quality["quality"])
            st.embedded_at = st.detections
            updated.append(st)
        yield from self._decide(updated, frame)
        alive = self.tracker.alive_ids()
        for tid in [t for t in self.tracks if t not in alive]:
            yield self._end_track(tid)
        if self.on_frame is not None:
            boxes = [
                {
                    "track": self.tracks[tb.track_id].track_id,
                    "box": [round(float(v), 1) for v in tb.box],
                    "person": self.tracks[tb.track_id].identity.name,
                    "score": self.tracks[tb.track_id].identity.score,
                    "detected": tb.face_index is not None,
                }
                for tb in live
                if tb.track_id in self.tracks
            ]
            self.on_frame(FrameView(frame, img, boxes))

    def _new_track(self, now: tuple[int, float]) -> TrackState:
        self._next_id += 1
        return TrackState(self._next_id, TrackIdentity(self.opts.rules), now, now)

    def _other_person(self, st: TrackState, face: FrameFace) -> bool:
        """True when a track with some evidence gets a face unlike everything it has seen:
        cosine to its template below half the threshold, twice in a row (one odd face, e.g.
        a hand over the face, does not split a track, and is left out of its evidence)."""
        template = st.identity.template()
        if template is None or st.identity.faces < self.opts.rules.min_faces:
            return False
        if float(template @ face.embedding) >= self.threshold.value * 0.5:
            st.odd = 0
            return False
        st.odd += 1
        return st.odd >= 2

    def _wants_embedding(self, st: TrackState, face: FrameFace) -> bool:
        """Embed this track's face now? Always while the track is unnamed or its decision is
        not yet confirmed and it has fewer than ``settle_faces`` faces; after that, every
        ``reembed_every``-th detection (to keep revising) or when the face is the best one the
        track has shown so far."""
        ident, o = st.identity, self.opts
        unsettled = ident.faces < o.settle_faces or ident.candidate != ident.name
        if unsettled or face.quality["quality"] >= st.best_quality:
            return True
        return st.detections - st.embedded_at >= o.reembed_every

    def _decide(self, updated: list[TrackState], frame: Frame) -> Iterator[dict]:
        """Search the gallery with every updated track's template, in one batch."""
        if not updated:
            return
        templates = np.stack([st.identity.template() for st in updated])
        results = self.gallery.search(
            templates, 1, fingerprint=self.embedder.fingerprint, threshold=self.threshold
        )
        for st, r in zip(updated, results, strict=True):
            if st.identity.decide(r.identity, r.score):
                yield {
                    "event": "identity",
                    "track": st.track_id,
                    "person": st.identity.name,
                    "score": None if r.score is None else round(float(r.score), 4),
                    **_when((frame.index, frame.time)),
                    "faces": st.identity.faces,
                    "latency_ms": round((time.monotonic() - frame.wall) * 1000, 1),
                }

    def _end_track(self, key: int) -> dict:
        st = self.tracks.pop(key)
        tid = st.track_id
        ident = st.identity
        crop = None
        if self.opts.crops_dir and st.best_crop is not None:
            from PIL import Image

            crop = os.path.join(self.opts.crops_dir, f"track-{tid:05d}.jpg")
            Image.fromarray(st.best_crop).save(crop, quality=92)
        ev = {
            "event": "track",
            "track": tid,
            "person": ident.name,
            "score": None if ident.score is None else round(float(ident.score), 4),
            "first": _when(st.first),
            "last": _when(st.last),
            "seconds": round(st.last[1] - st.first[1], 3),
            "faces": ident.faces,
            "switches": ident.switches,
            "named": ident.history,
            "best_quality": round(max(st.best_quality, 0.0), 3),
            "crop": crop,
        }
        self._tally(ev)
        return ev

    def _tally(self, ev: dict) -> None:
        """Add an ended track to the summary's totals."""
        self.tallies["tracks"] += 1
        if ev["faces"] < self.opts.rules.min_faces:
            return  # a fleeting detection, not a person seen
        if ev["person"] == UNKNOWN:
            self.tallies["unknown_tracks"] += 1
            return
        p = self.people.setdefault(
            ev["person"], {"tracks": 0, "first": ev["first"], "last": ev["last"], "seconds": 0}
        )
        p["tracks"] += 1
        p["seconds"] = round(p["seconds"] + ev["seconds"], 3)
        if ev["first"]["time"] < p["first"]["time"]:
            p["first"] = ev["first"]
        if ev["last"]["time"] > p["last"]["time"]:
            p["last"] = ev["last"]

    def _summary(self, seconds: float) -> dict:
        c = self.counts
        return {
            "event": "summary",
            "people": self.people,
            **self.tallies,
            **c,
            "dropped": self.source.dropped,
            "seconds": round(seconds, 3),
            "processed_fps": round(c["processed"] / seconds, 2) if seconds > 0 else None,
            "cpu_seconds": {k: round(v, 3) for k, v in self.cpu.items()},
        }


def watch(
    source,
    gallery,
    model=None,
    *,
    on_frame: Callable[[FrameView], None] | None = None,
    **options,
) -> Iterator[dict]:
    """Watch SOURCE and yield event dicts (see the module docstring).

    ``gallery`` is a gallery folder / Milvus URL or an open gallery; ``model`` a model path,
    a built-in name, an open embedder, or None for the model the gallery records. Keyword
    options are :class:`WatchOptions` fields (``every``, ``fps``, ``detect_every``, ``roi``,
    ``max_side``, ``start``, ``stop``, ``max_seconds``, ``crops_dir``, ...).

    Example::

        for ev in siamface.watch("rtsp://cam/stream", "staff", max_seconds=60):
            if ev["event"] == "identity" and ev["person"] != "unknown":
                print(ev["person"], ev["time"])
    """

    opts = WatchOptions(**options)
    own = not isinstance(gallery, Gallery)
    g = open_gallery(gallery) if own else gallery
    try:
        if isinstance(model, Embedder):
            embedder = model
        else:
            ref = model if model is not None else g.model_source
            if not model_available(ref):
                raise SiamfaceError(
                    f"give a model: the gallery's model ({ref or 'not recorded'}) is not available"
                )
            embedder = create_embedder(ref)
        yield from Watcher(source, g, embedder, opts, on_frame).events()
    finally:
        if own:
            g.close()
