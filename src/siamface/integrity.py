"""Content digests for the caches siamface keeps on disk, and what to do when one fails.

A cache is derived data: a disk error, a sync tool or a person editing it by hand must never
turn into silent wrong results (training on black images, distilling towards another image's
vector, a good photo reported corrupt). So every cache row (or block of rows) carries a short
digest of its content, written with it and checked when it is read. Checking costs a hash of
bytes that are being read anyway (BLAKE2b runs at about 1 GB/s per core and releases the GIL),
far less than recomputing what the cache saves.

A failed check is never repaired in place: the whole cache is named in a one-line notice,
deleted and rebuilt, because a damaged row says nothing about whether its neighbours are sound.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

log = logging.getLogger("siamface")

#: Bytes of each digest (128 bits: accidental collisions are out of the question).
DIGEST_BYTES = 16
#: Rows of a pixel array hashed together (one digest per block keeps the sidecar small).
BLOCK_BYTES = 8 << 20


class DamagedCache(Exception):
    """A cache failed its content check; the message says which row and why."""


def row_digest(*fields: object) -> str:
    """Digest of one row's fields in order (bytes as they are, everything else as ``repr``),
    so a value moved to another key, edited, zeroed or truncated no longer matches."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for f in fields:
        data = f if isinstance(f, bytes | bytearray | memoryview) else repr(f).encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def block_rows(arr: np.ndarray) -> int:
    """Rows per digest block for ``arr`` (at least one row, about :data:`BLOCK_BYTES`)."""
    row = max(1, arr[:1].nbytes)
    return max(1, BLOCK_BYTES // row)


def block_digests(arr: np.ndarray, rows: int) -> list[str]:
    """One digest per block of ``rows`` rows, hashed in threads (hashlib releases the GIL)."""

    def one(start: int) -> str:
        h = hashlib.blake2b(digest_size=DIGEST_BYTES)
        h.update(np.ascontiguousarray(arr[start : start + rows]).data)
        return h.hexdigest()

    starts = range(0, len(arr), rows)
    workers = min(8, os.cpu_count() or 1)
    if len(starts) <= 1 or workers == 1:
        return [one(s) for s in starts]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, starts))


def first_bad_block(arr: np.ndarray, rows: int, expected: list[str]) -> int | None:
    """Index of the first row whose block does not match ``expected`` (None: all match)."""
    got = block_digests(arr, rows)
    if len(got) != len(expected):
        return 0
    for k, (a, b) in enumerate(zip(got, expected, strict=True)):
        if a != b:
            return k * rows
    return None


def sqlite_files(path: Path) -> list[Path]:
    """The database file and the journal files SQLite keeps beside it."""
    return [path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))]


def discard(paths: Iterable[Path], what: str, why: str) -> None:
    """Delete a damaged cache and say so in one line (the rebuild follows by itself)."""
    paths = list(paths)
    log.warning("%s %s is damaged (%s); discarded, rebuilding it", what, paths[0], why)
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink(missing_ok=True)


def open_sqlite_cache(
    path: Path, what: str, schema: str, probe: str, **kw: object
) -> sqlite3.Connection:
    """Connect to a cache database with ``schema`` (a script), and when the file is not a
    readable SQLite database (random bytes, a damaged header) or ``probe`` (a query naming
    every column) fails on it (an older layout without digests), name it, delete it and
    start a new one."""
    for attempt in range(2):
        db = sqlite3.connect(path, **kw)  # type: ignore[arg-type]
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(schema)
            db.execute(probe).fetchone()
            return db
        except sqlite3.DatabaseError as err:
            db.close()
            if attempt:
                raise
            discard(sqlite_files(path), what, f"not a readable database: {err}")
    raise AssertionError("unreachable")
