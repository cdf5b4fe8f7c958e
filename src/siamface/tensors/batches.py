"""One epoch's global batch order, cut into the slices each process and micro-batch trains on.

The identity-balanced order (M images of each of ``batch_size / M`` identities per batch) is
drawn once per epoch, identically in every process from the same seed. Step ``j`` trains on
global batch ``j``; with ``W`` processes and ``A`` accumulation micro-batches, the batch is cut
into ``A * W`` consecutive chunks of whole identity groups and process ``r`` takes chunks
``r, W + r, 2W + r, ...``. Every process therefore sees distinct identity groups, the epoch
still covers the drawn order exactly once, and the union over processes of one step is the
one-process batch, so the world size can change between a run and its resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def rank_order(
    order: Sequence[T], batch_size: int, world_size: int = 1, rank: int = 0, grad_accum: int = 1
) -> list[T]:
    """The items process ``rank`` trains on, step after step (``len(order) // batch_size``
    steps; each step's items are contiguous: ``batch_size // world_size`` of them)."""
    parts = world_size * grad_accum
    if batch_size % parts:
        raise ValueError(f"batch_size {batch_size} does not split into {parts} parts")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of {world_size}")
    chunk = batch_size // parts
    out: list[T] = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        for a in range(grad_accum):
            c = start + (a * world_size + rank) * chunk
            out.extend(order[c : c + chunk])
    return out


def rank_steps(
    order: Sequence[T],
    batch_size: int,
    world_size: int = 1,
    rank: int = 0,
    grad_accum: int = 1,
    extra: Sequence[Sequence[T]] | None = None,
) -> list[list[T]]:
    """Process ``rank``'s items for each step, as one list per step.

    ``extra`` (optional) holds further items per global batch (e.g. unlabeled faces for
    distillation); they are cut like the batch, so every micro-batch of every process gets
    its share right after its labelled chunk.
    """
    mine = rank_order(order, batch_size, world_size, rank, grad_accum)
    per = batch_size // world_size
    steps = [mine[i : i + per] for i in range(0, len(mine) - per + 1, per)]
    if not extra:
        return steps
    parts = world_size * grad_accum
    chunk = batch_size // parts
    out: list[list[T]] = []
    for j, step in enumerate(steps):
        u = list(extra[j])
        if len(u) % parts:
            raise ValueError(f"{len(u)} extra items per batch do not split into {parts} parts")
        uc = len(u) // parts
        items: list[T] = []
        for a in range(grad_accum):
            items += step[a * chunk : (a + 1) * chunk]
            k = a * world_size + rank
            items += u[k * uc : (k + 1) * uc]
        out.append(items)
    return out
