"""The gallery's source of truth: one SQLite database of people, images and embeddings.

Why SQLite: it is transactional (an interrupted enrollment rolls back to nothing), it lets
many readers work while one writer commits (WAL journal), it needs no server, and a gallery
stays one self-contained folder that can be copied or backed up. The vector index beside it
is *derived* data: every committed change bumps a ``version`` counter here, the index file
records the version it was built from, and a stale or missing index is rebuilt from this
database (see :mod:`siamface.gallery.gallery`).

Embeddings are stored exactly (float32 blobs, see :mod:`siamface.gallery.vectors`). Every
vector read back is checked and a damaged one raises an error naming its person; the full
scan of ``gallery check`` is :mod:`siamface.gallery.store_check`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from siamface.errors import SiamfaceError
from siamface.gallery.records import NewPerson, PersonRecord
from siamface.gallery.vectors import (
    DamagedVectorError,
    from_blobs,
    mean_template,
    to_blob,
)

__all__ = ["DB_NAME", "FORMAT", "FORMAT_VERSION", "NewPerson", "PersonRecord", "Store"]

FORMAT = "siamface.gallery"
FORMAT_VERSION = 1
DB_NAME = "gallery.sqlite"
PAGE_SIZE = 16384
#: settings that 'siamface gallery set' can rewrite
_TUNABLE = ("threshold", "aggregation", "index_kind", "index_params")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS people (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: index ids stay unambiguous
    name     TEXT NOT NULL UNIQUE,
    metadata TEXT NOT NULL DEFAULT '{}',
    created  REAL NOT NULL,
    n_images INTEGER NOT NULL,
    template BLOB                -- normalised mean embedding, NULL for one image (= that one)
);
CREATE TABLE IF NOT EXISTS images (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    ref       TEXT,               -- where the image came from (path, upload name, ...)
    digest    TEXT,               -- SHA-256 of the file bytes when known
    embedding BLOB NOT NULL,
    added     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS images_person ON images(person_id);
CREATE INDEX IF NOT EXISTS images_digest ON images(digest);
CREATE INDEX IF NOT EXISTS images_owner ON images(id, person_id);  -- image -> person, off-table
"""

#: Created on first use too (galleries made before thumbnails existed lack it). A table of its
#: own, not a column of ``people``: listing a million people never reads the JPEG bytes.
_THUMBNAILS = """
CREATE TABLE IF NOT EXISTS thumbnails (
    person_id INTEGER PRIMARY KEY REFERENCES people(id) ON DELETE CASCADE,
    jpeg      BLOB NOT NULL
);
"""


def disk_error(err: sqlite3.Error, path: Path) -> SiamfaceError | None:
    """A clear message for the storage errors a user can fix (full disk, read-only files),
    or None. A full disk shows up as SQLITE_FULL, or as a "disk I/O error" when SQLite
    cannot grow its shared-memory file; the free space tells them apart."""
    text = str(err).lower()
    folder = path if path.is_dir() else path.parent
    try:
        st = os.statvfs(folder)
        nearly_full = st.f_bavail * st.f_frsize < 1 << 20
    except OSError:
        nearly_full = False
    if "full" in text or ("i/o error" in text and nearly_full):
        return SiamfaceError(
            f"the disk holding gallery {folder} is full; nothing was written (free some space "
            "and run the command again)"
        )
    if "readonly" in text or "read-only" in text:
        return SiamfaceError(f"gallery {folder} is read-only; nothing was written")
    return None


class Store:
    """Thin, typed access to the gallery database. Not thread-safe on its own: the
    :class:`~siamface.gallery.gallery.Gallery` serialises access with a lock."""

    def __init__(self, path: Path, conn: sqlite3.Connection):
        self.path = path
        self.conn = conn

    # -- opening -------------------------------------------------------------------
    @classmethod
    def connect(cls, path: Path, create: bool = False) -> Store:
        path = Path(path)
        if not create and not path.is_file():
            raise SiamfaceError(f"{path.parent} is not a siamface gallery (no {DB_NAME} inside)")
        try:
            conn = sqlite3.connect(
                str(path), timeout=30.0, isolation_level=None, check_same_thread=False
            )
            if create:
                # 16 KiB pages hold seven 2 KiB embedding rows; with the default 4 KiB only
                # one fits and the database is twice the size of the vectors.
                conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints
            conn.execute("PRAGMA journal_size_limit=67108864")  # shrink the WAL after big imports
        except sqlite3.DatabaseError as err:
            clear = disk_error(err, path)
            if clear is not None:
                raise clear from None
            raise SiamfaceError(f"gallery database {path} is corrupt or not SQLite: {err}") from err
        if str(mode).lower() != "wal":
            conn.close()
            raise SiamfaceError(f"cannot use WAL journal for {path} (got {mode!r})")
        return cls(path, conn)

    def init_schema(self, meta: dict[str, object]) -> None:
        """Create tables and the meta record of a new gallery in one transaction."""
        self.conn.executescript(_SCHEMA + _THUMBNAILS)  # idempotent (IF NOT EXISTS)
        with self.transaction():
            base = {"format": FORMAT, "format_version": FORMAT_VERSION, "version": 0}
            for k, v in {**base, **meta}.items():
                self.conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (k, json.dumps(v))
                )

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    # -- transactions and the change counter ------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` (take the write lock up front, so two writers queue instead
        of deadlocking) ... ``COMMIT``, or ``ROLLBACK`` on any exception."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back by itself (e.g. SQLITE_FULL): an explicit
            # ROLLBACK would then fail with "cannot rollback" and hide the real error.
            if self.conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            raise

    def meta(self) -> dict:
        try:
            rows = self.conn.execute("SELECT key, value FROM meta").fetchall()
        except sqlite3.DatabaseError as err:
            raise SiamfaceError(f"gallery database {self.path} is unreadable: {err}") from err
        out = {}
        for k, v in rows:
            try:
                out[k] = json.loads(v)
            except (TypeError, ValueError):  # hand-edited: not JSON text
                if k in _TUNABLE:  # kept as text: validated (and repairable) by the gallery
                    out[k] = v
                    continue
                raise SiamfaceError(
                    f"gallery database {self.path} has an unreadable setting {k!r} = {v!r} "
                    "(not JSON); the gallery was edited or damaged: restore it from a backup"
                ) from None
        return out

    def set_meta(self, key: str, value: object) -> None:
        """Write one meta value (inside the caller's transaction)."""
        self.conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value))
        )

    def set_metadata(self, person_id: int, metadata: dict) -> None:
        self.conn.execute(
            "UPDATE people SET metadata=? WHERE id=?", (json.dumps(metadata), person_id)
        )

    def export_person(self, rec: PersonRecord, dim: int) -> NewPerson:
        """Everything stored about one person, to copy them into another gallery."""
        rows = self.conn.execute(
            "SELECT ref, digest, embedding, id FROM images WHERE person_id=? ORDER BY id",
            (rec.id,),
        ).fetchall()
        return NewPerson(
            rec.name,
            self._decode("image", [r[3] for r in rows], [r[2] for r in rows], dim),
            [r[0] for r in rows],
            [r[1] for r in rows],
            dict(rec.metadata),
            self.thumbnail(rec.id),
        )

    def data_version(self) -> int:
        """Changes whenever *another* connection commits (SQLite ``PRAGMA data_version``)."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def version(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key='version'").fetchone()
        return int(json.loads(row[0]))

    def bump_version(self) -> int:
        """Increment the change counter (inside the caller's transaction); returns it."""
        v = self.version() + 1
        self.set_meta("version", v)
        return v

    # -- people ------------------------------------------------------------------------
    def existing_names(self, names: Iterable[str]) -> list[str]:
        names = list(names)
        found: list[str] = []
        for i in range(0, len(names), 500):
            chunk = names[i : i + 500]
            q = f"SELECT name FROM people WHERE name IN ({','.join('?' * len(chunk))})"
            found += [r[0] for r in self.conn.execute(q, chunk)]
        return found

    def person(self, name: str) -> PersonRecord | None:
        row = self.conn.execute(
            "SELECT id, name, n_images, metadata, created FROM people WHERE name=?", (name,)
        ).fetchone()
        return _person(row) if row else None

    def people_named(self, names: Sequence[str]) -> list[PersonRecord]:
        """Records for ``names``, in that order (all must exist)."""
        found: dict[str, PersonRecord] = {}
        for i in range(0, len(names), 500):
            chunk = list(names[i : i + 500])
            q = (
                "SELECT id, name, n_images, metadata, created FROM people "
                f"WHERE name IN ({','.join('?' * len(chunk))})"
            )
            found.update((r[1], _person(r)) for r in self.conn.execute(q, chunk))
        return [found[n] for n in names]

    def people(self) -> list[PersonRecord]:
        rows = self.conn.execute(
            "SELECT id, name, n_images, metadata, created FROM people ORDER BY name"
        )
        return [_person(r) for r in rows]

    def counts(self) -> tuple[int, int]:
        n_people = self.conn.execute("SELECT COUNT(*) FROM people").fetchone()[0]
        n_images = self.conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        return int(n_people), int(n_images)

    def names_of(self, person_ids: Sequence[int]) -> dict[int, tuple[str, dict]]:
        out: dict[int, tuple[str, dict]] = {}
        ids = [int(i) for i in person_ids]
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            q = f"SELECT id, name, metadata FROM people WHERE id IN ({','.join('?' * len(chunk))})"
            for pid, name, meta in self.conn.execute(q, chunk):
                out[int(pid)] = (name, json.loads(meta))
        return out

    def insert_person(self, p: NewPerson, now: float | None = None) -> tuple[int, list[int]]:
        """Insert a person and their images (inside the caller's transaction).

        Returns (person id, image ids)."""
        now = time.time() if now is None else now
        emb = p.embeddings
        template = to_blob(mean_template(emb)) if len(emb) > 1 else None
        cur = self.conn.execute(
            "INSERT INTO people(name, metadata, created, n_images, template) VALUES (?,?,?,?,?)",
            (p.name, json.dumps(p.metadata), now, len(emb), template),
        )
        pid = int(cur.lastrowid)
        image_ids = self.insert_images(pid, emb, p.refs, p.digests, now)
        if p.thumbnail is not None:
            self.set_thumbnail(pid, p.thumbnail)
        return pid, image_ids

    def set_thumbnail(self, person_id: int, jpeg: bytes, replace: bool = True) -> None:
        """Store a person's thumbnail (inside the caller's transaction); ``replace=False``
        keeps an existing one (the first face stays the person's picture)."""
        self.conn.execute(_THUMBNAILS)
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        self.conn.execute(
            f"{verb} INTO thumbnails(person_id, jpeg) VALUES (?, ?)", (person_id, jpeg)
        )

    def thumbnail(self, person_id: int) -> bytes | None:
        try:
            row = self.conn.execute(
                "SELECT jpeg FROM thumbnails WHERE person_id=?", (person_id,)
            ).fetchone()
        except sqlite3.OperationalError:  # a gallery from before thumbnails: none stored
            return None
        return bytes(row[0]) if row else None

    def insert_images(
        self,
        person_id: int,
        emb: np.ndarray,
        refs: Sequence[str | None] = (),
        digests: Sequence[str | None] = (),
        now: float | None = None,
    ) -> list[int]:
        now = time.time() if now is None else now
        refs = list(refs) or [None] * len(emb)
        digests = list(digests) or [None] * len(emb)
        ids = []
        for e, r, d in zip(emb, refs, digests, strict=True):
            cur = self.conn.execute(
                "INSERT INTO images(person_id, ref, digest, embedding, added) VALUES (?,?,?,?,?)",
                (person_id, r, d, to_blob(e), now),
            )
            ids.append(int(cur.lastrowid))
        return ids

    def refresh_template(self, person_id: int, dim: int) -> None:
        """Recompute a person's template and image count after images changed."""
        emb = self.image_embeddings_of(person_id, dim)
        template = to_blob(mean_template(emb)) if len(emb) > 1 else None
        self.conn.execute(
            "UPDATE people SET n_images=?, template=? WHERE id=?", (len(emb), template, person_id)
        )

    def delete_person(self, person_id: int) -> list[int]:
        """Delete a person and (by cascade) their images; returns the deleted image ids."""
        image_ids = [
            int(r[0])
            for r in self.conn.execute("SELECT id FROM images WHERE person_id=?", (person_id,))
        ]
        self.conn.execute("DELETE FROM people WHERE id=?", (person_id,))
        return image_ids

    def digests_elsewhere(self, digests: Sequence[str], name: str) -> dict[str, str]:
        """{digest: other person's name} for files already enrolled under another name."""
        out: dict[str, str] = {}
        ds = [d for d in digests if d]
        for i in range(0, len(ds), 500):
            chunk = ds[i : i + 500]
            q = (
                "SELECT i.digest, p.name FROM images i JOIN people p ON p.id = i.person_id "
                f"WHERE i.digest IN ({','.join('?' * len(chunk))}) AND p.name != ?"
            )
            for d, other in self.conn.execute(q, [*chunk, name]):
                out[d] = other
        return out

    # -- vectors -----------------------------------------------------------------------
    _TEMPLATE_SQL = (
        "SELECT p.id, COALESCE(p.template, "
        "(SELECT i.embedding FROM images i WHERE i.person_id = p.id ORDER BY i.id LIMIT 1)) "
        "FROM people p"
    )

    def image_embeddings_of(self, person_id: int, dim: int) -> np.ndarray:
        rows = self.conn.execute(
            "SELECT id, embedding FROM images WHERE person_id=? ORDER BY id", (person_id,)
        ).fetchall()
        return self._decode("image", [r[0] for r in rows], [r[1] for r in rows], dim)

    def _decode(
        self, unit: str, ids: Sequence[int], blobs: Sequence[bytes], dim: int
    ) -> np.ndarray:
        """:func:`from_blobs`, with a damaged vector reported by its person's name."""
        try:
            return from_blobs(blobs, dim)
        except DamagedVectorError as err:
            raise self.damaged(unit, int(ids[err.row]), err.why) from None

    def damaged(self, unit: str, vid: int, why: str) -> SiamfaceError:
        """The message for a damaged stored vector: whose it is and how to repair it."""
        folder = self.path.parent
        if unit == "person":
            pid, what = vid, "vector"
        else:
            row = self.conn.execute("SELECT person_id FROM images WHERE id=?", (vid,)).fetchone()
            pid, what = (int(row[0]) if row else -1), f"embedding of image {vid}"
        row = self.conn.execute("SELECT name FROM people WHERE id=?", (pid,)).fetchone()
        who = repr(row[0]) if row else f"person {pid}"
        return SiamfaceError(
            f"gallery {folder}: the stored {what} of {who} is damaged ({why}); run "
            f"'siamface gallery check {folder} --repair'"
        )

    def iter_vectors(
        self, unit: str, dim: int, chunk: int = 65536, every: int = 1
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (ids, vectors) in chunks: person templates (``unit='person'``) or image
        embeddings (``unit='image'``), in id order, for (re)building an index; ``every=k``
        keeps only ids divisible by k (a spread-out sample, filtered inside SQLite)."""
        cond = "" if every == 1 else f" AND {'p.id' if unit == 'person' else 'id'} % {every} = 0"
        if unit == "person":
            sql = self._TEMPLATE_SQL + f" WHERE p.id > ?{cond} ORDER BY p.id LIMIT ?"
        else:
            sql = f"SELECT id, embedding FROM images WHERE id > ?{cond} ORDER BY id LIMIT ?"
        last = -1
        while True:
            rows = self.conn.execute(sql, (last, chunk)).fetchall()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            yield ids, self._decode(unit, ids.tolist(), [r[1] for r in rows], dim)
            last = int(ids[-1])

    def vectors_by_id(
        self, unit: str, ids: Sequence[int], dim: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact vectors for index ids, for re-scoring: (ids found, person ids, vectors)."""
        ids = [int(i) for i in ids]
        if not ids:
            z = np.zeros(0, dtype=np.int64)
            return z, z, np.zeros((0, dim), dtype=np.float32)
        marks = ",".join("?" * len(ids))
        if unit == "person":
            rows = self.conn.execute(
                self._TEMPLATE_SQL + f" WHERE p.id IN ({marks})", ids
            ).fetchall()
            rows = [(r[0], r[0], r[1]) for r in rows]
        else:
            rows = self.conn.execute(
                f"SELECT id, person_id, embedding FROM images WHERE id IN ({marks})", ids
            ).fetchall()
        found = np.array([r[0] for r in rows], dtype=np.int64)
        owners = np.array([r[1] for r in rows], dtype=np.int64)
        return found, owners, self._decode(unit, found.tolist(), [r[2] for r in rows], dim)

    def owners_of(self, image_ids: np.ndarray) -> np.ndarray:
        """Person id of each image id (-1 if gone), from a small covering index, so that
        search never reads the embedding rows."""
        ids = [int(i) for i in image_ids]
        found: dict[int, int] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            q = (
                "SELECT id, person_id FROM images INDEXED BY images_owner "
                f"WHERE id IN ({','.join('?' * len(chunk))})"
            )
            found.update(self.conn.execute(q, chunk).fetchall())
        return np.array([found.get(i, -1) for i in ids], dtype=np.int64)

    def set_embedding(self, image_id: int, vec: np.ndarray) -> None:
        """Replace one image's embedding (inside the caller's transaction; repair)."""
        self.conn.execute("UPDATE images SET embedding=? WHERE id=?", (to_blob(vec), image_id))

    def delete_image(self, image_id: int) -> None:
        self.conn.execute("DELETE FROM images WHERE id=?", (image_id,))

    def count(self, unit: str) -> int:
        table = "people" if unit == "person" else "images"
        return int(self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def sample_vectors(self, unit: str, n: int, dim: int) -> np.ndarray:
        """About ``n`` vectors spread over the id range (to train a quantiser)."""
        every = max(1, self.count(unit) // max(n, 1))
        out = [v for _, v in self.iter_vectors(unit, dim, every=int(every))]
        return np.concatenate(out)[:n] if out else np.zeros((0, dim), dtype=np.float32)


def _person(row) -> PersonRecord:
    pid, name, n, meta, created = row
    try:
        metadata = json.loads(meta)
    except (TypeError, ValueError):
        metadata = {"_unreadable": str(meta)[:200]}  # hand-edited row: still listable
    if not isinstance(metadata, dict):
        metadata = {"_unreadable": str(meta)[:200]}
    return PersonRecord(int(pid), str(name), int(n), metadata, float(created))
