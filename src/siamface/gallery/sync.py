"""The built-in gallery's derived vector index: kept in step with the database, shared
between processes through one file, guarded by an advisory file lock.

The database is the truth and carries a ``version`` counter that every commit bumps; the
index file records the version it was built from. Whoever finds the file missing, damaged,
from another model or older than the database rebuilds it from the database and saves it
(atomically). Writers hold ``gallery.lock`` exclusively from their transaction until the new
index file is saved; a reader that notices a newer version waits for that lock (shared) and
then loads the writer's file instead of rebuilding it itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from siamface.errors import SiamfaceError
from siamface.gallery.index import VectorIndex, make_index
from siamface.gallery.index_choice import RETRAIN_GROWTH, choose_kind
from siamface.gallery.index_file import read_index_file, read_index_header, write_index_file
from siamface.gallery.store import Store

INDEX_NAME = "index.bin"
LOCK_NAME = "gallery.lock"
#: Vectors sampled from the database to train a quantised index.
TRAIN_SAMPLE = 65_536


class DerivedIndex:
    """The in-memory index of one gallery folder and the file it is shared through.

    ``settings()`` returns the gallery's current (validated) settings: fingerprint,
    embedding_size, aggregation (-> unit), index_kind, index_params, version. Callers hold
    the gallery's thread lock around every method.
    """

    def __init__(self, path: Path, store: Store, settings: Callable[[bool], dict]) -> None:
        self.path = path
        self.store = store
        self.settings = settings
        self.index: VectorIndex | None = None
        self.version = -1

    @property
    def file(self) -> Path:
        return self.path / INDEX_NAME

    def header(self) -> dict:
        return read_index_header(self.file) or {}

    def unit(self) -> str:
        return "person" if self.settings(False)["aggregation"] == "mean" else "image"

    def forget(self) -> None:
        self.index, self.version = None, -1

    # -- the lock -------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, exclusive: bool) -> Iterator[None]:
        """Advisory lock on GALLERY/gallery.lock: writers hold it exclusively from their
        transaction until the index file is saved; readers take it shared only when their
        index is stale, so they wait for a writer's new index instead of rebuilding it."""
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            if exclusive:
                raise SiamfaceError(f"gallery {self.path} is not writable") from None
            yield  # read-only copy of a gallery: nothing can write it concurrently
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    # -- keeping in step ---------------------------------------------------------------------
    def _desired_kind(self, n: int) -> str:
        kind = self.settings(False)["index_kind"]
        return choose_kind(n) if kind == "auto" else kind

    def _ok(self, index: VectorIndex, n: int) -> bool:
        """Is a loaded/in-memory index still the right one for ``n`` vectors?"""
        if index.kind != self._desired_kind(n):
            return False
        return not (index.trained_on and n > RETRAIN_GROWTH * index.trained_on)

    def sync(self, locked: bool = False) -> VectorIndex:
        """Make the in-memory index match the database version: keep it, load the file, or
        (missing/stale/damaged file) rebuild from the database and save."""
        v = self.settings(False)["version"]
        if self.index is not None and self.version == v:
            return self.index
        if locked:
            v = self.settings(True)["version"]
            if not self._load(v):
                self.rebuild(v)
                self.save()
            assert self.index is not None
            return self.index
        with self.lock(exclusive=False):  # wait for a writer that is saving the index
            if self._load(self.settings(True)["version"]):
                assert self.index is not None
                return self.index
        with self.lock(exclusive=True):
            return self.sync(locked=True)

    def _load(self, version: int) -> bool:
        s = self.settings(False)
        head = read_index_header(self.file)
        if (
            head is None
            or head.get("version") != version
            or head.get("fingerprint") != s["fingerprint"]
            or head.get("unit") != self.unit()
        ):
            return False
        try:
            head, index = read_index_file(self.file)
        except (OSError, ValueError) as err:
            warnings.warn(f"gallery index {self.file} is damaged ({err}); rebuilding", stacklevel=4)
            return False
        if index.dim != s["embedding_size"] or not self._ok(index, index.ntotal):
            return False
        self.index, self.version = index, version
        return True

    def rebuild(self, version: int) -> None:
        s = self.settings(False)
        unit, dim = self.unit(), s["embedding_size"]
        n = self.store.count(unit)
        index = make_index(self._desired_kind(n), dim, **s["index_params"])
        if index.needs_training:
            sample = self.store.sample_vectors(unit, TRAIN_SAMPLE, dim)
            if len(sample) < 256:  # too few to train a quantiser: exact search it is
                index = make_index("flat", dim)
            else:
                index.train(sample, n)
        for ids, vecs in self.store.iter_vectors(unit, dim):
            index.add(ids, vecs)
        self.index, self.version = index, version

    def apply_delta(
        self,
        v0: int,
        v1: int,
        add_ids: list[np.ndarray],
        add_vecs: list[np.ndarray],
        rm: np.ndarray,
    ) -> None:
        """After a commit: update the in-memory index by the change, or rebuild it; then save.
        Any failure here leaves the committed database intact and the old index file, which
        is then recognised as stale and rebuilt on the next use."""
        index = self.index
        n_after = self.store.count(self.unit())
        try:
            if index is None or self.version != v0 or not self._ok(index, n_after):
                raise LookupError("rebuild")
            index.remove(rm)
            if add_ids:  # concatenated only now: a bulk import is rebuilt from the database
                index.add(np.concatenate(add_ids), np.concatenate(add_vecs))
            if index.ntotal != n_after:
                raise LookupError("rebuild")
            self.version = v1
        except LookupError:
            self.index = None
            self.rebuild(v1)
        except BaseException:
            self.forget()
            raise
        self.save()

    def save(self) -> None:
        assert self.index is not None
        s = self.settings(False)
        header = {
            "version": self.version,
            "fingerprint": s["fingerprint"],
            "unit": self.unit(),
            "embedding_size": s["embedding_size"],
        }
        for stale in self.path.glob(f".{INDEX_NAME}.*.tmp"):
            stale.unlink(missing_ok=True)  # left by a killed writer (we hold the write lock)
        try:
            write_index_file(self.file, self.index, header)
        except OSError as err:  # the database is committed; the index is derived
            warnings.warn(
                f"could not save the gallery index ({err}); it will be rebuilt", stacklevel=4
            )
