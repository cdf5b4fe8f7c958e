"""The face gallery: enroll people, remove them, list them, and identify probes (1:N).

A gallery is one folder::

    GALLERY/
      gallery.sqlite   people, images, exact embeddings, model fingerprint, threshold (truth)
      index.bin        vector index derived from it (rebuilt whenever missing or stale)
      gallery.lock     advisory file lock: one writer at a time, readers wait for its commit

Consistency: every write is one SQLite transaction that also bumps a ``version`` counter,
so an interrupted enrollment (exception, Ctrl-C, killed process, power loss) leaves the
database exactly as before. The index file is written after the commit, atomically, and
carries the version it was built from; whoever finds it missing, damaged or older than the
database rebuilds it from the database. Nothing half-written is ever read and nothing
committed is ever lost.

Search is open-set: the best match is reported as ``"unknown"`` when its cosine similarity
is below the gallery's threshold (by default the model's calibrated 1:1 threshold), so a
stranger is rejected instead of being matched to the nearest enrolled person.

Several images per person can be searched two ways (``aggregation``): ``"mean"`` indexes
one normalised mean template per person, ``"max"`` indexes every image and scores a person
by their best image. ``siamface evaluate-1n`` measures both on your data.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from siamface.errors import SiamfaceError
from siamface.gallery.index import (
    KINDS,
    RETRAIN_GROWTH,
    VectorIndex,
    choose_kind,
    make_index,
    read_index_file,
    read_index_header,
    write_index_file,
)
from siamface.gallery.store import (
    DB_NAME,
    FORMAT,
    FORMAT_VERSION,
    NewPerson,
    PersonRecord,
    Store,
    mean_template,
)
from siamface.gallery.thumbnail import check_thumbnail

INDEX_NAME = "index.bin"
LOCK_NAME = "gallery.lock"
#: The name reported for a probe whose best score is below the threshold.
UNKNOWN = "unknown"
AGGREGATIONS = ("mean", "max")
DEFAULT_AGGREGATION = "mean"
#: Vectors sampled from the database to train a quantised index.
TRAIN_SAMPLE = 65_536
_MAX_NAME = 200
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f]")


class ModelMismatchError(SiamfaceError):
    """Embeddings from a different model than the one the gallery was built with."""


@dataclass
class Match:
    """One enrolled person as a candidate for a probe."""

    name: str
    score: float  # cosine similarity (best image for "max", template for "mean"); exact for
    # the flat index, within ~1e-4 for compressed ones (re-scored from float16 vectors)
    person_id: int
    accepted: bool  # score >= threshold (always True without a threshold)
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "score": round(self.score, 6),
            "accepted": self.accepted,
            "metadata": self.metadata,
        }


@dataclass
class SearchResult:
    """The answer for one probe: ranked candidates and the open-set decision."""

    identity: str  # best match's name, or UNKNOWN when below the threshold / empty gallery
    score: float | None  # best match's score
    matches: list[Match]
    threshold: float | None

    @property
    def known(self) -> bool:
        return self.identity != UNKNOWN

    def to_dict(self) -> dict:
        return {
            "identity": self.identity,
            "known": self.known,
            "score": None if self.score is None else round(self.score, 6),
            "threshold": self.threshold,
            "matches": [m.to_dict() for m in self.matches],
        }


class Gallery:
    """A gallery folder opened for reading and writing. Thread-safe; processes coordinate
    through SQLite (WAL) and the lock file. Use :meth:`create` / :meth:`open`."""

    def __init__(self, path: Path, store: Store) -> None:
        self.path = path
        self.store = store
        self._lock = threading.RLock()
        self._index: VectorIndex | None = None
        self._index_version = -1
        self._meta = store.meta()
        self._data_version = store.data_version()
        self._check_format()

    # -- opening ---------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        fingerprint: str,
        embedding_size: int,
        threshold: float | None = None,
        model_source: str | None = None,
        aggregation: str = DEFAULT_AGGREGATION,
        index_kind: str = "auto",
        index_params: dict | None = None,
    ) -> Gallery:
        """Make a new, empty gallery folder for embeddings of one model."""
        path = Path(path).expanduser()
        if (path / DB_NAME).exists():
            raise SiamfaceError(f"{path} already holds a gallery")
        if path.exists() and not path.is_dir():
            raise SiamfaceError(f"gallery path {path} is a file, not a folder")
        if path.is_dir() and any(p for p in path.iterdir() if not p.name.startswith(".")):
            raise SiamfaceError(f"{path} is a non-empty folder that is not a gallery")
        _check_choice("aggregation", aggregation, AGGREGATIONS)
        _check_choice("index kind", index_kind, ("auto", *KINDS))
        if not (isinstance(embedding_size, int) and embedding_size > 0):
            raise SiamfaceError(f"embedding size must be a positive integer, got {embedding_size}")
        threshold = _check_threshold(threshold)
        path.mkdir(parents=True, exist_ok=True)
        tmp_db = path / f".{DB_NAME}.creating"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{tmp_db}{suffix}").unlink(missing_ok=True)
        store = Store.connect(tmp_db, create=True)
        store.init_schema(
            {
                "fingerprint": fingerprint,
                "embedding_size": embedding_size,
                "threshold": threshold,
                "model_source": model_source,
                "aggregation": aggregation,
                "index_kind": index_kind,
                "index_params": index_params or {},
                "created": time.time(),
            }
        )
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.close()
        os.replace(tmp_db, path / DB_NAME)  # a half-created gallery never looks like one
        for suffix in ("-wal", "-shm"):
            Path(f"{tmp_db}{suffix}").unlink(missing_ok=True)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | Path) -> Gallery:
        """Open an existing gallery folder (clear errors when missing or damaged)."""
        path = Path(path).expanduser()
        if not path.exists():
            raise SiamfaceError(
                f"gallery not found: {path} (create one with "
                f"'siamface gallery enroll {path} --model MODEL IMAGES...')"
            )
        if not path.is_dir():
            raise SiamfaceError(f"gallery path {path} is a file; a gallery is a folder")
        return cls(path, Store.connect(path / DB_NAME))

    @classmethod
    def exists(cls, path: str | Path) -> bool:
        return (Path(path).expanduser() / DB_NAME).is_file()

    def close(self) -> None:
        with self._lock:
            self.store.close()
            self._index = None

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_format(self) -> None:
        m = self._meta
        if m.get("format") != FORMAT or "fingerprint" not in m:
            raise SiamfaceError(f"{self.path / DB_NAME} is not a siamface gallery database")
        if int(m.get("format_version", 0)) > FORMAT_VERSION:
            raise SiamfaceError(
                f"{self.path} was written by a newer siamface (gallery format "
                f"{m['format_version']}); upgrade siamface"
            )

    # -- properties ------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self._meta["fingerprint"]

    @property
    def embedding_size(self) -> int:
        return int(self._meta["embedding_size"])

    @property
    def threshold(self) -> float | None:
        return self._refresh_meta().get("threshold")

    @property
    def aggregation(self) -> str:
        return self._refresh_meta()["aggregation"]

    @property
    def model_source(self) -> str | None:
        return self._meta.get("model_source")

    @property
    def unit(self) -> str:
        """What the index holds: one vector per ``person`` (mean) or per ``image`` (max)."""
        return "person" if self.aggregation == "mean" else "image"

    def __len__(self) -> int:
        with self._lock:
            return self.store.counts()[0]

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return isinstance(name, str) and self.store.person(name) is not None

    def people(self) -> list[PersonRecord]:
        """Everyone enrolled, sorted by name."""
        with self._lock:
            return self.store.people()

    def person(self, name: str) -> PersonRecord | None:
        with self._lock:
            return self.store.person(name)

    def thumbnail(self, name: str) -> bytes | None:
        """The person's thumbnail (JPEG bytes), or None if none was stored or no such person."""
        with self._lock:
            rec = self.store.person(name) if isinstance(name, str) else None
            return None if rec is None else self.store.thumbnail(rec.id)

    def info(self) -> dict:
        """A summary for ``gallery list`` and the REST service."""
        with self._lock:
            meta = self._refresh_meta()
            n_people, n_images = self.store.counts()
            head = read_index_header(self.path / INDEX_NAME) or {}
            return {
                "path": str(self.path),
                "people": n_people,
                "images": n_images,
                "fingerprint": meta["fingerprint"],
                "embedding_size": meta["embedding_size"],
                "model_source": meta.get("model_source"),
                "threshold": meta.get("threshold"),
                "aggregation": meta["aggregation"],
                "index_kind": meta.get("index_kind", "auto"),
                "index": {
                    "kind": head.get("kind"),
                    "vectors": head.get("ntotal"),
                    "version": head.get("version"),
                    "current": head.get("version") == meta["version"],
                },
                "version": meta["version"],
            }

    def _refresh_meta(self, force: bool = False) -> dict:
        """The meta record, re-read only when another connection committed since (SQLite's
        ``data_version``: one cheap pragma per search) or after our own writes (``force``)."""
        with self._lock:
            dv = self.store.data_version()
            if force or dv != self._data_version:
                self._meta, self._data_version = self.store.meta(), dv
            return self._meta

    def duplicates_elsewhere(self, people: Sequence[NewPerson]) -> list[dict]:
        """Files (by content digest) that are already enrolled, or given in this batch, under
        another name: usually a labelling mistake worth a warning."""
        out = []
        seen: dict[str, str] = {}
        with self._lock:
            for p in people:
                digests = [d for d in p.digests if d]
                known = self.store.digests_elsewhere(digests, p.name)
                for d, ref in zip(p.digests, p.refs or [None] * len(p.digests), strict=False):
                    other = known.get(d) if d else None
                    if d and other is None and seen.get(d, p.name) != p.name:
                        other = seen[d]
                    if other is not None:
                        out.append({"path": ref, "name": p.name, "other": other})
                    if d:
                        seen.setdefault(d, p.name)
        return out

    # -- checks ------------------------------------------------------------------------
    def check_model(self, fingerprint: str, embedding_size: int | None = None) -> None:
        """Refuse embeddings of another model (mixing models gives meaningless scores)."""
        if embedding_size is not None and embedding_size != self.embedding_size:
            raise ModelMismatchError(
                f"the model gives {embedding_size}-d embeddings but gallery {self.path} holds "
                f"{self.embedding_size}-d embeddings of model {self.fingerprint}"
            )
        if fingerprint != self.fingerprint:
            src = f" ({self.model_source})" if self.model_source else ""
            raise ModelMismatchError(
                f"gallery {self.path} was built with model {self.fingerprint}{src}, but these "
                f"embeddings come from model {fingerprint}; use the gallery's model or enroll "
                "everyone again into a new gallery"
            )

    def _vectors(self, embeddings: np.ndarray, fingerprint: str, what: str) -> np.ndarray:
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim == 1:
            emb = emb[None, :]
        if emb.ndim != 2:
            raise SiamfaceError(f"{what} embeddings must be a (n, d) array, got shape {emb.shape}")
        if emb.shape[1] != self.embedding_size:
            raise ModelMismatchError(
                f"{what} embeddings are {emb.shape[1]}-d but gallery {self.path} holds "
                f"{self.embedding_size}-d embeddings (model {self.fingerprint})"
            )
        self.check_model(fingerprint)
        if not np.isfinite(emb).all():
            raise SiamfaceError(f"{what} embeddings contain NaN or infinite values")
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        if (norms < 1e-6).any():
            raise SiamfaceError(f"{what} embeddings contain an all-zero vector")
        if len(emb) and np.abs(norms - 1.0).max() < 1e-5:
            return emb  # already unit vectors: no copy (bulk imports hold millions)
        return (emb / norms).astype(np.float32)

    # -- writing -------------------------------------------------------------------------
    def enroll(
        self,
        name: str,
        embeddings: np.ndarray,
        refs: Sequence[str | None] = (),
        *,
        fingerprint: str,
        metadata: dict | None = None,
        digests: Sequence[str | None] = (),
        append: bool = False,
        thumbnail: bytes | None = None,
    ) -> PersonRecord:
        """Enroll one person from unit embeddings of their images (one row each).

        ``refs`` say where each image came from (kept for listing); ``append=True`` adds the
        images to an already enrolled person instead of refusing the duplicate name.
        ``thumbnail`` is a small JPEG of the first face (kept when appending to a person who
        already has one); see :mod:`siamface.gallery.thumbnail`.
        """
        person = NewPerson(name, embeddings, refs, digests, metadata or {}, thumbnail)
        return self.enroll_many([person], fingerprint=fingerprint, append=append)[0]

    def enroll_many(
        self, people: Sequence[NewPerson], *, fingerprint: str, append: bool = False
    ) -> list[PersonRecord]:
        """Enroll several people in one transaction: all of them or, on any error, none."""
        people = [self._checked(p, fingerprint) for p in people]
        if not people:
            raise SiamfaceError("nothing to enroll")
        names = [p.name for p in people]
        dupes = sorted(n for n, c in Counter(names).items() if c > 1)
        if dupes:
            raise SiamfaceError(f"the same name is given twice in one enrollment: {dupes[:5]}")
        with self._lock, self._file_lock(exclusive=True):
            self._sync_index(locked=True)
            v0 = self.store.version()
            unit = self.unit
            add_ids: list[np.ndarray] = []
            add_vecs: list[np.ndarray] = []
            rm_ids: list[int] = []
            with self.store.transaction():
                existing = set(self.store.existing_names(names))
                if existing and not append:
                    shown = ", ".join(sorted(existing)[:5])
                    raise SiamfaceError(
                        f"already enrolled in {self.path}: {shown}"
                        f"{' ...' if len(existing) > 5 else ''} (remove them first, or add "
                        "images to them with --append); nothing was enrolled"
                    )
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
                        self.store.refresh_template(pid, self.embedding_size)
                        if p.thumbnail is not None:
                            self.store.set_thumbnail(pid, p.thumbnail, replace=False)
                        if rec.metadata or p.metadata:
                            merged = {**rec.metadata, **p.metadata}
                            self.store.conn.execute(
                                "UPDATE people SET metadata=? WHERE id=?", (json.dumps(merged), pid)
                            )
                    if unit == "person":
                        if rec is None:
                            one = len(p.embeddings) == 1
                            tmpl = p.embeddings if one else mean_template(p.embeddings)[None, :]
                        else:
                            rm_ids.append(pid)
                            tmpl = self.store.vectors_by_id("person", [pid], self.embedding_size)[2]
                        add_ids.append(np.array([pid], np.int64))
                        add_vecs.append(tmpl)
                    else:
                        add_ids.append(np.array(img_ids, np.int64))
                        add_vecs.append(p.embeddings)
                _fault_point("enroll:before-commit")
                v1 = self.store.bump_version()
            self._refresh_meta(force=True)
            _fault_point("enroll:after-commit")
            self._apply_delta(v0, v1, add_ids, add_vecs, np.array(rm_ids, np.int64))
            return self.store.people_named(names)

    def remove(self, names: str | Sequence[str]) -> list[str]:
        """Remove people (and their images). Unknown names are an error; nothing is removed
        unless every name exists."""
        names = [names] if isinstance(names, str) else list(names)
        if not names:
            raise SiamfaceError("no name given to remove")
        with self._lock, self._file_lock(exclusive=True):
            self._sync_index(locked=True)
            v0 = self.store.version()
            rm: list[int] = []
            with self.store.transaction():
                missing = sorted(set(names) - set(self.store.existing_names(names)))
                if missing:
                    raise SiamfaceError(
                        f"not enrolled in {self.path}: {', '.join(missing[:5])}; nothing removed"
                    )
                for n in dict.fromkeys(names):
                    rec = self.store.person(n)
                    assert rec is not None
                    img_ids = self.store.delete_person(rec.id)
                    rm += [rec.id] if self.unit == "person" else img_ids
                v1 = self.store.bump_version()
            self._refresh_meta(force=True)
            self._apply_delta(v0, v1, [], [], np.array(rm, np.int64))
            return list(dict.fromkeys(names))

    def set_threshold(self, value: float | None) -> None:
        """Set (or clear, with None) the open-set threshold on cosine similarity."""
        value = _check_threshold(value)
        with self._lock, self.store.transaction():
            self.store.set_meta("threshold", value)
        self._refresh_meta(force=True)

    def set_aggregation(self, mode: str) -> None:
        """Switch between mean templates and per-image search (the index is rebuilt)."""
        _check_choice("aggregation", mode, AGGREGATIONS)
        self._set_index_meta("aggregation", mode)

    def set_index_kind(self, kind: str, **params) -> None:
        """Pin the index kind (``auto`` = by size, see :func:`choose_kind`)."""
        _check_choice("index kind", kind, ("auto", *KINDS))
        self._set_index_meta("index_kind", kind, params)

    def _set_index_meta(self, key: str, value: str, params: dict | None = None) -> None:
        with self._lock, self._file_lock(exclusive=True):
            with self.store.transaction():
                self.store.set_meta(key, value)
                if params is not None:
                    self.store.set_meta("index_params", params)
                v = self.store.bump_version()
            self._refresh_meta(force=True)
            self._rebuild(v)
            self._save_index()

    def rebuild_index(self) -> None:
        """Rebuild the derived index from the database (e.g. after copying a gallery)."""
        with self._lock, self._file_lock(exclusive=True):
            self._rebuild(self.store.version())
            self._save_index()

    def _checked(self, p: NewPerson, fingerprint: str) -> NewPerson:
        name = _check_name(p.name)
        emb = self._vectors(p.embeddings, fingerprint, f"enrollment of {name!r}")
        if len(emb) == 0:
            raise SiamfaceError(f"no images to enroll for {name!r}")
        for what, seq in (("refs", p.refs), ("digests", p.digests)):
            if len(seq) not in (0, len(emb)):
                raise SiamfaceError(f"{name!r}: {len(seq)} {what} for {len(emb)} embeddings")
        try:
            json.dumps(p.metadata)
        except (TypeError, ValueError) as err:
            raise SiamfaceError(f"metadata of {name!r} is not JSON-serialisable: {err}") from err
        if not isinstance(p.metadata, dict):
            raise SiamfaceError(f"metadata of {name!r} must be a JSON object")
        refs = [None if r is None else str(r) for r in p.refs]
        thumb = check_thumbnail(p.thumbnail, name)
        return NewPerson(name, emb, refs, list(p.digests), dict(p.metadata), thumb)

    # -- searching -----------------------------------------------------------------------
    def search(
        self,
        embeddings: np.ndarray,
        top_k: int = 5,
        *,
        fingerprint: str,
        threshold: float | None | str = "gallery",
    ) -> list[SearchResult]:
        """Identify each probe embedding: up to ``top_k`` people, best first, with their
        cosine similarity; ``identity`` is ``"unknown"`` when the best score is below the
        threshold (the gallery's unless one is given; ``None`` = closed-set)."""
        if not (isinstance(top_k, int) and top_k >= 1):
            raise SiamfaceError(f"top_k must be a positive integer, got {top_k!r}")
        q = self._vectors(embeddings, fingerprint, "probe")
        thr = self.threshold if threshold == "gallery" else _check_threshold(threshold)
        with self._lock:
            self._sync_index()
            index = self._index
            assert index is not None
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
                results.append(self._result(ranked, thr))
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

    def _result(self, ranked: list[tuple[int, float]], thr: float | None) -> SearchResult:
        names = self.store.names_of([pid for pid, _ in ranked])
        matches = [
            Match(names[pid][0], float(s), pid, thr is None or s >= thr, names[pid][1])
            for pid, s in ranked
            if pid in names
        ]
        if matches and matches[0].accepted:
            return SearchResult(matches[0].name, matches[0].score, matches, thr)
        return SearchResult(UNKNOWN, matches[0].score if matches else None, matches, thr)

    # -- the derived index ---------------------------------------------------------------
    @contextlib.contextmanager
    def _file_lock(self, exclusive: bool) -> Iterator[None]:
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

    def _desired_kind(self, n: int) -> str:
        kind = self._meta.get("index_kind", "auto")
        return choose_kind(n) if kind == "auto" else kind

    def _index_ok(self, index: VectorIndex, n: int) -> bool:
        """Is a loaded/in-memory index still the right one for ``n`` vectors?"""
        if index.kind != self._desired_kind(n):
            return False
        return not (index.trained_on and n > RETRAIN_GROWTH * index.trained_on)

    def _sync_index(self, locked: bool = False) -> None:
        """Make the in-memory index match the database version: keep it, load the file, or
        (missing/stale/damaged file) rebuild from the database and save."""
        v = int(self._refresh_meta()["version"])
        if self._index is not None and self._index_version == v:
            return
        v = int(self._refresh_meta(force=True)["version"])
        if locked:
            if not self._load_index(v):
                self._rebuild(v)
                self._save_index()
            return
        with self._file_lock(exclusive=False):  # wait for a writer that is saving the index
            v = int(self._refresh_meta(force=True)["version"])
            if self._load_index(v):
                return
        with self._file_lock(exclusive=True):
            self._sync_index(locked=True)

    def _load_index(self, version: int) -> bool:
        path = self.path / INDEX_NAME
        head = read_index_header(path)
        if (
            head is None
            or head.get("version") != version
            or head.get("fingerprint") != self.fingerprint
            or head.get("unit") != self.unit
        ):
            return False
        try:
            head, index = read_index_file(path)
        except (OSError, ValueError) as err:
            warnings.warn(f"gallery index {path} is damaged ({err}); rebuilding", stacklevel=3)
            return False
        if not self._index_ok(index, index.ntotal):
            return False
        self._index, self._index_version = index, version
        return True

    def _rebuild(self, version: int) -> None:
        unit, dim = self.unit, self.embedding_size
        n = self.store.count(unit)
        index = make_index(self._desired_kind(n), dim, **self._meta.get("index_params", {}))
        if index.needs_training:
            sample = self.store.sample_vectors(unit, TRAIN_SAMPLE, dim)
            if len(sample) < 256:  # too few to train a quantiser: exact search it is
                index = make_index("flat", dim)
            else:
                index.train(sample, n)
        for ids, vecs in self.store.iter_vectors(unit, dim):
            index.add(ids, vecs)
        self._index, self._index_version = index, version

    def _apply_delta(
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
        index = self._index
        n_after = self.store.count(self.unit)
        try:
            if index is None or self._index_version != v0 or not self._index_ok(index, n_after):
                raise LookupError("rebuild")
            index.remove(rm)
            if add_ids:  # concatenated only now: a bulk import is rebuilt from the database
                index.add(np.concatenate(add_ids), np.concatenate(add_vecs))
            if index.ntotal != n_after:
                raise LookupError("rebuild")
            self._index_version = v1
        except LookupError:
            self._index = None
            self._rebuild(v1)
        except BaseException:
            self._index, self._index_version = None, -1
            raise
        self._save_index()

    def _save_index(self) -> None:
        assert self._index is not None
        header = {
            "version": self._index_version,
            "fingerprint": self.fingerprint,
            "unit": self.unit,
            "embedding_size": self.embedding_size,
        }
        for stale in self.path.glob(f".{INDEX_NAME}.*.tmp"):
            stale.unlink(missing_ok=True)  # left by a killed writer (we hold the write lock)
        try:
            write_index_file(self.path / INDEX_NAME, self._index, header)
        except OSError as err:  # the database is committed; the index is derived
            warnings.warn(
                f"could not save the gallery index ({err}); it will be rebuilt", stacklevel=3
            )


# -- helpers --------------------------------------------------------------------------------
def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise SiamfaceError(f"a person's name must be a non-empty string, got {name!r}")
    if name != name.strip() or _BAD_NAME.search(name) or len(name) > _MAX_NAME:
        raise SiamfaceError(
            f"invalid name {name!r}: no leading/trailing spaces or control characters, at most "
            f"{_MAX_NAME} characters"
        )
    if name.lower() == UNKNOWN:
        raise SiamfaceError(f"{name!r} is reserved for rejected probes; choose another name")
    return name


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise SiamfaceError(f"unknown {what} {value!r}; choose from {', '.join(choices)}")


def _check_threshold(value: float | None) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SiamfaceError(f"threshold must be a number, got {value!r}") from None
    if not -1.0 <= v <= 1.0:
        raise SiamfaceError(f"threshold is a cosine similarity in [-1, 1], got {v}")
    return v


#: Test hook: environment variable naming a fault point at which to die (crash tests).
_FAULT_ENV = "SIAMFACE_GALLERY_FAULT"


def _fault_point(name: str) -> None:
    """Crash tests set SIAMFACE_GALLERY_FAULT=<point>[:kill|:raise] to stop exactly here."""
    spec = os.environ.get(_FAULT_ENV)
    if not spec:
        return
    point, _, how = spec.rpartition(":")
    if point != name:
        return
    if how == "raise":
        raise RuntimeError(f"injected fault at {name}")
    os.kill(os.getpid(), 9)


def template_of(embeddings: np.ndarray) -> np.ndarray:
    """Public helper: the mean template the gallery uses for a person's embeddings."""
    return mean_template(np.asarray(embeddings, dtype=np.float32))
