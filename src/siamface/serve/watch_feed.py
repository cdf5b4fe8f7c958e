"""``siamface serve --watch SOURCE``: a watch running beside the REST service, for the page.

A background thread runs :class:`siamface.video.Watcher` on SOURCE with the served model and
its own handle on the gallery (a gallery connection is not shared across threads). It keeps
the latest frame with boxes and names drawn (JPEG, for the MJPEG stream) and the last events,
which the Watch tab shows. A video file is played at its own pace (not as fast as the CPU
allows), so what the page shows is what a camera would; at its end the last frame stays.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

from siamface.errors import SiamfaceError


class _Stopped(Exception):
    """Raised inside the watch loop to end it when the server shuts down."""


@dataclass
class FeedState:
    running: bool = False
    ended: bool = False
    error: str | None = None
    frames: int = 0
    summary: dict | None = None
    events: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))


class WatchFeed:
    """The watch thread and what it shares with the routes (latest JPEG, events, status)."""

    def __init__(self, source: str, gallery_spec, embedder, options: dict | None = None) -> None:
        from siamface.video import WatchOptions  # lazy: PIL, numpy
        from siamface.video.pipeline import open_source  # lazy: PIL, numpy

        if gallery_spec is None:
            raise SiamfaceError("--watch needs --gallery (the people to recognise)")
        self.source_name = str(source)
        self.options = WatchOptions(**(options or {}))
        # Open the source now: a bad SOURCE stops the server from starting, in one line.
        self.source = open_source(source, self.options)
        self.gallery_spec, self.embedder = gallery_spec, embedder
        self.state = FeedState()
        self._jpeg: bytes | None = None
        self._seq = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._clock: tuple[float, float] | None = None

    # -- thread ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="siamface-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        from siamface.gallery import open_gallery  # lazy: PIL, numpy
        from siamface.video import Watcher  # lazy: PIL, numpy

        self.state.running = True
        try:
            with open_gallery(self.gallery_spec) as g:
                watcher = Watcher(self.source, g, self.embedder, self.options, self._on_frame)
                for ev in watcher.events():
                    if ev["event"] == "summary":
                        self.state.summary = ev
                    self.state.events.append(ev)
        except _Stopped:
            pass
        except SiamfaceError as err:
            self.state.error = str(err)
        except Exception as err:  # noqa: BLE001 - the page must say why the feed stopped
            self.state.error = f"{type(err).__name__}: {err}"
        finally:
            self.source.close()
            self.state.running, self.state.ended = False, True
            with self._cond:
                self._cond.notify_all()

    def _on_frame(self, view) -> None:
        from siamface.video.render import draw, jpeg  # lazy: PIL, numpy

        if self._stop.is_set():
            raise _Stopped
        if not self.source.spec.live:  # play files at their own pace
            now = time.monotonic()
            if self._clock is None:
                self._clock = (now, view.frame.time)
            ahead = (view.frame.time - self._clock[1]) - (now - self._clock[0])
            if ahead > 0:
                self._stop.wait(ahead)
        data = jpeg(draw(view.image, view.boxes))
        with self._cond:
            self._jpeg, self._seq = data, self._seq + 1
            self.state.frames += 1
            self._cond.notify_all()

    # -- readers (routes) -------------------------------------------------------------------
    def latest(self) -> tuple[int, bytes | None]:
        with self._cond:
            return self._seq, self._jpeg

    def wait_newer(self, seq: int, timeout: float = 1.0) -> tuple[int, bytes | None]:
        """The next frame after ``seq`` (or the current one after ``timeout``)."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq != seq or self.state.ended, timeout)
            return self._seq, self._jpeg

    def status(self) -> dict:
        s = self.state
        return {
            "source": self.source_name,
            "running": s.running,
            "ended": s.ended,
            "error": s.error,
            "frames": s.frames,
            "summary": s.summary,
            "events": list(s.events),
        }
