"""The Milvus gallery backend: people and vectors in a Milvus server, through pymilvus.

``--gallery milvus://HOST:PORT/COLLECTION`` (or ``http(s)://HOST:PORT/COLLECTION``; a token
for servers with authentication in ``$SIAMFACE_MILVUS_TOKEN``, ``user:password`` or an API
key). Milvus Standalone, Milvus Distributed, Zilliz Cloud and milvus-lite's own server speak
the same protocol; the tests run against milvus-lite's server, started by the tests.

Three collections make one gallery ``C``:

* ``C`` (vectors): one row per image (``unit = "image"``) and one mean template per person
  and enrollment batch (``unit = "person"``; a first enrollment of a single image is one
  row with ``unit = "both"``), with the owner's name, the batch token, the source ref and
  file digest. Both units are always stored, so switching aggregation rewrites nothing.
* ``C__people`` (one row per person, primary key = name): metadata, thumbnail, the batches
  that are *committed* for them (``[[token, n_images], ...]``) and their current template.
* ``C__meta``: the settings (model fingerprint, embedding size, threshold, aggregation...).
  (Milvus requires a vector field in every collection: the last two carry a 2-d dummy.)

Creating a gallery is recoverable: ``C__meta`` is created first, with a ``creating`` journal
row, then the other two collections and the settings, and the ``format`` row is written last.
A gallery without that row (or collections of siamface's shape without ``C__meta``, left by
older versions) is *half-made*: it is never opened as a gallery, its message names the way
out, and ``siamface gallery drop URL`` or ``siamface gallery check URL --repair`` remove it
(after confirmation).

Consistency without transactions (Milvus has none across rows): an enrollment first writes
all its vectors, tagged with a batch token derived from the person's name and image
content, then *commits* by upserting the person's row, which lists the token. A search only
counts a vector whose batch its owner's row lists (and only the template the row names), so
a person becomes visible at once, with all their vectors, and a writer killed before that
upsert leaves invisible vectors only. Re-running the same enrollment recomputes the same
token and primary keys, so it overwrites those leftovers instead of duplicating them
(idempotent, keyed by image content); the next write for that name deletes any that remain.
Removal deletes the person's row first (they vanish at once), then their vectors. Calls
that fail with a transient error (server unavailable, deadline exceeded) are retried with
backoff; every write is an upsert or delete by key, so a retried call is harmless.

Across several people, ``enroll_many`` is all-or-nothing only for problems found before
writing (names, vectors, duplicates); a crash in the middle leaves some of the people
enrolled completely and the others not at all (run it again: it is idempotent). Two writers
changing the *same* person at the same moment: the last commit wins (Milvus offers no
compare-and-set); different people can be enrolled from any number of places at once.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

from siamface.decide.open_set import Candidate
from siamface.errors import SiamfaceError
from siamface.gallery.faults import fault_point
from siamface.gallery.gallery import Gallery
from siamface.gallery.records import NewPerson, PersonRecord
from siamface.gallery.store import mean_template
from siamface.gallery.validation import checked_settings, usable
from siamface.names import MAX_NAME, normal_name

FORMAT = "siamface.gallery.milvus"
FORMAT_VERSION = 1
DEFAULT_PORT = 19530
TOKEN_ENV = "SIAMFACE_MILVUS_TOKEN"
#: Milvus index types a gallery can use (``set_index_kind``); ``auto`` = flat (exact).
INDEX_TYPES = {"flat": "FLAT", "hnsw": "HNSW", "ivf_flat": "IVF_FLAT"}
_DEFAULT_PARAMS = {"hnsw": {"M": 16, "efConstruction": 200}, "ivf_flat": {"nlist": 1024}}
_VARCHAR = 65535
_NAME_BYTES = 4 * MAX_NAME  # UTF-8
_REF_BYTES = 4096
_WRITE_ROWS = 2000  # rows per upsert call: ~4 MB at 512-d, far below gRPC's limits
_READ_IDS = 1000  # primary keys per get/query call
_FLUSH_ROWS = 10_000  # a write this large is flushed (sealed) at once
_MAX_LIMIT = 16384  # Milvus' largest top-k
#: pauses between retries of a call that failed with a transient error (~16 s in all: a
#: restarting Milvus proxy, a leader election)
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)
_COLLECTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")
T = TypeVar("T")


def parse_spec(spec: str) -> tuple[str, str]:
    """``milvus://HOST:PORT/COLLECTION`` -> (pymilvus URI, collection)."""
    parts = urlsplit(spec)
    scheme = "https" if parts.scheme.lower() == "https" else "http"
    collection = parts.path.strip("/")
    if not parts.hostname or not collection:
        raise SiamfaceError(f"a Milvus gallery is milvus://HOST:PORT/COLLECTION, got {spec!r}")
    if not _COLLECTION.match(collection):
        raise SiamfaceError(
            f"invalid Milvus collection name {collection!r}: letters, digits and underscores, "
            "starting with a letter or underscore"
        )
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise SiamfaceError(f"invalid port in {spec!r}") from None
    return f"{scheme}://{parts.hostname}:{port}", collection


def _quote(s: str) -> str:
    """A Milvus filter string literal (names may hold quotes and backslashes)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def person_id(name: str) -> int:
    """A stable 63-bit id for a name (the primary key is the name itself)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1


def batch_token(p: NewPerson) -> str:
    """Same person, same images -> same token (and so the same primary keys): retrying an
    enrollment overwrites its own leftovers instead of duplicating them."""
    h = hashlib.sha256(p.name.encode() + b"\0")
    digests = list(p.digests) or [None] * len(p.embeddings)
    for d, e in zip(digests, p.embeddings, strict=True):
        h.update(d.encode() if d else hashlib.sha256(np.asarray(e, "<f4").tobytes()).digest())
    return h.hexdigest()[:24]


def _transient(err: BaseException) -> bool:
    text = str(err).lower()
    code = getattr(err, "code", None)
    name = getattr(code, "name", "") if code is not None and not isinstance(code, int) else ""
    return (
        name in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")
        or "unavailable" in text
        or "fail connecting" in text
        or "deadline exceeded" in text
        or "connection refused" in text
        or "rate limit" in text
    )


def _not_loaded(err: BaseException) -> bool:
    text = str(err).lower()
    return "released" in text or "not loaded" in text or "call load()" in text


class MilvusGallery(Gallery):
    """A gallery in a Milvus server (see the module docstring for the layout and what
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
    def _connect(cls, spec: object) -> tuple[str, Any, str]:
        if not isinstance(spec, str):
            raise SiamfaceError(f"a Milvus gallery is a URL string, got {spec!r}")
        uri, collection = parse_spec(spec)
        # gRPC's C core logs keepalive renegotiations ("too_many_pings") on stderr
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise SiamfaceError(
                "Milvus galleries need pymilvus: pip install 'siamface[milvus]'"
            ) from None
        if not os.environ.get("SIAMFACE_MILVUS_DEBUG"):
            # pymilvus logs every failed RPC with a traceback; siamface reports (and
            # retries) them itself, in one line
            logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
        token = os.environ.get(TOKEN_ENV, "")
        last: BaseException | None = None
        for delay in (*RETRY_DELAYS[:2], None):
            try:
                return spec, MilvusClient(uri=uri, token=token, timeout=10), collection
            except Exception as err:  # pymilvus raises MilvusException, grpc errors, ...
                last = err
                if not _transient(err) or delay is None:
                    break
                time.sleep(delay)
        raise SiamfaceError(
            f"cannot reach the Milvus server at {uri} for gallery {spec} ({_short(last)}); "
            "is it running and reachable from here?"
        ) from None

    @classmethod
    def _exists(cls, spec: object) -> bool:
        spec, client, collection = cls._connect(spec)
        try:
            return bool(client.has_collection(f"{collection}__meta"))
        finally:
            with contextlib.suppress(Exception):
                client.close()

    @classmethod
    def _open(cls, spec: object) -> MilvusGallery:
        spec, client, collection = cls._connect(spec)
        try:
            names = set(client.list_collections())
            half = _half_made(client, collection, names)
            if half is not None:
                raise SiamfaceError(_half_made_message(spec, half))
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
        from pymilvus import DataType, MilvusClient

        spec, client, collection = cls._connect(spec)
        try:
            existing = set(client.list_collections())
            ours = [collection, f"{collection}__people", f"{collection}__meta"]
            if ours[2] in existing and client.query(ours[2], ids=["format"], output_fields=["key"]):
                raise SiamfaceError(f"{spec} already holds a gallery")
            half = _half_made(client, collection, existing)
            if half is not None:
                raise SiamfaceError(_half_made_message(spec, half))
            if collection in existing or ours[1] in existing:
                raise SiamfaceError(
                    f"Milvus collection {collection!r} at {spec} exists and is not a siamface "
                    "gallery; choose another collection name"
                )
            dim = int(settings["embedding_size"])
            vec = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            vec.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
            vec.add_field("person", DataType.VARCHAR, max_length=_NAME_BYTES)
            vec.add_field("batch", DataType.VARCHAR, max_length=32)
            vec.add_field("unit", DataType.VARCHAR, max_length=8)
            vec.add_field("ref", DataType.VARCHAR, max_length=_REF_BYTES)
            vec.add_field("digest", DataType.VARCHAR, max_length=128)
            vec.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
            people = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            people.add_field("name", DataType.VARCHAR, is_primary=True, max_length=_NAME_BYTES)
            people.add_field("pid", DataType.INT64)
            people.add_field("n_images", DataType.INT64)
            people.add_field("created", DataType.DOUBLE)
            people.add_field("batches", DataType.VARCHAR, max_length=_VARCHAR)
            people.add_field("template", DataType.VARCHAR, max_length=32)
            people.add_field("metadata", DataType.VARCHAR, max_length=_VARCHAR)
            people.add_field("thumbnail", DataType.VARCHAR, max_length=_VARCHAR)
            people.add_field("dummy", DataType.FLOAT_VECTOR, dim=2)
            meta = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            meta.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
            meta.add_field("value", DataType.VARCHAR, max_length=_VARCHAR)
            meta.add_field("dummy", DataType.FLOAT_VECTOR, dim=2)
            kind, params = settings["index_kind"], settings["index_params"]
            # The meta collection first, with a journal row: from here on, an interrupted
            # creation is recognised as half-made (see the module docstring).
            for c, schema, index in (
                (ours[2], meta, cls._index_params(client, "flat", {}, "dummy")),
                (ours[0], vec, cls._index_params(client, kind, params, "vector")),
                (ours[1], people, cls._index_params(client, "flat", {}, "dummy")),
            ):
                client.create_collection(
                    c, schema=schema, index_params=index, consistency_level="Strong"
                )
                if c == ours[2]:
                    client.upsert(ours[2], [_meta_row(CREATING, {"started": time.time()})])
                fault_point("create:collection")
            base = {"format_version": FORMAT_VERSION, "version": 0, "created": time.time()}
            rows = [_meta_row(k, v) for k, v in {**base, **settings}.items()]
            client.upsert(ours[2], rows)
            fault_point("create:before-marker")
            # written last: a gallery whose creation was interrupted never looks like one
            client.upsert(ours[2], [_meta_row("format", FORMAT)])
            client.delete(ours[2], ids=[CREATING])
        except SiamfaceError:
            with contextlib.suppress(Exception):
                client.close()
            raise
        except Exception as err:
            with contextlib.suppress(Exception):
                client.close()
            raise SiamfaceError(f"cannot create Milvus gallery {spec}: {_short(err)}") from None
        client.close()
        return cls._open(spec)

    @staticmethod
    def _index_params(client: Any, kind: str, params: dict, field: str) -> Any:
        kind = "flat" if kind == "auto" else kind
        params = {**_DEFAULT_PARAMS.get(kind, {}), **params}
        ip = client.prepare_index_params()
        ip.add_index(
            field_name=field,
            index_type=INDEX_TYPES[kind],
            metric_type="IP",
            params={k: v for k, v in params.items() if k not in ("ef", "nprobe")},
        )
        return ip

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
                    if _not_loaded(err) and not reloaded and args and args[0] in ours:
                        # released (by someone, or by a server restart that does not
                        # reload it): load it again and retry
                        reloaded = True
                        with contextlib.suppress(Exception):
                            self.client.load_collection(args[0])
                        continue
                    if attempt >= len(self.retry_delays) or not _transient(err):
                        more = f" after {attempt + 1} tries" if attempt else ""
                        raise SiamfaceError(
                            f"Milvus {what} failed for gallery {self.location}{more}: {_short(err)}"
                        ) from None
                    time.sleep(self.retry_delays[attempt])
                    attempt += 1

    def _get(self, collection: str, ids: Sequence[str], fields: list[str]) -> list[dict]:
        out: list[dict] = []
        for i in range(0, len(ids), _READ_IDS):
            chunk = list(ids[i : i + _READ_IDS])
            out += self._call("get", self.client.get, collection, ids=chunk, output_fields=fields)
        return out

    def _query_all(self, collection: str, filter: str, fields: list[str]) -> Iterator[dict]:
        """Every row matching ``filter``, in pages (pymilvus' query iterator: no limit on
        the total, unlike one query)."""
        it = self._call(
            "query",
            self.client.query_iterator,
            collection,
            batch_size=_READ_IDS,
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
        meta = {}
        for r in rows:
            try:
                meta[r["key"]] = json.loads(r["value"])
            except (TypeError, ValueError):
                if r["key"] in ("threshold", "aggregation", "index_kind", "index_params"):
                    meta[r["key"]] = r["value"]  # reported (and repairable) when used
                    continue
                raise SiamfaceError(
                    f"gallery {self.location} has an unreadable setting {r['key']!r} "
                    f"= {r['value']!r} (not JSON); restore it or fix it with 'siamface gallery set'"
                ) from None
        if meta.get("format") != FORMAT:
            raise SiamfaceError(
                _half_made_message(self.location, "no 'format' record: creation interrupted")
            )
        fv = meta.get("format_version", 0)
        if not isinstance(fv, int) or fv > FORMAT_VERSION:
            raise SiamfaceError(
                f"{self.location} was written by a newer siamface (format {fv!r}); upgrade"
            )
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
            rows = [_meta_row(k, v) for k, v in values.items()]
            self._call("upsert", self.client.upsert, self.meta_name, rows)
            self._bump_version()
            if "index_kind" in values or "index_params" in values:
                self._read_settings()
                self.rebuild_index()
            self._read_settings()

    def _bump_version(self) -> None:
        """Best-effort change counter for ``info()`` (no atomic increment in Milvus)."""
        v = int(self._read_settings()["version"]) + 1
        self._call("upsert", self.client.upsert, self.meta_name, [_meta_row("version", v)])

    def rebuild_index(self) -> None:
        """Remove invisible leftovers (:meth:`vacuum`), then re-create the server's index on
        the vectors with the gallery's index kind."""
        s = self._settings(fresh=True)
        self.vacuum()
        c = self.client
        index = self._index_params(c, s["index_kind"], s["index_params"], "vector")
        self._call("release", c.release_collection, self.name)
        with contextlib.suppress(SiamfaceError):  # the first index has no name we know
            for name in self._call("list indexes", c.list_indexes, self.name):
                self._call("drop index", c.drop_index, self.name, name)
        self._call("create index", c.create_index, self.name, index)
        self._call("load", c.load_collection, self.name)

    def check(self) -> list[dict]:
        """Every stored vector that is not a finite unit vector of the gallery's size, with
        its person (read in pages: the whole collection once)."""
        from siamface.gallery.store import vector_problems

        dim = self.embedding_size
        found: list[dict] = []
        fields = ["id", "person", "unit", "ref", "vector"]
        page: list[dict] = []

        def flush() -> None:
            blobs = [np.asarray(r["vector"], dtype="<f4").tobytes() for r in page]
            for k, why in vector_problems(blobs, dim).items():
                r = page[k]
                kind = "image" if r["unit"] in ("image", "both") else "template"
                found.append(
                    {
                        "person": r["person"],
                        "person_id": person_id(r["person"]),
                        "kind": kind,
                        "id": r["id"],
                        "ref": r["ref"] or None,
                        "problem": why,
                    }
                )
            page.clear()

        for row in self._query_all(self.name, 'id != ""', fields):
            page.append(row)
            if len(page) >= _READ_IDS:
                flush()
        flush()
        return found

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
        return sorted((_record(r) for r in rows), key=lambda p: p.name)

    def person(self, name: str) -> PersonRecord | None:
        if not isinstance(name, str):
            return None
        name = normal_name(name)
        row = self._people_rows([name]).get(name)
        return None if row is None else _record(row)

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
        ids = {n: _image_ids(rows[n]) for n in names}
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
                    _json_obj(r["metadata"]),
                    base64.b64decode(r["thumbnail"]) if r["thumbnail"] else None,
                )
            )
        return out

    def _digests_elsewhere(self, digests: Sequence[str], name: str) -> dict[str, str]:
        ds = sorted({d for d in digests if d})
        out: dict[str, str] = {}
        for i in range(0, len(ds), 200):
            cond = (
                f'unit != "person" and digest in [{", ".join(_quote(d) for d in ds[i : i + 200])}]'
                f" and person != {_quote(name)}"
            )
            rows = self._call(
                "query",
                self.client.query,
                self.name,
                filter=cond,
                output_fields=["digest", "person", "batch"],
                limit=_MAX_LIMIT,
            )
            owners = self._people_rows([r["person"] for r in rows], ["name", "batches"])
            for r in rows:
                o = owners.get(r["person"])
                if o and r["batch"] in dict(_batches(o)):
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
            if len(json.dumps(p.metadata)) > _VARCHAR // 2:
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
                token = batch_token(p)
                prev = old.get(p.name)
                batches = _batches(prev) if prev else []
                if token in dict(batches):  # the same images again: already committed
                    continue
                all_emb = p.embeddings
                if prev:
                    all_emb = np.concatenate([self._image_vectors(prev), p.embeddings])
                    stale_templates.append(f"{prev['template']}:t")
                tmpl = all_emb[0] if len(all_emb) == 1 else mean_template(all_emb)
                refs = list(p.refs) or [None] * len(p.embeddings)
                digests = list(p.digests) or [None] * len(p.embeddings)
                # a first enrollment of one image is its own template: one row for both
                # units (searches filter on unit != "image" / != "person")
                single = len(all_emb) == 1
                for j, (e, r, d) in enumerate(zip(p.embeddings, refs, digests, strict=True)):
                    kind = "both" if single else "image"
                    vec_rows.append(_vec_row(f"{token}:{j}", p.name, token, kind, e, r, d))
                if not single:
                    vec_rows.append(
                        _vec_row(f"{token}:t", p.name, token, "person", tmpl, None, None)
                    )
                thumb = base64.b64encode(p.thumbnail).decode() if p.thumbnail else ""
                meta = {**_json_obj(prev["metadata"]), **p.metadata} if prev else p.metadata
                commits.append(
                    {
                        "name": p.name,
                        "pid": person_id(p.name),
                        "n_images": len(all_emb),
                        "created": float(prev["created"]) if prev else now,
                        "batches": json.dumps([*batches, [token, len(p.embeddings)]]),
                        "template": token,
                        "metadata": json.dumps(meta),
                        "thumbnail": thumb,
                        "dummy": [0.0, 0.0],
                    }
                )
            if appended := [c["name"] for c in commits if c["name"] in old]:
                have = self._people_rows(appended, ["name", "thumbnail"])
                for c in commits:  # the first face stays the person's picture
                    if c["name"] in have and have[c["name"]]["thumbnail"]:
                        c["thumbnail"] = have[c["name"]]["thumbnail"]
            for i in range(0, len(vec_rows), _WRITE_ROWS):
                self._call("upsert", self.client.upsert, self.name, vec_rows[i : i + _WRITE_ROWS])
                fault_point("enroll:mid-vectors")
            fault_point("enroll:before-commit")
            for i in range(0, len(commits), _WRITE_ROWS):  # the commit: people become visible
                self._call(
                    "upsert", self.client.upsert, self.people_name, commits[i : i + _WRITE_ROWS]
                )
            fault_point("enroll:after-commit")
            if commits:
                self._bump_version()
            self._cleanup(stale_templates, len(vec_rows))
            rows = self._people_rows(names)
            return [_record(rows[n]) for n in names]

    def _image_vectors(self, row: dict) -> np.ndarray:
        ids = _image_ids(row)
        got = {v["id"]: v["vector"] for v in self._get(self.name, ids, ["id", "vector"])}
        return np.asarray([got[i] for i in ids if i in got], np.float32)

    def _delete_ids(self, ids: Sequence[str]) -> None:
        for i in range(0, len(ids), _READ_IDS):
            self._call("delete", self.client.delete, self.name, ids=list(ids[i : i + _READ_IDS]))

    def _cleanup(self, stale_ids: Sequence[str], n_rows: int) -> None:
        """After a commit: drop replaced templates (by primary key: no scans). Best effort:
        a leftover is invisible to searches, and ``rebuild_index`` removes all of them.
        After a bulk write, flush: Milvus then seals the rows into indexed segments instead
        of brute-forcing a large growing segment on every search."""
        with contextlib.suppress(SiamfaceError):
            self._delete_ids(list(stale_ids))
            if n_rows >= _FLUSH_ROWS:
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
            dead = [i for n in names for i in _image_ids(rows[n])]
            dead += [f"{t}:t" for n in names for t, _ in _batches(rows[n])]
            with contextlib.suppress(SiamfaceError):  # leftovers are invisible; see vacuum
                self._delete_ids(dead)

    def vacuum(self) -> int:
        """Delete every vector row no person row commits (left by writers that died before
        their commit, or by removals cut short); returns how many. Scans the collection."""
        with self._lock:
            dead: list[str] = []
            pending: list[dict] = []

            def settle() -> None:
                owners = self._people_rows([r["person"] for r in pending], ["name", "batches"])
                live = {n: {t for t, _ in _batches(o)} for n, o in owners.items()}
                dead.extend(r["id"] for r in pending if r["batch"] not in live.get(r["person"], ()))
                pending.clear()

            for r in self._query_all(self.name, "", ["id", "person", "batch"]):
                pending.append(r)
                if len(pending) >= _READ_IDS:
                    settle()
            settle()
            self._delete_ids(dead)
            return len(dead)

    # -- searching ------------------------------------------------------------------------
    def _search(self, q: np.ndarray, top_k: int) -> list[list[Candidate]]:
        s = self._settings()  # aggregation was just read fresh by Gallery.search
        unit = "person" if s["aggregation"] == "mean" else "image"
        other = "image" if unit == "person" else "person"  # rows of "both" units count
        kind = s["index_kind"]
        params: dict = {"metric_type": "IP"}
        if kind == "hnsw":
            params["params"] = {"ef": max(int(s["index_params"].get("ef", 128)), 4 * top_k)}
        elif kind == "ivf_flat":
            params["params"] = {"nprobe": int(s["index_params"].get("nprobe", 32))}
        want = min(top_k + 8 if unit == "person" else 4 * top_k + 16, _MAX_LIMIT)
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
                ranked = _rank(row, owners, unit, top_k)
                # too few live people among the hits (stale rows, or "max" over images):
                # ask for more unless everything was returned already
                if len(ranked) < top_k and len(row) >= want and want < _MAX_LIMIT:
                    again.append(i)
                else:
                    out[i] = ranked
            todo = again
            want = min(4 * want, _MAX_LIMIT)
        return [r or [] for r in out]


# -- rows ---------------------------------------------------------------------------------
#: Journal row of a creation in progress (deleted when the ``format`` row is written).
CREATING = "creating"
_VECTOR_FIELDS = {"id", "person", "batch", "unit", "ref", "digest", "vector"}
_PEOPLE_FIELDS = {"name", "pid", "n_images", "created", "batches", "template", "metadata"}


def _fields(client: Any, collection: str) -> set[str]:
    try:
        return {f["name"] for f in client.describe_collection(collection)["fields"]}
    except Exception:  # noqa: BLE001 - an unreadable description: not ours to judge
        return set()


def _half_made(client: Any, collection: str, names: set[str]) -> str | None:
    """Why the collections named ``collection*`` are a half-made siamface gallery, or None
    (complete, absent, or made by something else)."""
    meta = f"{collection}__meta"
    if meta in names:
        rows = client.query(meta, ids=["format", CREATING], output_fields=["key", "value"])
        keys = {r["key"] for r in rows}
        if "format" in keys:
            return None
        return "its creation was interrupted (no 'format' record)"
    parts = []
    if collection in names and _fields(client, collection) >= _VECTOR_FIELDS:
        parts.append(collection)
    people = f"{collection}__people"
    if people in names and _fields(client, people) >= _PEOPLE_FIELDS:
        parts.append(people)
    if parts:
        return f"its creation was interrupted ({' and '.join(parts)} without {meta})"
    return None


def _half_made_message(spec: str, why: str) -> str:
    return (
        f"{spec} is a half-made gallery: {why}; remove the leftovers with "
        f"'siamface gallery drop {spec}' (or 'siamface gallery check {spec} --repair'), "
        "then enroll again"
    )


def milvus_state(spec: str) -> tuple[str, str | None]:
    """(``"complete"``, ``"half-made"``, ``"foreign"`` or ``"absent"``, detail) of the
    collections behind ``spec``, read without opening them as a gallery."""
    spec, client, collection = MilvusGallery._connect(spec)
    try:
        names = set(client.list_collections())
        half = _half_made(client, collection, names)
        if half is not None:
            return "half-made", half
        if f"{collection}__meta" in names:
            return "complete", None
        if collection in names or f"{collection}__people" in names:
            return "foreign", f"collection {collection!r} was not made by siamface"
        return "absent", None
    finally:
        with contextlib.suppress(Exception):
            client.close()


def drop_milvus_gallery(spec: str, allow_complete: bool) -> list[str]:
    """Drop a gallery's collections (a half-made one, or a complete one when
    ``allow_complete``); never a collection siamface did not make. Returns what was dropped."""
    state, detail = milvus_state(spec)
    if state == "absent":
        raise SiamfaceError(f"gallery not found: {spec}; nothing dropped")
    if state == "foreign":
        raise SiamfaceError(f"{spec}: {detail}; nothing dropped")
    if state == "complete" and not allow_complete:
        raise SiamfaceError(f"{spec} is a complete gallery; nothing dropped")
    spec, client, collection = MilvusGallery._connect(spec)
    try:
        names = set(client.list_collections())
        dropped = []
        for c in (collection, f"{collection}__people", f"{collection}__meta"):  # meta last
            if c in names:
                client.drop_collection(c)
                dropped.append(c)
        return dropped
    except Exception as err:  # noqa: BLE001 - pymilvus raises many types
        raise SiamfaceError(f"cannot drop Milvus gallery {spec}: {_short(err)}") from None
    finally:
        with contextlib.suppress(Exception):
            client.close()


def _meta_row(key: str, value: object) -> dict:
    return {"key": key, "value": json.dumps(value), "dummy": [0.0, 0.0]}


def _vec_row(
    rid: str, name: str, token: str, unit: str, v: np.ndarray, ref: str | None, digest: str | None
) -> dict:
    ref = (ref or "")[: _REF_BYTES // 4]  # provenance only: a very long path is cut
    return {
        "id": rid,
        "person": name,
        "batch": token,
        "unit": unit,
        "ref": ref,
        "digest": digest or "",
        "vector": np.asarray(v, np.float32).tolist(),
    }


def _batches(row: dict) -> list[tuple[str, int]]:
    try:
        return [(str(t), int(n)) for t, n in json.loads(row["batches"])]
    except (TypeError, ValueError, KeyError):
        return []


def _image_ids(row: dict) -> list[str]:
    return [f"{t}:{j}" for t, n in _batches(row) for j in range(n)]


def _json_obj(text: object) -> dict:
    try:
        v = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return {"_unreadable": str(text)[:200]}
    return v if isinstance(v, dict) else {"_unreadable": str(text)[:200]}


def _record(r: dict) -> PersonRecord:
    return PersonRecord(
        int(r["pid"]),
        r["name"],
        int(r["n_images"]),
        _json_obj(r["metadata"]),
        float(r["created"]),
    )


def _rank(hits: list[dict], owners: dict, unit: str, top_k: int) -> list[Candidate]:
    """Committed hits only (see the module docstring), best score per person."""
    best: dict[str, float] = {}
    live: dict[str, set[str]] = {}
    for h in hits:
        name, token = h["entity"]["person"], h["entity"]["batch"]
        o = owners.get(name)
        if o is None:  # removed, or never committed
            continue
        if name not in live:
            live[name] = {o["template"]} if unit == "person" else {t for t, _ in _batches(o)}
        if token in live[name] and h["distance"] > best.get(name, -math.inf):
            best[name] = float(h["distance"])
    ranked = sorted(best.items(), key=lambda t: (-t[1], t[0]))[:top_k]
    return [
        Candidate(int(owners[n]["pid"]), n, s, _json_obj(owners[n]["metadata"])) for n, s in ranked
    ]


def _short(err: BaseException | None) -> str:
    text = getattr(err, "message", None) or str(err)
    text = " ".join(str(text).split())
    return text[:300]
