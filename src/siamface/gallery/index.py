"""Vector indexes behind one small interface, and the rule that picks one by gallery size.

Every index returns accurate cosine scores, whatever it compresses: compressed kinds
(``refine = True``) fetch a few dozen candidates from their codes and re-score them with a
float16 copy of the vectors kept in memory (error below 1e-3, typically ~1e-5). That copy is
what makes a compressed index usable for open-set decisions (quantised scores are far off
the true similarity), and keeping it in memory rather than re-reading the database keeps a
search off the disk (re-scoring 32 candidates from a cold 2.4 GB SQLite file cost ~5 ms).

Measured with ``bench/gallery_scale.py`` (512-d, templates uniform on the sphere, probes at
genuine cosine ~0.6; see docs/gallery.md):

* ``flat`` (faiss ``IndexFlatIP``) is exact; its cost grows linearly with the gallery, so it
  is used up to :data:`EXACT_MAX` vectors.
* ``pqfs`` (faiss 4-bit fast-scan product quantisation: a SIMD scan over 32-byte codes, then
  float16 re-scoring) finds the probe's own identity in the top 5 for every probe at 1M
  vectors in a few milliseconds, with about half the memory of the raw float32 vectors. It is
  the automatic choice above :data:`EXACT_MAX`.
* ``ivfpqfs`` (inverted lists + fast-scan PQ), ``hnsw`` (hnswlib) and ``usearch`` (HNSW
  with int8 vectors) are kept for measurement: cluster and graph indexes need neighbourhoods
  that uniformly spread templates do not have, and lost many probes there. Real embeddings
  may cluster more; ``bench/gallery_scale.py --compare`` measures them again.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np

from siamface.errors import SiamfaceError

#: Galleries with at most this many vectors use exact search (no training, exact ranking).
#: Exact search costs ~1 ms at 20k x 512-d on an idle core but ~40 ms at 100k on the busy
#: 2-core machine it was measured on, while ``pqfs`` stayed under 1 ms at 100k.
EXACT_MAX = 20_000
#: Kind chosen above EXACT_MAX.
LARGE_KIND = "pqfs"
#: A trained (quantised) index is retrained when the gallery has grown this much since.
RETRAIN_GROWTH = 2.0

_MAGIC = b"SIAMFACE-GALLERY-INDEX\n"
#: Below this many queries faiss searches on one thread (see :func:`faiss_threads`).
SMALL_BATCH = 16


@contextlib.contextmanager
def faiss_threads(n: int | None) -> Iterator[None]:
    """Run faiss with ``n`` OpenMP threads inside the block (None: leave as is).

    A single probe gains little from threads, and on a busy or shared CPU OpenMP's
    spin-waiting made one-vector searches 5-10x slower (measured: exact search over 20k
    vectors, p50 44 ms on 2 threads vs 5 ms on 1, while other jobs ran). Batches still use
    every core. The setting is per calling thread, so concurrent searches do not interfere.
    """
    if n is None:
        yield
        return
    import faiss

    prev = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(prev)


def choose_kind(n_vectors: int) -> str:
    """The automatic index choice for a gallery of ``n_vectors`` vectors."""
    return "flat" if n_vectors <= EXACT_MAX else LARGE_KIND


class Float16Store:
    """Vectors as float16 by id, for re-scoring candidates: half the memory of float32 and
    dot products within ~1e-5 of exact for unit vectors. Ids are kept sorted (the gallery's
    ids only grow), removals are tombstones dropped when the store is saved."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self.ids = np.zeros(0, np.int64)
        self.vecs = np.zeros((0, dim), np.float16)
        self.alive = np.zeros(0, bool)

    def __len__(self) -> int:
        return int(self.alive[: self.n].sum())

    def _grow(self, need: int) -> None:
        if need <= len(self.ids):
            return
        cap = max(need, 2 * len(self.ids), 1024)
        ids, vecs, alive = (
            np.zeros(cap, np.int64),
            np.zeros((cap, self.dim), np.float16),
            np.zeros(cap, bool),
        )
        ids[: self.n], vecs[: self.n], alive[: self.n] = (
            self.ids[: self.n],
            self.vecs[: self.n],
            self.alive[: self.n],
        )
        self.ids, self.vecs, self.alive = ids, vecs, alive

    def _find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(self.ids[: self.n], ids)
        ok = pos < self.n
        ok[ok] = self.ids[pos[ok]] == ids[ok]
        return pos, ok

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        vecs = np.asarray(vecs)
        pos, known = self._find(ids)
        if known.any():  # re-added id (a person's template after --append): overwrite
            self.vecs[pos[known]] = vecs[known]
            self.alive[pos[known]] = True
            ids, vecs = ids[~known], vecs[~known]
        if not len(ids):
            return
        order = np.argsort(ids, kind="stable")
        ids, vecs = ids[order], vecs[order]
        if self.n and ids[0] <= self.ids[self.n - 1]:  # out of order: merge (rare)
            all_ids = np.concatenate([self.ids[: self.n], ids])
            all_vecs = np.concatenate([self.vecs[: self.n], vecs.astype(np.float16)])
            all_alive = np.concatenate([self.alive[: self.n], np.ones(len(ids), bool)])
            o = np.argsort(all_ids, kind="stable")
            self.ids, self.vecs, self.alive, self.n = all_ids[o], all_vecs[o], all_alive[o], len(o)
            return
        self._grow(self.n + len(ids))
        end = self.n + len(ids)
        self.ids[self.n : end], self.vecs[self.n : end], self.alive[self.n : end] = ids, vecs, True
        self.n = end

    def remove(self, ids: np.ndarray) -> None:
        pos, ok = self._find(np.asarray(ids, np.int64))
        self.alive[pos[ok]] = False

    def rescore(
        self, queries: np.ndarray, cand: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Re-score candidate ids (n, c) of each query; best ``k`` first, -1 where missing."""
        n = len(queries)
        pos, ok = self._find(cand.ravel())
        ok &= cand.ravel() >= 0
        ok[ok] = self.alive[pos[ok]]
        pos, ok = pos.reshape(cand.shape), ok.reshape(cand.shape)
        vec = self.vecs[np.where(ok, pos, 0)].astype(np.float32)  # (n, c, d)
        scores = np.einsum("ncd,nd->nc", vec, queries.astype(np.float32))
        scores[~ok] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top_s = np.take_along_axis(scores, order, 1)
        top_i = np.where(np.isfinite(top_s), np.take_along_axis(cand, order, 1), -1)
        if top_s.shape[1] < k:  # fewer candidates than k
            pad = k - top_s.shape[1]
            top_s = np.pad(top_s, ((0, 0), (0, pad)), constant_values=-np.inf)
            top_i = np.pad(top_i, ((0, 0), (0, pad)), constant_values=-1)
        return top_s.astype(np.float32).reshape(n, k), top_i.astype(np.int64).reshape(n, k)

    def chunks(self) -> list:
        """The serialised store as buffers to write one after the other (no 1 GB copies)."""
        keep = self.alive[: self.n]
        if keep.all():
            ids, vecs = self.ids[: self.n], self.vecs[: self.n]
        else:  # drop tombstones
            ids, vecs = self.ids[: self.n][keep], self.vecs[: self.n][keep]
        ids = np.ascontiguousarray(ids, dtype="<i8")
        vecs = np.ascontiguousarray(vecs, dtype="<f2")
        return [struct.pack("<Q", len(ids)), ids.data.cast("B"), vecs.reshape(-1).data.cast("B")]

    def to_bytes(self) -> bytes:
        return b"".join(self.chunks())

    @classmethod
    def from_bytes(cls, dim: int, data: memoryview) -> Float16Store:
        """Restore; shares memory with ``data`` when it is writable (a bytearray)."""
        (n,) = struct.unpack("<Q", data[:8])
        if len(data) != 8 + n * 8 + n * dim * 2:
            raise ValueError("damaged float16 store")
        st = cls(dim)
        st.ids = np.frombuffer(data, "<i8", n, 8).astype(np.int64)
        vecs = np.frombuffer(data, "<f2", n * dim, 8 + 8 * n).reshape(n, dim)
        st.vecs = vecs if vecs.flags.writeable else vecs.copy()
        st.alive, st.n = np.ones(n, bool), n
        return st


class VectorIndex(ABC):
    """Inner-product search over unit vectors with stable int64 ids and accurate scores.

    Subclasses implement the ``_`` methods; kinds with ``refine = True`` get a
    :class:`Float16Store` that re-scores their candidates.
    """

    kind: ClassVar[str]
    refine: ClassVar[bool] = False

    def __init__(self, dim: int, **params) -> None:
        self.dim = dim
        self.params = dict(params)
        if self.refine:
            self.params.setdefault("candidates", 32)
        self.trained_on = 0  # vectors in the gallery when the quantiser was trained
        self.store = Float16Store(dim) if self.refine else None

    @property
    def needs_training(self) -> bool:
        return False

    def train(self, sample: np.ndarray, n_total: int) -> None:  # noqa: B027 - optional hook
        """Fit quantisers on a sample (only for kinds that need it)."""

    @property
    @abstractmethod
    def ntotal(self) -> int: ...

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if len(ids):
            self._add(np.asarray(ids, np.int64), np.ascontiguousarray(vecs, dtype=np.float32))
            if self.store is not None:
                self.store.add(ids, vecs)

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            self._remove(np.asarray(ids, np.int64))
            if self.store is not None:
                self.store.remove(ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n, k), best first; missing slots have id -1 and -inf."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if self.ntotal == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        if self.store is None:
            return self._search(q, k)
        _, cand = self._search(q, max(4 * k, int(self.params["candidates"])))
        return self.store.rescore(q, cand, k)

    def chunks(self) -> list:
        """The serialised index as buffers to write one after the other."""
        body = self._to_bytes()
        extra = self.store.chunks() if self.store is not None else []
        return [struct.pack("<Q", len(body)), body, *extra]

    def to_bytes(self) -> bytes:
        return b"".join(self.chunks())

    @classmethod
    def from_bytes(cls, dim: int, params: dict, data: bytes | bytearray) -> VectorIndex:
        view = memoryview(data)
        (n,) = struct.unpack("<Q", view[:8])
        if 8 + n > len(view):
            raise ValueError("index data is truncated")
        obj = cls.__new__(cls)
        VectorIndex.__init__(obj, dim, **params)
        obj._load(view[8 : 8 + n])
        if cls.refine:
            obj.store = Float16Store.from_bytes(dim, view[8 + n :])
        return obj

    # -- what a backend implements -----------------------------------------------------
    @abstractmethod
    def _add(self, ids: np.ndarray, vecs: np.ndarray) -> None: ...

    @abstractmethod
    def _remove(self, ids: np.ndarray) -> None: ...

    @abstractmethod
    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def _to_bytes(self) -> bytes: ...

    @abstractmethod
    def _load(self, data: memoryview) -> None:
        """Restore the backend from :meth:`_to_bytes` output (``__init__`` was skipped)."""


# -- faiss ------------------------------------------------------------------------------
class _FaissIndex(VectorIndex):
    def __init__(self, dim: int, **params) -> None:
        super().__init__(dim, **params)
        self.index = self._make()

    def _make(self):
        raise NotImplementedError

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def needs_training(self) -> bool:
        return not self.index.is_trained

    def train(self, sample: np.ndarray, n_total: int) -> None:
        self.index.train(np.ascontiguousarray(sample, dtype=np.float32))
        self.trained_on = n_total
        self._configure()

    def _add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        self.index.add_with_ids(vecs, ids)

    def _remove(self, ids: np.ndarray) -> None:
        self.index.remove_ids(ids)

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with faiss_threads(1 if len(q) < SMALL_BATCH else None):
            return self.index.search(q, k)

    def _to_bytes(self) -> bytes:
        import faiss

        return faiss.serialize_index(self.index).tobytes()

    def _load(self, data: memoryview) -> None:
        import faiss

        self.index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        self._configure()

    def _configure(self) -> None:
        """Re-apply search-time parameters after training or loading."""


class FlatIndex(_FaissIndex):
    """Exact inner-product search (faiss ``IndexFlatIP``): the right answer for small galleries."""

    kind = "flat"

    def _make(self):
        import faiss

        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))


class PQFastScanIndex(_FaissIndex):
    """4-bit product quantisation scanned with SIMD lookup tables (faiss ``PQ{m}x4fs``).

    ``m`` sub-quantisers of 4 bits: m/2 bytes a vector (32 B for m=64 against 2 KB raw at
    512-d). Every code is scanned, so there is no clustering assumption that can miss a probe.
    """

    kind = "pqfs"
    refine = True

    def _make(self):
        import faiss

        m = int(self.params.setdefault("m", _default_m(self.dim)))
        if self.dim % m:
            raise SiamfaceError(f"pqfs: {m} sub-quantisers do not divide dimension {self.dim}")
        return faiss.IndexIDMap2(faiss.IndexPQFastScan(self.dim, m, 4, faiss.METRIC_INNER_PRODUCT))


class IVFPQFastScanIndex(_FaissIndex):
    """Inverted lists over fast-scan PQ codes (faiss ``IVF{nlist},PQ{m}x4fs``)."""

    kind = "ivfpqfs"
    refine = True

    def _make(self):
        import faiss

        m = int(self.params.setdefault("m", _default_m(self.dim)))
        nlist = int(self.params.setdefault("nlist", 1024))
        self.params.setdefault("nprobe", 32)
        return faiss.index_factory(self.dim, f"IVF{nlist},PQ{m}x4fs", faiss.METRIC_INNER_PRODUCT)

    def _configure(self) -> None:
        import faiss

        faiss.extract_index_ivf(self.index).nprobe = int(self.params.get("nprobe", 32))


def _default_m(dim: int) -> int:
    for m in (dim // 8, dim // 4, dim // 2, dim):
        if m >= 1 and dim % m == 0:
            return m
    return dim


# -- graph indexes (for measurement; see the module docstring) ---------------------------
class HnswlibIndex(VectorIndex):
    """HNSW graph from hnswlib (float32 vectors, so its scores are exact; removals are
    marked deleted until the next rebuild)."""

    kind = "hnsw"

    def __init__(self, dim: int, **params) -> None:
        super().__init__(dim, **params)
        self.params.setdefault("M", 16)
        self.params.setdefault("ef_construction", 100)
        self.params.setdefault("ef", 128)
        self.deleted: set[int] = set()
        self.index = self._new(1024)

    def _new(self, capacity: int):
        import hnswlib

        idx = hnswlib.Index(space="ip", dim=self.dim)
        idx.init_index(
            max_elements=capacity,
            M=int(self.params["M"]),
            ef_construction=int(self.params["ef_construction"]),
        )
        idx.set_ef(int(self.params["ef"]))
        return idx

    @property
    def ntotal(self) -> int:
        return int(self.index.element_count) - len(self.deleted)

    def _add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        need = self.index.element_count + len(ids)
        if need > self.index.get_max_elements():
            self.index.resize_index(max(need, 2 * self.index.get_max_elements()))
        self.index.add_items(vecs, ids)

    def _remove(self, ids: np.ndarray) -> None:
        for i in ids.tolist():
            self.index.mark_deleted(i)
            self.deleted.add(i)

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        kk = min(k, self.ntotal)
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        if kk > 0:
            self.index.set_ef(max(int(self.params["ef"]), kk))
            labels, dist = self.index.knn_query(q, k=kk)
            ids[:, :kk], scores[:, :kk] = labels, 1.0 - dist
        return scores, ids

    def _to_bytes(self) -> bytes:
        dead = np.array(sorted(self.deleted), dtype="<i8")
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "hnsw.bin")
            self.index.save_index(p)
            return struct.pack("<Q", len(dead)) + dead.tobytes() + Path(p).read_bytes()

    def _load(self, data: memoryview) -> None:
        import hnswlib

        (n_dead,) = struct.unpack("<Q", data[:8])
        self.deleted = set(np.frombuffer(data, "<i8", n_dead, 8).tolist())
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "hnsw.bin")
            Path(p).write_bytes(data[8 + 8 * n_dead :])
            self.index = hnswlib.Index(space="ip", dim=self.dim)
            self.index.load_index(p)
        self.index.set_ef(int(self.params.get("ef", 128)))


class USearchIndex(VectorIndex):
    """HNSW graph from usearch over int8 vectors, candidates re-scored in float16."""

    kind = "usearch"
    refine = True

    def __init__(self, dim: int, **params) -> None:
        super().__init__(dim, **params)
        self.params.setdefault("dtype", "i8")
        self.params.setdefault("connectivity", 16)
        self.params.setdefault("expansion_search", 128)
        self.index = self._new()

    def _new(self):
        from usearch.index import Index

        return Index(
            ndim=self.dim,
            metric="cos",
            dtype=self.params["dtype"],
            connectivity=int(self.params["connectivity"]),
            expansion_search=int(self.params["expansion_search"]),
        )

    @property
    def ntotal(self) -> int:
        return len(self.index)

    def _add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        self.index.add(ids, vecs)

    def _remove(self, ids: np.ndarray) -> None:
        self.index.remove(ids)

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        m = self.index.search(q, k)
        keys, dist = np.atleast_2d(m.keys), np.atleast_2d(m.distances)
        counts = np.atleast_1d(getattr(m, "counts", len(m.keys)))  # one query: no .counts
        for r in range(len(q)):
            c = int(counts[r])
            ids[r, :c], scores[r, :c] = keys[r, :c], 1.0 - dist[r, :c]
        return scores, ids

    def _to_bytes(self) -> bytes:
        return bytes(self.index.save())

    def _load(self, data: memoryview) -> None:
        from usearch.index import Index

        self.index = Index.restore(bytearray(data))
        if self.index is None:
            raise ValueError("usearch could not restore the index")
        self.index.expansion_search = int(self.params.get("expansion_search", 128))


KINDS: dict[str, type[VectorIndex]] = {
    c.kind: c for c in (FlatIndex, PQFastScanIndex, IVFPQFastScanIndex, HnswlibIndex, USearchIndex)
}


def make_index(kind: str, dim: int, **params) -> VectorIndex:
    if kind not in KINDS:
        raise SiamfaceError(f"unknown index kind {kind!r}; choose from {', '.join(KINDS)}")
    try:
        return KINDS[kind](dim, **params)
    except ImportError as err:
        raise SiamfaceError(
            f"index kind {kind!r} needs a package that is not installed ({err.name}); "
            "pip install 'siamface[ann]'"
        ) from err


# -- the index file beside the database --------------------------------------------------
def write_index_file(path: Path, index: VectorIndex, header: dict) -> None:
    """Save ``index`` with ``header`` (version, model, ...) as one file, atomically: a reader
    sees the previous complete file or the new one, never a mix."""
    from siamface.fileio import atomic_write

    head = dict(header, kind=index.kind, dim=index.dim, params=index.params)
    head["trained_on"], head["ntotal"] = index.trained_on, index.ntotal
    raw_head = json.dumps(head).encode()
    chunks = index.chunks()

    def write(tmp: Path) -> None:
        os.chmod(tmp, 0o644)  # as readable as the database beside it
        with open(tmp, "wb") as f:
            f.write(_MAGIC + struct.pack("<Q", len(raw_head)) + raw_head)
            for c in chunks:
                f.write(c)

    atomic_write(path, write)


def read_index_header(path: Path) -> dict | None:
    """The header of an index file, or None if it is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            return _read_head(f)
    except (OSError, ValueError):
        return None


def read_index_file(path: Path) -> tuple[dict, VectorIndex]:
    """Load an index file; raises ValueError/OSError if it is damaged (callers rebuild)."""
    with open(path, "rb") as f:
        head = _read_head(f)
        data = bytearray(os.fstat(f.fileno()).st_size - f.tell())  # writable, read once
        if f.readinto(data) != len(data):
            raise ValueError("index file is truncated")
    kind = head.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown index kind {kind!r}")
    try:
        dim, params = int(head["dim"]), head.get("params", {})
        trained_on, ntotal = int(head.get("trained_on", 0)), int(head.get("ntotal", -1))
        if not isinstance(params, dict) or dim < 1:
            raise TypeError("bad dim or params")
        index = cls.from_bytes(dim, dict(params), data)
    except ImportError as err:
        raise ValueError(f"cannot load a {kind!r} index: {err}") from err
    except (KeyError, TypeError, ValueError, OverflowError) as err:  # hand-edited header
        raise ValueError(f"damaged index header: {err}") from err
    except (RuntimeError, struct.error, SiamfaceError) as err:  # faiss: RuntimeError
        raise ValueError(f"damaged index data: {err}") from err
    index.trained_on = trained_on
    if index.ntotal != ntotal:
        raise ValueError("index size does not match its header")
    return head, index


def _read_head(f: io.BufferedReader) -> dict:
    if f.read(len(_MAGIC)) != _MAGIC:
        raise ValueError("not a siamface gallery index")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > 1 << 20:
        raise ValueError("index header too large")
    head = json.loads(f.read(n))  # UnicodeDecodeError and JSONDecodeError are ValueErrors
    if not isinstance(head, dict):
        raise ValueError(f"index header is a JSON {type(head).__name__}, not an object")
    return head
