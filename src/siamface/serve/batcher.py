"""Micro-batching: concurrent requests share one model call.

A model run on 8 faces costs far less than 8 runs on one face (the per-call overhead and the
weight reads are paid once), so under load the service should embed whatever is waiting in
one batch. Requests put their faces on an asyncio queue; one task takes everything queued
(waiting ``max_wait_ms`` once if only one request is there, so near-simultaneous arrivals
still meet), runs ``embed_batch`` in a dedicated worker thread, and hands each request its
rows. While a batch runs, new requests queue up and form the next batch, so batches grow
with the load by themselves and a lone request pays at most ``max_wait_ms`` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass
class BatchStats:
    """Counters for /health: how well requests are being grouped."""

    batches: int = 0
    images: int = 0
    requests: int = 0
    largest_batch: int = 0
    busy_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "batches": self.batches,
            "requests": self.requests,
            "images": self.images,
            "mean_batch_images": round(self.images / self.batches, 2) if self.batches else 0.0,
            "largest_batch_images": self.largest_batch,
            "model_busy_seconds": round(self.busy_seconds, 3),
        }


@dataclass
class _Job:
    faces: np.ndarray  # uint8 (k, 3, S, S)
    future: asyncio.Future


class MicroBatcher:
    """Group concurrent ``embed`` calls into batched ``embed_batch`` calls.

    ``max_batch`` caps the images per model call (a single request larger than that still
    runs as one call); ``max_wait_ms=0`` disables the initial wait. ``max_inflight`` model
    calls may run at once (each in its own worker thread): with 2, the next batch starts
    while the previous one finishes, so the model is not left idle while answers go out.
    """

    def __init__(
        self,
        embed_batch: Callable[[np.ndarray], np.ndarray],
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        max_inflight: int = 1,
    ) -> None:
        if max_batch < 1 or max_inflight < 1:
            raise ValueError("max_batch and max_inflight must be at least 1")
        self.embed_batch = embed_batch
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.stats = BatchStats()
        self._pending: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(
            max_workers=self.max_inflight, thread_name_prefix="siamface-model"
        )
        self._task = asyncio.create_task(self._run(), name="siamface-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(RuntimeError("server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._task = self._executor = None

    async def embed(self, faces: np.ndarray) -> np.ndarray:
        """uint8 (k, 3, S, S) faces -> (k, D) embeddings, batched with concurrent calls."""
        if self._wakeup is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Job(faces, future))
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        assert self._wakeup is not None
        pending = self._pending
        slots = asyncio.Semaphore(self.max_inflight)
        running: set[asyncio.Task] = set()
        try:
            while True:
                if not pending:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await slots.acquire()  # requests keep queueing while every slot is busy
                if (
                    len(pending) == 1
                    and self.max_wait > 0
                    and len(pending[0].faces) < self.max_batch
                ):
                    await asyncio.sleep(self.max_wait)  # let near-simultaneous requests join
                jobs = [pending.popleft()]
                n = len(jobs[0].faces)
                while pending and n + len(pending[0].faces) <= self.max_batch:
                    jobs.append(pending.popleft())
                    n += len(jobs[-1].faces)
                jobs = [j for j in jobs if not j.future.done()]  # client gave up (cancelled)
                if not jobs:
                    slots.release()
                    continue
                task = asyncio.create_task(self._dispatch(jobs, slots))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            for task in list(running):
                task.cancel()

    async def _dispatch(self, jobs: list[_Job], slots: asyncio.Semaphore) -> None:
        """Run one batch in a worker thread and hand every request its rows."""
        loop = asyncio.get_running_loop()
        batch = np.concatenate([j.faces for j in jobs]) if len(jobs) > 1 else jobs[0].faces
        t0 = time.perf_counter()
        try:
            emb = await loop.run_in_executor(self._executor, self.embed_batch, batch)
        except BaseException as err:  # delivered to every waiting request
            exc = err if isinstance(err, Exception) else RuntimeError("server is shutting down")
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(exc)
            if not isinstance(err, Exception):
                raise
            return
        finally:
            slots.release()
        self._record(len(jobs), len(batch), time.perf_counter() - t0)
        start = 0
        for j in jobs:
            k = len(j.faces)
            if not j.future.done():
                j.future.set_result(emb[start : start + k])
            start += k

    def _record(self, requests: int, images: int, seconds: float) -> None:
        s = self.stats
        s.batches += 1
        s.requests += requests
        s.images += images
        s.largest_batch = max(s.largest_batch, images)
        s.busy_seconds += seconds
