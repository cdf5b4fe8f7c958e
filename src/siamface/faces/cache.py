"""Aligned faces cached on disk, keyed by image content: detect once, train many times.

Detecting and aligning thousands of photos costs minutes on a CPU (YuNet: ~23 ms a photo here),
and a fine-tuning run, its resume and the next run with other settings all need the same crops.
So each crop is stored once, under the SHA-256 of the image file's bytes (a renamed or moved
file is still a hit; an edited one is not), in one SQLite file per alignment setting (detector,
score threshold, margin, face policy, size...). "No face found" is cached too, so a second run
does not search again. Crops are stored as PNG: lossless, about half the raw size.

Concurrency: decode workers of one run, or two runs at once, read and write the same file;
SQLite in WAL mode with a busy timeout serialises the writes. A cache that cannot be opened or
written (read-only disk, full disk) is skipped with a warning: it only ever saves time.
Each row carries a digest of its key and content (:mod:`siamface.integrity`): a damaged row or
file (edited, moved between keys, random bytes) discards the cache with a one-line notice and
the faces are aligned again, never served from it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from siamface.faces.align import AlignParams, align_face_image
from siamface.faces.detect import check_detector_available
from siamface.faces.errors import AmbiguousFaceError, NoFaceError, is_ambiguous
from siamface.folders.images import ImageLoadError, file_digest, load_rgb
from siamface.integrity import discard, open_sqlite_cache, row_digest, sqlite_files
from siamface.system import cache_dir

if TYPE_CHECKING:
    from siamface.tensors.transforms import Preprocessing

log = logging.getLogger(__name__)

#: Bumped whenever alignment code changes what a crop looks like, so old crops are not reused.
ALIGN_VERSION = 2  # 2: OpenCV YuNet by default, face=auto, OpenCV warp
NO_FACE = "no_face"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS faces (digest TEXT PRIMARY KEY, png BLOB, error TEXT, "
    "rowsum TEXT NOT NULL);"
)
_PROBE = "SELECT digest, png, error, rowsum FROM faces LIMIT 1"
WHAT = "aligned-face cache"


def cache_key(pre: Preprocessing) -> str:
    """Short hash of everything that determines a crop's pixels."""

    params = AlignParams.from_dict(pre.align).to_dict()
    blob = json.dumps({"v": ALIGN_VERSION, "size": pre.image_size, "align": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class FaceCache:
    """One alignment setting's crops. Picklable: each process opens its own connection."""

    def __init__(self, pre: Preprocessing, root: Path | None = None) -> None:
        self.path = (root or cache_dir("faces")) / f"faces-{cache_key(pre)}.sqlite"
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._broken = False

    def __getstate__(self) -> dict:
        return {"path": self.path, "_conn": None, "_pid": None, "_broken": self._broken}

    def _db(self) -> sqlite3.Connection | None:
        if self._broken:
            return None
        if self._conn is None or self._pid != os.getpid():
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = open_sqlite_cache(
                    self.path, WHAT, _SCHEMA, _PROBE, timeout=60, isolation_level=None
                )
            except (sqlite3.Error, OSError) as err:
                log.warning("face cache %s unusable (%s); aligning without it", self.path, err)
                self._broken = True
                return None
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def get(self, digest: str) -> np.ndarray | str | None:
        """The crop (HWC uint8), the cached failure reason, or None when not cached."""
        db = self._db()
        if db is None:
            return None
        try:
            row = db.execute(
                "SELECT png, error, rowsum FROM faces WHERE digest = ?", (digest,)
            ).fetchone()
        except sqlite3.DatabaseError as err:
            self._discard(str(err))
            return None
        if row is None:
            return None
        png, error, rowsum = row
        if rowsum != row_digest(digest, png, error):
            self._discard(f"the row of image {digest[:12]} does not match its digest")
            return None
        if error is not None:
            return str(error)
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.uint8)

    def _discard(self, why: str) -> None:
        """Delete a damaged cache (one-line notice); the next use starts a new one."""
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        discard(sqlite_files(self.path), WHAT, why)

    def put(self, digest: str, face: np.ndarray | None, error: str | None = None) -> None:
        db = self._db()
        if db is None:
            return
        png = None
        if face is not None:
            buf = io.BytesIO()
            Image.fromarray(face).save(buf, format="PNG", compress_level=1)
            png = buf.getvalue()
        try:
            db.execute(
                "INSERT OR REPLACE INTO faces (digest, png, error, rowsum) VALUES (?, ?, ?, ?)",
                (digest, png, error, row_digest(digest, png, error)),
            )
        except sqlite3.Error as err:
            log.warning("face cache %s not written (%s)", self.path, err)
            self._broken = True


class CachedAlignedDecoder:
    """Path -> aligned HWC uint8 face, through the cache (a :data:`PathDecoder`)."""

    def __init__(self, pre: Preprocessing, root: Path | None = None) -> None:

        self.pre = pre
        # Bad settings or a missing detector package fail here, in the parent. The detector
        # itself is created in each worker on first use: some detector runtimes start threads
        # that a fork would leave holding locks (a deadlock seen with YuNet).
        check_detector_available(AlignParams.from_dict(pre.align).detector)
        self.cache = FaceCache(pre, root)

    def __call__(self, path: str | Path) -> np.ndarray:

        try:
            digest = file_digest(path)
        except OSError as err:
            raise ImageLoadError(f"cannot read file: {err}") from err
        hit = self.cache.get(digest)
        if isinstance(hit, np.ndarray):
            return hit
        if isinstance(hit, str):
            raise AmbiguousFaceError(hit) if is_ambiguous(hit) else NoFaceError(hit)
        img = load_rgb(Path(path))  # unreadable files raise and are not cached
        try:
            # Training data: a photo with two equally likely faces is left out and listed
            # (a wrong face is a wrong label), never guessed.
            face = align_face_image(img, self.pre, ambiguous="refuse")
        except NoFaceError as err:  # AmbiguousFaceError too: its reason is cached as text
            self.cache.put(digest, None, str(err) or NO_FACE)
            raise
        self.cache.put(digest, face)
        return face
