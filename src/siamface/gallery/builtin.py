"""The built-in gallery backend: one folder, SQLite as the truth plus a derived faiss index.

A gallery is one folder::

    GALLERY/
      gallery.sqlite   people, images, exact embeddings, thumbnails, settings (truth)
      index.bin        vector index derived from it (rebuilt whenever missing or stale)
      gallery.lock     advisory file lock: one writer at a time, readers wait for its commit

Consistency: every write is one SQLite transaction that also bumps a ``version`` counter,
so an interrupted enrollment (exception, Ctrl-C, killed process, power loss) leaves the
database exactly as before. The index file is written after the commit, atomically, and
carries the version it was built from; whoever finds it missing, damaged or older than the
database rebuilds it from the database (:mod:`siamface.gallery.sync`). Nothing half-written
is ever read and nothing committed is ever lost.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from siamface.decide.open_set import Candidate
from siamface.errors import SiamfaceError
from siamface.gallery.faults import fault_point
from siamface.gallery.gallery import Gallery
from siamface.gallery.index import INDEX_KINDS
from siamface.gallery.records import NewPerson, PersonRecord
from siamface.gallery.store import DB_NAME, FORMAT, FORMAT_VERSION, Store
from siamface.gallery.store import disk_error as _disk_error
from siamface.gallery.store_check import check_vectors
from siamface.gallery.sync import INDEX_NAME, LOCK_NAME, DerivedIndex
from siamface.gallery.validation import checked_settings, usable
from siamface.gallery.vectors import mean_template
from siamface.names import normal_name, skeleton

__all__ = ["DB_NAME", "INDEX_NAME", "LOCK_NAME", "BuiltinGallery"]


def drop_gallery_folder(folder: Path) -> list[str]:
    """Delete a gallery folder's own files (database, index, lock) and the folder when that
    leaves it empty; anything else in it is kept. Returns the names deleted."""
    if not (folder / DB_NAME).is_file():
        raise SiamfaceError(f"{folder} is not a siamface gallery; nothing deleted")
    names = [DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", INDEX_NAME, LOCK_NAME]
    dropped = []
    for n in names:
        try:
            (folder / n).unlink()
            dropped.append(n)
        except FileNotFoundError:
            continue
        except OSError as err:
            raise SiamfaceError(f"cannot delete {folder / n}: {err.strerror}") from None
    with contextlib.suppress(OSError):
        folder.rmdir()  # only when empty
    return dropped


class BuiltinGallery(Gallery):
    """A gallery folder. Thread-safe; processes coordinate through SQLite (WAL) and the lock
    file. Open with ``Gallery.open(path)`` / ``Gallery.create(path, ...)``."""

    backend = "builtin"
    index_kinds = INDEX_KINDS.names()

    def __init__(self, path: Path, store: Store) -> None:
        self.path = path
        self.location = str(path)
        self.store = store
        self._lock = threading.RLock()
        self._meta: dict = {}
        self._data_version = -1
        try:
            self._read_settings()
        except BaseException:
            store.close()
            raise
        self.derived = DerivedIndex(path, store, self._settings)

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def handles(cls, spec: object) -> bool:
        return isinstance(spec, str | os.PathLike)

    @classmethod
    def _create(cls, spec: object, settings: dict) -> BuiltinGallery:
        path = Path(spec).expanduser()  # type: ignore[arg-type]
        if (path / DB_NAME).exists():
            raise SiamfaceError(f"{path} already holds a gallery")
        if path.exists() and not path.is_dir():
            raise SiamfaceError(f"gallery path {path} is a file, not a folder")
        if path.is_dir() and any(p for p in path.iterdir() if not p.name.startswith(".")):
            raise SiamfaceError(f"{path} is a non-empty folder that is not a gallery")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SiamfaceError(f"cannot create gallery folder {path}: {err.strerror}") from None
        tmp_db = path / f".{DB_NAME}.creating"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{tmp_db}{suffix}").unlink(missing_ok=True)
        try:
            store = Store.connect(tmp_db, create=True)
            try:
                store.init_schema({**settings, "created": time.time()})
                store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                store.close()
            os.replace(tmp_db, path / DB_NAME)  # a half-created gallery never looks like one
        except sqlite3.Error as err:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{tmp_db}{suffix}").unlink(missing_ok=True)
            raise _disk_error(err, path) or SiamfaceError(
                f"cannot create gallery {path}: {err}"
            ) from None
        for suffix in ("-wal", "-shm"):
            Path(f"{tmp_db}{suffix}").unlink(missing_ok=True)
        return cls._open(path)

    @classmethod
    def _open(cls, spec: object) -> BuiltinGallery:
        path = Path(spec).expanduser()  # type: ignore[arg-type]
        if not path.exists():
            raise SiamfaceError(
                f"gallery not found: {path} (create one with "
                f"'siamface gallery enroll {path} --model MODEL IMAGES...')"
            )
        if not path.is_dir():
            raise SiamfaceError(f"gallery path {path} is a file; a gallery is a folder")
        return cls(path, Store.connect(path / DB_NAME))

    @classmethod
    def _exists(cls, spec: object) -> bool:
        return (Path(spec).expanduser() / DB_NAME).is_file()  # type: ignore[arg-type]

    def close(self) -> None:
        with self._lock:
            self.store.close()
            self.derived.forget()

    # -- settings -------------------------------------------------------------------------
    def _read_settings(self) -> dict:
        meta = self.store.meta()
        if meta.get("format") != FORMAT or "fingerprint" not in meta:
            raise SiamfaceError(f"{self.path / DB_NAME} is not a siamface gallery database")
        fv = meta.get("format_version", 0)
        if isinstance(fv, bool) or not isinstance(fv, int) or fv < 0:
            raise SiamfaceError(
                f"gallery {self.path} has an invalid setting 'format_version' = {fv!r}; the "
                "gallery was edited or damaged: restore it from a backup"
            )
        if fv > FORMAT_VERSION:
            raise SiamfaceError(
                f"{self.path} was written by a newer siamface (format_version {fv}); "
                "upgrade siamface"
            )
        self._meta = checked_settings(meta, str(self.path), self.index_kinds)
        return self._meta

    def _settings(self, fresh: bool = False) -> dict:
        """The settings, re-read only when another connection committed since (SQLite's
        ``data_version``: one cheap pragma, so even ``fresh`` reads cost nothing more) or
        after our own writes."""
        with self._lock:
            dv = self.store.data_version()
            if dv != self._data_version or not self._meta:
                self._read_settings()
                self._data_version = dv
            return usable(self._meta)

    def _set_settings(self, **values: object) -> None:
        rebuild = any(k in values for k in ("aggregation", "index_kind", "index_params"))
        with self._lock, self.derived.lock(exclusive=True):
            with self._write():
                for k, v in values.items():
                    self.store.set_meta(k, v)
                v = self.store.bump_version() if rebuild else None
            self._data_version = -1
            self._settings(fresh=True)
            if v is not None:
                self.derived.rebuild(v)
                self.derived.save()

    def rebuild_index(self) -> None:
        with self._lock, self.derived.lock(exclusive=True):
            self.derived.rebuild(self.store.version())
            self.derived.save()

    # -- reading -------------------------------------------------------------------------
    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.store.counts()

    def people(self) -> list[PersonRecord]:
        with self._lock:
            return self.store.people()

    def person(self, name: str) -> PersonRecord | None:
        with self._lock:
            return self.store.person(normal_name(name)) if isinstance(name, str) else None

    def existing(self, names: Sequence[str]) -> set[str]:
        with self._lock:
            return set(self.store.existing_names(names))

    def thumbnail(self, name: str) -> bytes | None:
        with self._lock:
            rec = self.store.person(normal_name(name)) if isinstance(name, str) else None
            return None if rec is None else self.store.thumbnail(rec.id)

    def _lookalike_candidates(self, names: list[str]) -> set[str]:
        """Names equal to a skeleton, and the names with a non-ASCII character, read through a
        partial index of those (a million ASCII names are not scanned at each enrollment)."""
        where = "name GLOB '*[^ -~]*'"
        with self._lock:
            with contextlib.suppress(sqlite3.Error):  # read-only copy: a full scan then
                self.store.conn.execute(
                    f"CREATE INDEX IF NOT EXISTS people_non_ascii ON people(name) WHERE {where}"
                )
            found = set(self.store.existing_names([skeleton(n) for n in names]))
            rows = self.store.conn.execute(f"SELECT name FROM people WHERE {where}")
            return found | {r[0] for r in rows}

    def export(self, names: Sequence[str]) -> list[NewPerson]:
        with self._lock:
            return [
                self.store.export_person(r, self.embedding_size)
                for r in self.store.people_named(list(names))
            ]

    def _digests_elsewhere(self, digests: Sequence[str], name: str) -> dict[str, str]:
        with self._lock:
            return self.store.digests_elsewhere(digests, name)

    def _backend_info(self) -> dict:
        with self._lock:
            head = self.derived.header()
            return {
                "index": {
                    "kind": head.get("kind"),
                    "vectors": head.get("ntotal"),
                    "version": head.get("version"),
                    "current": head.get("version") == self._meta["version"],
                }
            }

    # -- writing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """The store's transaction, with SQLite's disk errors turned into clear messages
        (the real cause: a full disk must not be reported as "cannot rollback")."""
        try:
            with self.store.transaction() as conn:
                yield conn
        except sqlite3.Error as err:
            clear = _disk_error(err, self.path)
            if clear is None:
                raise
            raise clear from None

    def _enroll(self, people: list[NewPerson], append: bool) -> list[PersonRecord]:
        names = [p.name for p in people]
        dim = self.embedding_size
        with self._lock, self.derived.lock(exclusive=True):
            self.derived.sync(locked=True)
            v0 = self.store.version()
            unit = self.unit
            add_ids: list[np.ndarray] = []
            add_vecs: list[np.ndarray] = []
            rm_ids: list[int] = []
            with self._write():
                existing = set(self.store.existing_names(names))
                if existing and not append:
                    raise self._already_enrolled(existing)
                now = time.time()
                for p in people:
                    rec = self.store.person(p.name) if p.name in existing else None
                    if rec is None:
                        pid, img_ids = self.store.insert_person(p, now)
                    else:
                        pid = rec.id
                        img_ids = self.store.insert_images(
                            pid, p.embeddings, p.refs, p.digests, now
                        )
                        self.store.refresh_template(pid, dim)
                        if p.thumbnail is not None:
                            self.store.set_thumbnail(pid, p.thumbnail, replace=False)
                        if rec.metadata or p.metadata:
                            self.store.set_metadata(pid, {**rec.metadata, **p.metadata})
                    if unit == "person":
                        if rec is None:
                            one = len(p.embeddings) == 1
                            tmpl = p.embeddings if one else mean_template(p.embeddings)[None, :]
                        else:
                            rm_ids.append(pid)
                            tmpl = self.store.vectors_by_id("person", [pid], dim)[2]
                        add_ids.append(np.array([pid], np.int64))
                        add_vecs.append(tmpl)
                    else:
                        add_ids.append(np.array(img_ids, np.int64))
                        add_vecs.append(p.embeddings)
                fault_point("enroll:before-commit")
                v1 = self.store.bump_version()
            self._data_version = -1
            fault_point("enroll:after-commit")
            self.derived.apply_delta(v0, v1, add_ids, add_vecs, np.array(rm_ids, np.int64))
            return self.store.people_named(names)

    def _remove(self, names: list[str]) -> None:
        with self._lock, self.derived.lock(exclusive=True):
            self.derived.sync(locked=True)
            v0 = self.store.version()
            rm: list[int] = []
            with self._write():
                missing = sorted(set(names) - set(self.store.existing_names(names)))
                if missing:
                    raise self._not_enrolled(missing)
                for n in names:
                    rec = self.store.person(n)
                    assert rec is not None
                    img_ids = self.store.delete_person(rec.id)
                    rm += [rec.id] if self.unit == "person" else img_ids
                v1 = self.store.bump_version()
            self._data_version = -1
            self.derived.apply_delta(v0, v1, [], [], np.array(rm, np.int64))

    # -- checking ------------------------------------------------------------------------
    def check(self) -> list[dict]:
        with self._lock:
            return check_vectors(self.store, self.embedding_size)

    def repair(
        self, problems: list[dict], reembed: Callable[[str], np.ndarray | None] | None = None
    ) -> list[dict]:
        """Fix what :meth:`check` found, in one transaction: a damaged image embedding is
        computed again from its stored image file when ``reembed`` can (else the image is
        dropped), templates are recomputed, and a person left with no image is removed.
        The index is then rebuilt. Returns what was done, one entry per problem."""
        dim = self.embedding_size
        done: list[dict] = []
        with self._lock, self.derived.lock(exclusive=True):
            with self._write():
                touched: dict[int, str] = {}
                for p in problems:
                    touched[p["person_id"]] = p["person"]
                    if p["kind"] != "image":
                        continue
                    vec = reembed(p["ref"]) if reembed is not None and p["ref"] else None
                    if vec is not None:
                        self.store.set_embedding(p["id"], vec)
                        done.append({**p, "action": "re-embedded from " + str(p["ref"])})
                    else:
                        self.store.delete_image(p["id"])
                        done.append({**p, "action": "image dropped"})
                for pid, name in touched.items():
                    left = self.store.conn.execute(
                        "SELECT COUNT(*) FROM images WHERE person_id=?", (pid,)
                    ).fetchone()[0]
                    if left:
                        self.store.refresh_template(pid, dim)
                        done.append({"person": name, "action": "template recomputed"})
                    else:
                        self.store.delete_person(pid)
                        done.append({"person": name, "action": "person removed (no image left)"})
                v = self.store.bump_version()
            self._data_version = -1
            self.derived.rebuild(v)
            self.derived.save()
        return done

    # -- searching -----------------------------------------------------------------------
    def _search(self, q: np.ndarray, top_k: int) -> list[list[Candidate]]:
        with self._lock:
            index = self.derived.sync()
            unit = self.unit
            per_person = 1
            if unit == "image":
                n_people, n_images = self.store.counts()
                per_person = max(1, math.ceil(n_images / max(n_people, 1)))
            want = min(top_k * per_person, max(index.ntotal, 1))
            scores, cand = index.search(q, want)
            results = []
            for row, probe in enumerate(q):
                ranked = self._rank(scores[row], cand[row], top_k, unit)
                w = want
                while len(ranked) < top_k and w < index.ntotal:
                    # "max" over images: too few distinct people among the best images
                    w = min(4 * w, index.ntotal)
                    s2, c2 = index.search(probe[None], w)
                    ranked = self._rank(s2[0], c2[0], top_k, unit)
                # The candidates' stored vectors are read back (a few rows): a record damaged
                # after the index was built is reported by name, never silently passed over.
                self.store.vectors_by_id("person", [pid for pid, _ in ranked], self.embedding_size)
                names = self.store.names_of([pid for pid, _ in ranked])
                results.append(
                    [
                        Candidate(pid, names[pid][0], s, names[pid][1])
                        for pid, s in ranked
                        if pid in names
                    ]
                )
            return results

    def _rank(
        self, scores: np.ndarray, ids: np.ndarray, top_k: int, unit: str
    ) -> list[tuple[int, float]]:
        """Best score per person (index scores are exact, or float16-exact for compressed
        kinds: see :mod:`siamface.gallery.index`)."""
        ok = ids >= 0
        ids, scores = ids[ok], scores[ok]
        owners = ids if unit == "person" else self.store.owners_of(ids)
        best: dict[int, float] = {}
        for pid, s in zip(owners.tolist(), scores.tolist(), strict=True):
            if pid >= 0 and s > best.get(pid, -math.inf):
                best[pid] = s
        return sorted(best.items(), key=lambda t: (-t[1], t[0]))[:top_k]
