"""Run a producer one item ahead of its consumer, in a thread: two stages on two cores.

The watch loop has two halves of similar cost: decoding + detecting + aligning a frame, and
tracking + embedding + deciding. Run one after the other they use one core; with the first
half in a thread that prepares the next frame while the current one is identified, both cores
work at once (OpenCV's decoder and detector and PyTorch's kernels release the GIL while they
compute).

One item ahead and no more: the producer reads its next item only once the consumer has
taken the previous one. A frame prepared further ahead would wait in a queue and reach the
consumer older (a camera's latency grows by a frame's processing time per queued frame), and
memory stays at one prepared frame.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

_ITEM, _ERROR, _DONE = 0, 1, 2


def run_ahead(
    items: Iterator[T], join_timeout: float = 15.0, name: str = "siamface-ahead"
) -> Iterator[T]:
    """Yield ``items`` in order, each produced by a thread while the previous one is used.

    An exception in the producer is raised here, in the consumer, with its traceback. When the
    consumer stops early (``close()`` / ``break``), the producer is told to stop, ``items`` is
    closed in the producer's thread (so a source's ``finally`` releases it there), and the
    thread is waited for up to ``join_timeout`` seconds (a live source may be inside a read
    that has its own timeout)."""
    q: queue.Queue = queue.Queue(maxsize=1)
    taken = threading.Semaphore(0)
    stop = threading.Event()

    def hand_over(entry: tuple) -> bool:
        """Put ``entry`` and wait until the consumer took it (False: told to stop)."""
        q.put(entry)  # never blocks: the previous entry was taken before this one was made
        while not stop.is_set():
            if taken.acquire(timeout=0.1):
                return True
        return False

    def work() -> None:
        try:
            for x in items:
                if not hand_over((_ITEM, x)):
                    return  # the consumer stopped
            hand_over((_DONE, None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, who raises it
            if not stop.is_set():
                hand_over((_ERROR, err))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, x = q.get()
            taken.release()
            if kind == _ITEM:
                yield x
            elif kind == _ERROR:
                raise x
            else:
                return
    finally:
        stop.set()
        thread.join(join_timeout)
