"""A cached, resumable scan of image files: size, mtime, decode check and SHA-256 per file.

Before training, every file must be known to decode (a corrupt JPEG is listed, never a crash
mid-epoch) and hashed (byte-identical files under two identities are label errors). Doing
that for millions of files on every run and every resume costs hours, so the results live in
an SQLite table keyed by absolute path and by what the check was (plain decode, or detect +
align with given parameters). A later run stats each file and only re-checks the ones whose
size or mtime changed. Results are committed every few thousand files, so a scan killed half
way resumes where it stopped. The work runs in a process pool on all usable cores.

The same pass can also decode and resize the pixels kept in RAM for training, straight into
one preallocated tensor (no list of arrays stacked at the end, whose peak was three times the
final size). Those pixels are also saved next to the index (one ``.npy`` per dataset, size and
file state), so the next run or resume maps them from disk instead of decoding every image
again; any change to a file gives a new key, and only the most recent few are kept.

Both are checked on use (:mod:`siamface.integrity`): each index row carries a digest of its
fields, each pixel file a digest per block of rows in a sidecar file. A row edited by hand or
a pixel file overwritten at the same size is found, named, discarded and rebuilt, instead of a
good photo reported corrupt or a model trained on black images.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from siamface.folders.images import ImageLoadError, load_rgb, resize_uint8
from siamface.integrity import (
    DamagedCache,
    block_digests,
    block_rows,
    discard,
    first_bad_block,
    open_sqlite_cache,
    row_digest,
    sqlite_files,
)
from siamface.system import cache_root, frozen_for_fork, usable_cpus

INDEX_FILE = "scan-index.sqlite"
#: Decoded-pixel files kept beside the index (the most recently used ones).
PIXEL_CACHES_KEPT = 3
SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT NOT NULL,
    check_kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    error TEXT,
    sha256 TEXT,
    rowsum TEXT NOT NULL,
    PRIMARY KEY (path, check_kind)
);
"""
_PROBE = "SELECT path, check_kind, size, mtime_ns, ok, error, sha256, rowsum FROM files LIMIT 1"
WHAT = "scan index"
#: Rows written per transaction while scanning (what a kill can lose).
COMMIT_EVERY = 2000

PathDecoder = Callable[[str], np.ndarray]


def default_cache_dir() -> Path:
    """The cache root (``$SIAMFACE_CACHE``, else ``~/.cache/siamface``): one place for all of
    siamface's derived data."""
    return cache_root()


def index_path(setting: str) -> Path | None:
    """Where the index lives for config value ``scan_cache`` (None: not kept)."""
    if setting == "none":
        return None
    folder = default_cache_dir() if setting == "auto" else Path(setting).expanduser()
    return folder / INDEX_FILE


@dataclass(frozen=True)
class FileFacts:
    """What the scan knows about one file."""

    ok: bool
    error: str | None
    sha256: str | None


@dataclass
class ScanResult:
    """Facts for every path (in input order) and, when asked, their decoded pixels."""

    facts: list[FileFacts]
    pixels: torch.Tensor | None  # (len(paths), 3, S, S) uint8; rows of bad files are zero
    pixels_from_disk: bool  # mapped from the pixel file an earlier run saved
    checked: int  # files actually opened in this scan (the rest came from the index)
    seconds: float


class ScanIndex:
    """The SQLite table behind :func:`scan_files` (in memory when ``path`` is None)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        """The index database; in memory when it cannot be kept (read-only home)."""
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                return open_sqlite_cache(self.path, WHAT, SCHEMA, _PROBE, timeout=60)
            except (OSError, sqlite3.Error):
                pass  # scan anyway, just do not keep it
        db = sqlite3.connect(":memory:")
        db.executescript(SCHEMA)
        return db

    def _discard(self, why: str) -> None:
        """Drop a damaged index (named in a one-line notice) and start an empty one."""
        self.db.close()
        if self.path is not None:
            discard(sqlite_files(self.path), WHAT, why)
        self.db = self._connect()

    def close(self) -> None:
        self.db.close()

    def pixel_file(self, key: str) -> Path | None:
        return self.path.parent / f"pixels-{key}.npy" if self.path is not None else None

    def load_pixels(self, key: str, shape: tuple[int, ...]) -> torch.Tensor | None:
        """Pixels saved by an earlier run for exactly these files, mapped copy-on-write, once
        every block matches the digests saved with them (else the file is discarded)."""
        f = self.pixel_file(key)
        if f is None or not f.is_file():
            return None
        sums = _sums_file(f)
        try:
            arr = np.load(f, mmap_mode="c")
            saved = json.loads(sums.read_text())
            rows, expected = int(saved["rows"]), list(saved["blocks"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            why = "no block digests" if isinstance(err, FileNotFoundError) else str(err)
            discard([f, sums], "decoded-pixel cache", why)
            return None
        if arr.shape != shape or arr.dtype != np.uint8:
            discard([f, sums], "decoded-pixel cache", f"shape {arr.shape}, expected {shape}")
            return None
        bad = first_bad_block(arr, max(rows, 1), expected)
        if bad is not None:
            del arr
            why = f"rows from {bad} do not match their digest"
            discard([f, sums], "decoded-pixel cache", why)
            return None
        os.utime(f)  # most recently used
        return torch.from_numpy(arr)

    def save_pixels(self, key: str, pixels: torch.Tensor) -> None:
        """Keep decoded pixels for the next run (skipped when the disk is short of room)."""
        f = self.pixel_file(key)
        if f is None:
            return
        import shutil

        try:
            if shutil.disk_usage(f.parent).free < 2 * pixels.numel() + (1 << 30):
                return
            tmp = f.with_suffix(".tmp")
            with open(tmp, "wb") as fh:
                np.save(fh, pixels.numpy(), allow_pickle=False)
            arr = pixels.numpy()
            rows = block_rows(arr)
            sums = _sums_file(f)
            # The digests are written first: a pixel file is only trusted with its digests.
            sums.write_text(json.dumps({"rows": rows, "blocks": block_digests(arr, rows)}))
            os.replace(tmp, f)
            old = sorted(f.parent.glob("pixels-*.npy"), key=lambda p: p.stat().st_mtime)
            for stale in old[:-PIXEL_CACHES_KEPT]:
                stale.unlink(missing_ok=True)
                _sums_file(stale).unlink(missing_ok=True)
        except OSError:
            pass  # a cache that cannot be written costs speed only

    def known(self, check: str, stats: dict[str, tuple[int, int]]) -> dict[str, FileFacts]:
        """Facts recorded for files whose (size, mtime_ns) still match. A row that fails its
        digest (or a database that fails to read) discards the whole index: nothing known."""
        try:
            return self._known(check, stats)
        except (DamagedCache, sqlite3.DatabaseError) as err:
            self._discard(str(err))
            return {}

    def _known(self, check: str, stats: dict[str, tuple[int, int]]) -> dict[str, FileFacts]:
        out: dict[str, FileFacts] = {}
        cur = self.db.execute(
            "SELECT path, size, mtime_ns, ok, error, sha256, rowsum FROM files "
            "WHERE check_kind = ?",
            (check,),
        )
        for path, size, mtime, ok, error, sha, rowsum in cur:
            st = stats.get(path)
            if st is None or st != (size, mtime):
                continue
            if rowsum != row_digest(path, check, size, mtime, ok, error, sha):
                raise DamagedCache(f"the row of {path} does not match its digest")
            out[path] = FileFacts(bool(ok), error, sha)
        return out

    def record(self, check: str, rows: list[tuple[str, int, int, FileFacts]]) -> None:
        try:
            self.db.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (p, check, s, m, int(f.ok), f.error, f.sha256, _rowsum(p, check, s, m, f))
                    for p, s, m, f in rows
                ],
            )
            self.db.commit()
        except sqlite3.Error:
            pass  # a cache that cannot be written (disk full, read-only) costs speed only


def _rowsum(path: str, check: str, size: int, mtime: int, f: FileFacts) -> str:
    return row_digest(path, check, size, mtime, int(f.ok), f.error, f.sha256)


def _sums_file(pixel_file: Path) -> Path:
    """The block digests of a pixel file, beside it."""
    return pixel_file.with_name(pixel_file.name + ".sums")


def _check_one(
    job: tuple[str, int, bool, bool, PathDecoder | None],
) -> tuple[FileFacts, np.ndarray | None]:
    """Hash (if asked) and decode one file; pixels back only when they are to be kept."""
    path, size, want_hash, keep, decoder = job
    sha = None
    try:
        if want_hash:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            sha = h.hexdigest()
        arr = decoder(path) if decoder else resize_uint8(load_rgb(path), size)
    except ImageLoadError as err:
        return FileFacts(False, str(err), sha), None
    except OSError as err:
        if os.path.islink(path) and not os.path.exists(path):
            reason = f"broken symbolic link (target {os.readlink(path)} missing)"
            return FileFacts(False, reason, sha), None
        return FileFacts(False, f"cannot read: {err.strerror or err}", sha), None
    return FileFacts(True, None, sha), (arr if keep else None)


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def _pixel_key(names: list[str], stats: dict, size: int, check: str) -> str:
    h = hashlib.sha256(f"{size}|{check}".encode())
    for p in names:
        h.update(f"{p}|{stats[p][0]}|{stats[p][1]}\n".encode())
    return h.hexdigest()[:24]


def scan_files(
    paths: Sequence[Path],
    size: int,
    check: str,
    index: ScanIndex,
    keep_pixels: bool,
    decoder: PathDecoder | None = None,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "checking images",
) -> ScanResult:
    """Facts for every path (decode check + SHA-256), from the index where still valid.

    With ``keep_pixels``, every readable file is also decoded to ``size`` and written into
    one preallocated uint8 tensor, row ``i`` for ``paths[i]``.
    """
    t0 = time.perf_counter()
    names = [str(p) for p in paths]
    stats = {p: _stat(p) for p in names}
    known = index.known(check, stats)
    facts: list[FileFacts | None] = [known.get(p) for p in names]
    pixels, from_disk = None, False
    key = _pixel_key(names, stats, size, check)
    if keep_pixels and all(f is not None for f in facts):
        pixels = index.load_pixels(key, (len(names), 3, size, size))
        from_disk = pixels is not None
    if keep_pixels and pixels is None:
        pixels = torch.zeros(len(names), 3, size, size, dtype=torch.uint8)
    decode = keep_pixels and not from_disk
    todo = [i for i in range(len(names)) if facts[i] is None or (decode and facts[i].ok)]
    jobs = [(names[i], size, facts[i] is None, decode, decoder) for i in todo]
    workers = workers or usable_cpus()
    pending: list[tuple[str, int, int, FileFacts]] = []
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress or not jobs)
    pool = None
    if workers > 1 and len(jobs) > 64:
        # A custom decoder (face detection) may run OpenMP code, which deadlocks in a child
        # forked from a parent that already ran OpenMP (torch): start such workers from a
        # clean fork server instead (seen: YuNet hanging in libgomp in every worker).
        mp = multiprocessing.get_context("forkserver") if decoder is not None else None
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp)
    try:
        # map submits every job at once, so the pool forks its workers here
        with frozen_for_fork(pool is not None and mp is None):
            results = (
                pool.map(_check_one, jobs, chunksize=64) if pool else (_check_one(j) for j in jobs)
            )
        for i, (fact, arr) in zip(todo, results, strict=True):
            bar.update()
            if facts[i] is None:
                facts[i] = fact
                pending.append((names[i], *stats[names[i]], fact))
                if len(pending) >= COMMIT_EVERY:
                    index.record(check, pending)
                    pending = []
            if arr is not None and pixels is not None:
                pixels[i] = torch.from_numpy(np.require(arr, requirements="W")).permute(2, 0, 1)
    finally:
        if pending:
            index.record(check, pending)
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        bar.close()
    if pixels is not None and not from_disk and todo:
        index.save_pixels(key, pixels)
    return ScanResult(
        facts=[f for f in facts if f is not None],
        pixels=pixels,
        pixels_from_disk=from_disk,
        checked=len([j for j in jobs if j[2]]),
        seconds=time.perf_counter() - t0,
    )
