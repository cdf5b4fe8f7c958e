"""Run a producer a few items ahead of its consumer, in a thread: two stages on two cores.

The watch loop has two halves of similar cost: decoding + detecting + aligning a frame, and
tracking + embedding + deciding. Run one after the other they use one core; with the first
half in a thread that stays ``depth`` frames ahead, both cores work at once (OpenCV's decoder
and detector and PyTorch's kernels release the GIL while they compute). The bounded queue
keeps memory flat and the delay small: the producer waits when the consumer is behind.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

_ITEM, _ERROR, _DONE = 0, 1, 2


def run_ahead(
    items: Iterator[T], depth: int = 2, join_timeout: float = 15.0, name: str = "siamface-ahead"
) -> Iterator[T]:
    """Yield ``items`` in order, produced by a thread up to ``depth`` items ahead.

    An exception in the producer is raised here, in the consumer, with its traceback. When the
    consumer stops early (``close()`` / ``break``), the producer is told to stop, ``items`` is
    closed in the producer's thread (so a source's ``finally`` releases it there), and the
    thread is waited for up to ``join_timeout`` seconds (a live source may be inside a read
    that has its own timeout)."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for x in items:
                if not put((_ITEM, x)):
                    break
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, who raises it
            put((_ERROR, err))
            return
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
        put((_DONE, None))

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, x = q.get()
            if kind == _ITEM:
                yield x
            elif kind == _ERROR:
                raise x
            else:
                return
    finally:
        stop.set()
        thread.join(join_timeout)
