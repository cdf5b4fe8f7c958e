"""The Milvus gallery backend: :class:`MilvusGallery`, a gallery in a Milvus server.

The collections, the way creation stays recoverable and what consistency means without
transactions are described in :mod:`siamface.gallery.milvus`; this class is the
:class:`~siamface.gallery.gallery.Gallery` interface over them: calls with retries,
settings, reading, writing (vectors first, then the commit) and searching.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from siamface.decide.open_set import Candidate
from siamface.errors import SiamfaceError
from siamface.gallery.faults import fault_point
from siamface.gallery.gallery import Gallery
from siamface.gallery.milvus.connection import (
    RETRY_DELAYS,
    connect,
    is_not_loaded,
    is_transient,
    short_error,
)
from siamface.gallery.milvus.create import create_collections
from siamface.gallery.milvus.half_made import half_made, half_made_message
from siamface.gallery.milvus.layout import (
    FLUSH_ROWS,
    INDEX_TYPES,
    MAX_LIMIT,
    READ_IDS,
    VARCHAR,
    WRITE_ROWS,
    index_params,
    search_params,
)
from siamface.gallery.milvus.maintenance import (
    CHECK_FIELDS,
    OWNER_FIELDS,
    damaged_vectors,
    uncommitted,
)
from siamface.gallery.milvus.rows import (
    batches_of,
    image_ids,
    json_obj,
    meta_row,
    person_rows,
    quote,
    rank_hits,
    settings_of,
    to_record,
)
from siamface.gallery.records import NewPerson, PersonRecord
from siamface.gallery.validation import checked_settings, usable
from siamface.names import normal_name

T = TypeVar("T")


class MilvusGallery(Gallery):
    """A gallery in a Milvus server (see :mod:`siamface.gallery.milvus` for the layout and what
    consistency means here). Thread-safe (calls are serialised per object)."""

    backend = "milvus"
    index_kinds = tuple(INDEX_TYPES)
    #: per-gallery retry schedule (a setting: raise it where outages last longer)
    retry_delays: tuple[float, ...] = RETRY_DELAYS

    def __init__(self, spec: str, client: Any, collection: str) -> None:
        self.location = spec
        self.client = client
        self.name = collection
        self.people_name = f"{collection}__people"
        self.meta_name = f"{collection}__meta"
        self._lock = threading.RLock()
        self._meta: dict = {}
        self._read_settings()

    # -- connecting -----------------------------------------------------------------------
    @classmethod
    def handles(cls, spec: object) -> bool:
        return isinstance(spec, str) and "://" in spec

    @classmethod
    def _exists(cls, spec: object) -> bool:
        spec, client, collection = connect(spec)
        try:
            return bool(client.has_collection(f"{collection}__meta"))
        finally:
            with contextlib.suppress(Exception):
                client.close()

    @classmethod
    def _open(cls, spec: object) -> MilvusGallery:
        spec, client, collection = connect(spec)
        try:
            names = set(client.list_collections())
            half = half_made(client, collection, names)
            if half is not None:
                raise SiamfaceError(half_made_message(spec, half))
            if f"{collection}__meta" not in names:
                if collection in names:
                    raise SiamfaceError(
                        f"Milvus collection {collection!r} at {spec} is not a siamface gallery "
                        f"(no {collection}__meta collection beside it)"
                    )
                raise SiamfaceError(
                    f"gallery not found: {spec} (create one with 'siamface gallery enroll "
                    f"{spec} --model MODEL IMAGES...')"
                )
            return cls(spec, client, collection)
        except BaseException:
            with contextlib.suppress(Exception):
                client.close()
            raise

    @classmethod
    def _create(cls, spec: object, settings: dict) -> MilvusGallery:
        spec, client, collection = connect(spec)
        try:
            create_collections(client, spec, collection, settings)
        except SiamfaceError:
            with contextlib.suppress(Exception):
                client.close()
            raise
        except Exception as err:
            with contextlib.suppress(Exception):
                client.close()
            raise SiamfaceError(
                f"cannot create Milvus gallery {spec}: {short_error(err)}"
            ) from None
        client.close()
        return cls._open(spec)

    def close(self) -> None:
        with self._lock, contextlib.suppress(Exception):
            self.client.close()

    # -- calls with retries ---------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One pymilvus call, retried with backoff on transient errors; any other failure
        becomes a SiamfaceError that says which call failed and why."""
        ours = (self.name, self.people_name, self.meta_name)
        attempt, reloaded = 0, False
        with self._lock:
            while True:
                try:
                    return fn(*args, **kwargs)
                except SiamfaceError:
                    raise
                except Exception as err:
                    if is_not_loaded(err) and not reloaded and args and args[0] in ours:
                        # released (by someone, or by a server restart that does not
                        # reload it): load it again and retry
                        reloaded = True
                        with contextlib.suppress(Exception):
                            self.client.load_collection(args[0])
                        continue
                    if attempt >= len(self.retry_delays) or not is_transient(err):
                        more = f" after {attempt + 1} tries" if attempt else ""
                        raise SiamfaceError(
                            f"Milvus {what} failed for gallery {self.location}{more}: "
                            f"{short_error(err)}"
                        ) from None
                    time.sleep(self.retry_delays[attempt])
                    attempt += 1

    def _get(self, collection: str, ids: Sequence[str], fields: list[str]) -> list[dict]:
        out: list[dict] = []
        for i in range(0, len(ids), READ_IDS):
            chunk = list(ids[i : i + READ_IDS])
            out += self._call("get", self.client.get, collection, ids=chunk, output_fields=fields)
        return out

    def _query_all(self, collection: str, filter: str, fields: list[str]) -> Iterator[dict]:
        """Every row matching ``filter``, in pages (pymilvus' query iterator: no limit on
        the total, unlike one query)."""
        it = self._call(
            "query",
            self.client.query_iterator,
            collection,
            batch_size=READ_IDS,
            filter=filter,
            output_fields=fields,
        )
        try:
            while rows := self._call("query", it.next):
                yield from rows
        finally:
            with contextlib.suppress(Exception):
                it.close()

    # -- settings -------------------------------------------------------------------------
    def _read_settings(self) -> dict:
        rows = self._call(
            "query",
            self.client.query,
            self.meta_name,
            filter='key != ""',
            output_fields=["key", "value"],
            limit=1000,
        )
        meta = settings_of(rows, self.location)
        self._meta = checked_settings(meta, self.location, self.index_kinds)
        return self._meta

    def _settings(self, fresh: bool = False) -> dict:
        """Settings are re-read when asked for fresh (threshold and aggregation, once per
        search: another process may have changed them; one primary-key query)."""
        with self._lock:
            if fresh or not self._meta:
                self._read_settings()
            return usable(self._meta)

    def _set_settings(self, **values: object) -> None:
        with self._lock:
            rows = [meta_row(k, v) for k, v in values.items()]
            self._call("upsert", self.client.upsert, self.meta_name, rows)
            self._bump_version()
            if "index_kind" in values or "index_params" in values:
                self._read_settings()
                self.rebuild_index()
            self._read_settings()

    def _bump_version(self) -> None:
        """Best-effort change counter for ``info()`` (no atomic increment in Milvus)."""
        v = int(self._read_settings()["version"]) + 1
        self._call("upsert", self.client.upsert, self.meta_name, [meta_row("version", v)])

    def rebuild_index(self) -> None:
        """Remove invisible leftovers (:meth:`vacuum`), then re-create the server's index on
        the vectors with the gallery's index kind."""
        s = self._settings(fresh=True)
        self.vacuum()
        c = self.client
        index = index_params(c, s["index_kind"], s["index_params"], "vector")
        self._call("release", c.release_collection, self.name)
        with contextlib.suppress(SiamfaceError):  # the first index has no name we know
            for name in self._call("list indexes", c.list_indexes, self.name):
                self._call("drop index", c.drop_index, self.name, name)
        self._call("create index", c.create_index, self.name, index)
        self._call("load", c.load_collection, self.name)

    def check(self) -> list[dict]:
        """Every stored vector that is not a finite unit vector of the gallery's size, with
        its person (read in pages: the whole collection once)."""
        rows = self._query_all(self.name, 'id != ""', CHECK_FIELDS)
        return damaged_vectors(rows, self.embedding_size)

    def repair(self, problems: list[dict], reembed=None) -> list[dict]:
        raise SiamfaceError(
            f"damaged vectors in Milvus gallery {self.location} are not repaired in place: "
            f"remove {', '.join(sorted({p['person'] for p in problems})[:5])!s} and enroll "
            "them again"
        )

    # -- reading --------------------------------------------------------------------------
    def _people_rows(self, names: Sequence[str], fields: list[str] | None = None) -> dict:
        fields = fields or ["name", "pid", "n_images", "created", "batches", "template", "metadata"]
        rows = self._get(self.people_name, list(dict.fromkeys(names)), fields)
        return {r["name"]: r for r in rows}

    def counts(self) -> tuple[int, int]:
        n = self._call(
            "count", self.client.query, self.people_name, filter="", output_fields=["count(*)"]
        )
        n_people = int(n[0]["count(*)"]) if n else 0
        if n_people == 0:
            return 0, 0
        n_images = sum(
            int(r["n_images"]) for r in self._query_all(self.people_name, "", ["n_images"])
        )
        return n_people, n_images

    def __len__(self) -> int:
        n = self._call(
            "count", self.client.query, self.people_name, filter="", output_fields=["count(*)"]
        )
        return int(n[0]["count(*)"]) if n else 0

    def people(self) -> list[PersonRecord]:
        rows = self._query_all(self.people_name, "", ["pid", "n_images", "metadata", "created"])
        return sorted((to_record(r) for r in rows), key=lambda p: p.name)

    def person(self, name: str) -> PersonRecord | None:
        if not isinstance(name, str):
            return None
        name = normal_name(name)
        row = self._people_rows([name]).get(name)
        return None if row is None else to_record(row)

    def existing(self, names: Sequence[str]) -> set[str]:
        return set(self._people_rows(list(names), ["name"]))

    def thumbnail(self, name: str) -> bytes | None:
        if not isinstance(name, str):
            return None
        name = normal_name(name)
        row = self._people_rows([name], ["name", "thumbnail"]).get(name)
        return base64.b64decode(row["thumbnail"]) if row and row["thumbnail"] else None

    def export(self, names: Sequence[str]) -> list[NewPerson]:
        rows = self._people_rows(list(names), ["name", "batches", "metadata", "thumbnail"])
        ids = {n: image_ids(rows[n]) for n in names}
        fields = ["id", "ref", "digest", "vector"]
        got = {v["id"]: v for v in self._get(self.name, [i for n in names for i in ids[n]], fields)}
        out = []
        for n in names:
            r = rows[n]
            if any(i not in got for i in ids[n]):
                raise SiamfaceError(f"{self.location}: vectors of {n!r} are missing")
            v = [got[i] for i in ids[n]]
            out.append(
                NewPerson(
                    n,
                    np.asarray([x["vector"] for x in v], np.float32).reshape(len(v), -1),
                    [x["ref"] or None for x in v],
                    [x["digest"] or None for x in v],
                    json_obj(r["metadata"]),
                    base64.b64decode(r["thumbnail"]) if r["thumbnail"] else None,
                )
            )
        return out

    def _digests_elsewhere(self, digests: Sequence[str], name: str) -> dict[str, str]:
        ds = sorted({d for d in digests if d})
        out: dict[str, str] = {}
        for i in range(0, len(ds), 200):
            cond = (
                f'unit != "person" and digest in [{", ".join(quote(d) for d in ds[i : i + 200])}]'
                f" and person != {quote(name)}"
            )
            rows = self._call(
                "query",
                self.client.query,
                self.name,
                filter=cond,
                output_fields=["digest", "person", "batch"],
                limit=MAX_LIMIT,
            )
            owners = self._people_rows([r["person"] for r in rows], ["name", "batches"])
            for r in rows:
                o = owners.get(r["person"])
                if o and r["batch"] in dict(batches_of(o)):
                    out[r["digest"]] = r["person"]
        return out

    def _backend_info(self) -> dict:
        s = self._meta
        return {
            "index": {
                "kind": s["index_kind"] if s["index_kind"] != "auto" else "flat",
                "server": self.location.split("://", 1)[-1].rsplit("/", 1)[0],
                "collection": self.name,
                "current": True,  # the server maintains its index
                "vectors": None,
                "version": s["version"],
            }
        }

    # -- writing --------------------------------------------------------------------------
    def _enroll(self, people: list[NewPerson], append: bool) -> list[PersonRecord]:
        names = [p.name for p in people]
        for p in people:
            if len(json.dumps(p.metadata)) > VARCHAR // 2:
                raise SiamfaceError(f"metadata of {p.name!r} is too large (at most ~32 KB)")
        with self._lock:
            old = self._people_rows(names)
            if old and not append:
                raise self._already_enrolled(set(old))
            now = time.time()
            vec_rows: list[dict] = []
            commits: list[dict] = []
            stale_templates: list[str] = []
            for p in people:
                prev = old.get(p.name)
                planned = person_rows(p, prev, now, self._image_vectors)
                if planned is None:  # the same images again: already committed
                    continue
                vec_rows += planned[0]
                commits.append(planned[1])
                if prev:
                    stale_templates.append(f"{prev['template']}:t")
            if appended := [c["name"] for c in commits if c["name"] in old]:
                have = self._people_rows(appended, ["name", "thumbnail"])
                for c in commits:  # the first face stays the person's picture
                    if c["name"] in have and have[c["name"]]["thumbnail"]:
                        c["thumbnail"] = have[c["name"]]["thumbnail"]
            for i in range(0, len(vec_rows), WRITE_ROWS):
                self._call("upsert", self.client.upsert, self.name, vec_rows[i : i + WRITE_ROWS])
                fault_point("enroll:mid-vectors")
            fault_point("enroll:before-commit")
            for i in range(0, len(commits), WRITE_ROWS):  # the commit: people become visible
                self._call(
                    "upsert", self.client.upsert, self.people_name, commits[i : i + WRITE_ROWS]
                )
            fault_point("enroll:after-commit")
            if commits:
                self._bump_version()
            self._cleanup(stale_templates, len(vec_rows))
            rows = self._people_rows(names)
            return [to_record(rows[n]) for n in names]

    def _image_vectors(self, row: dict) -> np.ndarray:
        ids = image_ids(row)
        got = {v["id"]: v["vector"] for v in self._get(self.name, ids, ["id", "vector"])}
        return np.asarray([got[i] for i in ids if i in got], np.float32)

    def _delete_ids(self, ids: Sequence[str]) -> None:
        for i in range(0, len(ids), READ_IDS):
            self._call("delete", self.client.delete, self.name, ids=list(ids[i : i + READ_IDS]))

    def _cleanup(self, stale_ids: Sequence[str], n_rows: int) -> None:
        """After a commit: drop replaced templates (by primary key: no scans). Best effort:
        a leftover is invisible to searches, and ``rebuild_index`` removes all of them.
        After a bulk write, flush: Milvus then seals the rows into indexed segments instead
        of brute-forcing a large growing segment on every search."""
        with contextlib.suppress(SiamfaceError):
            self._delete_ids(list(stale_ids))
            if n_rows >= FLUSH_ROWS:
                for c in (self.name, self.people_name):
                    self._call("flush", self.client.flush, c)

    def _remove(self, names: list[str]) -> None:
        with self._lock:
            rows = self._people_rows(names, ["name", "batches", "template"])
            missing = [n for n in names if n not in rows]
            if missing:
                raise self._not_enrolled(missing)
            self._call("delete", self.client.delete, self.people_name, ids=list(names))
            fault_point("remove:after-commit")  # from here on they are gone for searches
            self._bump_version()
            dead = [i for n in names for i in image_ids(rows[n])]
            dead += [f"{t}:t" for n in names for t, _ in batches_of(rows[n])]
            with contextlib.suppress(SiamfaceError):  # leftovers are invisible; see vacuum
                self._delete_ids(dead)

    def vacuum(self) -> int:
        """Delete every vector row no person row commits (left by writers that died before
        their commit, or by removals cut short); returns how many. Scans the collection."""
        with self._lock:
            rows = self._query_all(self.name, "", OWNER_FIELDS)
            dead = uncommitted(rows, lambda names: self._people_rows(names, ["name", "batches"]))
            self._delete_ids(dead)
            return len(dead)

    # -- searching ------------------------------------------------------------------------
    def _search(self, q: np.ndarray, top_k: int) -> list[list[Candidate]]:
        s = self._settings()  # aggregation was just read fresh by Gallery.search
        unit = "person" if s["aggregation"] == "mean" else "image"
        other = "image" if unit == "person" else "person"  # rows of "both" units count
        params = search_params(s["index_kind"], s["index_params"], top_k)
        want = min(top_k + 8 if unit == "person" else 4 * top_k + 16, MAX_LIMIT)
        out: list[list[Candidate] | None] = [None] * len(q)
        todo = list(range(len(q)))
        while todo:
            hits = self._call(
                "search",
                self.client.search,
                self.name,
                data=[q[i].tolist() for i in todo],
                limit=want,
                filter=f'unit != "{other}"',
                output_fields=["person", "batch"],
                search_params=params,
            )
            owners = self._people_rows(
                [h["entity"]["person"] for row in hits for h in row],
                ["name", "pid", "batches", "template", "metadata"],
            )
            again = []
            for i, row in zip(todo, hits, strict=True):
                ranked = rank_hits(row, owners, unit, top_k)
                # too few live people among the hits (stale rows, or "max" over images):
                # ask for more unless everything was returned already
                if len(ranked) < top_k and len(row) >= want and want < MAX_LIMIT:
                    again.append(i)
                else:
                    out[i] = ranked
            todo = again
            want = min(4 * want, MAX_LIMIT)
        return [r or [] for r in out]
