"""Vector indexes behind one small interface, and the rule that picks one by gallery size.

The gallery asks an index for *candidates* only: every candidate is re-scored with the exact
embedding from the database before anyone sees a score, so a compressed index can trade some
ranking precision for speed and memory without changing reported similarities or open-set
decisions.

Measured with ``bench/gallery_scale.py`` (512-d, templates uniform on the sphere, probes at
genuine cosine ~0.6; see docs/gallery.md):

* ``flat`` (faiss ``IndexFlatIP``) is exact; its cost grows linearly with the gallery, so it
  is used up to :data:`EXACT_MAX` vectors.
* ``pqfs`` (faiss 4-bit fast-scan product quantisation, a flat scan over 32-byte codes) keeps
  1/16 of the raw memory and finds the probe's own identity in the top candidates at ~1M
  vectors in a few milliseconds. It is the automatic choice above :data:`EXACT_MAX`.
* ``ivfpqfs`` (inverted lists + fast-scan PQ), ``hnsw`` (hnswlib) and ``usearch`` (HNSW
  with int8 vectors) are kept for measurement: graph and cluster indexes need neighbourhoods
  that uniformly spread templates do not have, and lost most probes there. Real embeddings may
  cluster more; ``bench/gallery_scale.py --kinds`` measures them again.
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


class VectorIndex(ABC):
    """Inner-product search over unit vectors with stable int64 ids."""

    kind: ClassVar[str]
    exact: ClassVar[bool] = False  # True: scores are exact, no re-scoring needed

    def __init__(self, dim: int, **params) -> None:
        self.dim = dim
        self.params = dict(params)
        self.trained_on = 0  # vectors in the gallery when the quantiser was trained

    @property
    def needs_training(self) -> bool:
        return False

    def train(self, sample: np.ndarray, n_total: int) -> None:  # noqa: B027 - optional hook
        """Fit quantisers on a sample (only for kinds that need it)."""

    @property
    @abstractmethod
    def ntotal(self) -> int: ...

    @abstractmethod
    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None: ...

    @abstractmethod
    def remove(self, ids: np.ndarray) -> None: ...

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n, k), best first; missing slots have id -1."""

    @abstractmethod
    def to_bytes(self) -> bytes: ...

    @classmethod
    @abstractmethod
    def from_bytes(cls, dim: int, params: dict, data: bytes) -> VectorIndex: ...

    def candidates_for(self, k: int) -> int:
        """How many candidates to fetch for a top-``k`` answer (re-scored exactly after)."""
        return k if self.exact else max(4 * k, int(self.params.get("candidates", 32)))


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

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(
                np.ascontiguousarray(vecs, dtype=np.float32), np.asarray(ids, dtype=np.int64)
            )

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            self.index.remove_ids(np.asarray(ids, dtype=np.int64))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if self.ntotal == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        with faiss_threads(1 if len(q) < SMALL_BATCH else None):
            return self.index.search(q, k)

    def to_bytes(self) -> bytes:
        import faiss

        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, dim: int, params: dict, data: bytes) -> VectorIndex:
        import faiss

        obj = cls.__new__(cls)
        VectorIndex.__init__(obj, dim, **params)
        obj.index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        obj._configure()
        return obj

    def _configure(self) -> None:
        """Re-apply search-time parameters after loading."""


class FlatIndex(_FaissIndex):
    """Exact inner-product search (faiss ``IndexFlatIP``): the right answer for small galleries."""

    kind = "flat"
    exact = True

    def _make(self):
        import faiss

        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))


class PQFastScanIndex(_FaissIndex):
    """4-bit product quantisation scanned with SIMD lookup tables (faiss ``PQ{m}x4fs``).

    ``m`` sub-quantisers of 4 bits: m/2 bytes a vector (32 B for m=64 against 2 KB raw at
    512-d). Every code is scanned, so there is no clustering assumption that can miss a probe.
    """

    kind = "pqfs"

    def _make(self):
        import faiss

        m = int(self.params.setdefault("m", _default_m(self.dim)))
        if self.dim % m:
            raise SiamfaceError(f"pqfs: {m} sub-quantisers do not divide dimension {self.dim}")
        return faiss.IndexIDMap2(faiss.IndexPQFastScan(self.dim, m, 4, faiss.METRIC_INNER_PRODUCT))

    def train(self, sample: np.ndarray, n_total: int) -> None:
        self.index.train(np.ascontiguousarray(sample, dtype=np.float32))
        self.trained_on = n_total


class IVFPQFastScanIndex(_FaissIndex):
    """Inverted lists over fast-scan PQ codes (faiss ``IVF{nlist},PQ{m}x4fs``)."""

    kind = "ivfpqfs"

    def _make(self):
        import faiss

        m = int(self.params.setdefault("m", _default_m(self.dim)))
        nlist = int(self.params.setdefault("nlist", 1024))
        self.params.setdefault("nprobe", 32)
        return faiss.index_factory(self.dim, f"IVF{nlist},PQ{m}x4fs", faiss.METRIC_INNER_PRODUCT)

    def train(self, sample: np.ndarray, n_total: int) -> None:
        self.index.train(np.ascontiguousarray(sample, dtype=np.float32))
        self.trained_on = n_total
        self._configure()

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
    """HNSW graph from hnswlib (float32 vectors; removals are marked deleted until the next
    rebuild)."""

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

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if not len(ids):
            return
        need = self.index.element_count + len(ids)
        if need > self.index.get_max_elements():
            self.index.resize_index(max(need, 2 * self.index.get_max_elements()))
        self.index.add_items(np.asarray(vecs, np.float32), np.asarray(ids))

    def remove(self, ids: np.ndarray) -> None:
        for i in np.asarray(ids):
            self.index.mark_deleted(int(i))
            self.deleted.add(int(i))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(queries, np.float32)
        kk = min(k, self.ntotal)
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        if kk > 0:
            self.index.set_ef(max(int(self.params["ef"]), kk))
            labels, dist = self.index.knn_query(q, k=kk)
            ids[:, :kk], scores[:, :kk] = labels, 1.0 - dist
        return scores, ids

    def to_bytes(self) -> bytes:
        dead = np.array(sorted(self.deleted), dtype="<i8")
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "hnsw.bin")
            self.index.save_index(p)
            return struct.pack("<Q", len(dead)) + dead.tobytes() + Path(p).read_bytes()

    @classmethod
    def from_bytes(cls, dim: int, params: dict, data: bytes) -> VectorIndex:
        import hnswlib

        obj = cls.__new__(cls)
        VectorIndex.__init__(obj, dim, **params)
        (n_dead,) = struct.unpack("<Q", data[:8])
        obj.deleted = set(np.frombuffer(data[8 : 8 + 8 * n_dead], dtype="<i8").tolist())
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "hnsw.bin")
            Path(p).write_bytes(data[8 + 8 * n_dead :])
            obj.index = hnswlib.Index(space="ip", dim=dim)
            obj.index.load_index(p)
        obj.index.set_ef(int(obj.params.get("ef", 128)))
        return obj


class USearchIndex(VectorIndex):
    """HNSW graph from usearch, vectors stored as int8 (1/4 of float32 memory)."""

    kind = "usearch"

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

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if len(ids):
            self.index.add(np.asarray(ids, np.int64), np.asarray(vecs, np.float32))

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            self.index.remove(np.asarray(ids, np.int64))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(queries, np.float32)
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        if len(self.index) == 0:
            return scores, ids
        m = self.index.search(q, k)
        keys, dist = np.atleast_2d(m.keys), np.atleast_2d(m.distances)
        counts = np.atleast_1d(getattr(m, "counts", len(m.keys)))  # one query: no .counts
        for r in range(len(q)):
            c = int(counts[r])
            ids[r, :c], scores[r, :c] = keys[r, :c], 1.0 - dist[r, :c]
        return scores, ids

    def to_bytes(self) -> bytes:
        return bytes(self.index.save())

    @classmethod
    def from_bytes(cls, dim: int, params: dict, data: bytes) -> VectorIndex:
        from usearch.index import Index

        obj = cls.__new__(cls)
        VectorIndex.__init__(obj, dim, **params)
        obj.index = Index.restore(bytearray(data))
        if obj.index is None:
            raise ValueError("usearch could not restore the index")
        obj.index.expansion_search = int(obj.params.get("expansion_search", 128))
        return obj


KINDS: dict[str, type[VectorIndex]] = {
    c.kind: c for c in (FlatIndex, PQFastScanIndex, IVFPQFastScanIndex, HnswlibIndex, USearchIndex)
}


def make_index(kind: str, dim: int, **params) -> VectorIndex:
    if kind not in KINDS:
        raise SiamfaceError(f"unknown index kind {kind!r}; choose from {', '.join(KINDS)}")
    return KINDS[kind](dim, **params)


# -- the index file beside the database --------------------------------------------------
def write_index_file(path: Path, index: VectorIndex, header: dict) -> None:
    """Save ``index`` with ``header`` (version, model, ...) as one file, atomically: a reader
    sees the previous complete file or the new one, never a mix."""
    from siamface.fileio import atomic_write

    head = dict(header, kind=index.kind, dim=index.dim, params=index.params)
    head["trained_on"], head["ntotal"] = index.trained_on, index.ntotal
    raw_head = json.dumps(head).encode()
    payload = index.to_bytes()

    def write(tmp: Path) -> None:
        os.chmod(tmp, 0o644)  # as readable as the database beside it
        with open(tmp, "wb") as f:
            f.write(_MAGIC + struct.pack("<Q", len(raw_head)) + raw_head)
            f.write(payload)

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
        data = f.read()
    cls = KINDS.get(head.get("kind", ""))
    if cls is None:
        raise ValueError(f"unknown index kind {head.get('kind')!r}")
    try:
        index = cls.from_bytes(int(head["dim"]), dict(head.get("params", {})), data)
    except RuntimeError as err:  # faiss reports bad data as RuntimeError
        raise ValueError(f"damaged index data: {err}") from err
    index.trained_on = int(head.get("trained_on", 0))
    if index.ntotal != int(head.get("ntotal", -1)):
        raise ValueError("index size does not match its header")
    return head, index


def _read_head(f: io.BufferedReader) -> dict:
    if f.read(len(_MAGIC)) != _MAGIC:
        raise ValueError("not a siamface gallery index")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > 1 << 20:
        raise ValueError("index header too large")
    return json.loads(f.read(n))
