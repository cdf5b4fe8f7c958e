"""Vector indexes behind one small interface, and the index kinds by name.

Every index returns accurate cosine scores, whatever it compresses: compressed kinds
(``refine = True``) fetch a few dozen candidates from their codes and re-score them with a
float16 copy of the vectors kept in memory (error below 1e-3, typically ~1e-5). That copy is
what makes a compressed index usable for open-set decisions (quantised scores are far off
the true similarity), and keeping it in memory rather than re-reading the database keeps a
search off the disk (re-scoring 32 candidates from a cold 2.4 GB SQLite file cost ~5 ms).

The kinds themselves live in :mod:`siamface.gallery.index_kinds` and are registered lazily in
:data:`INDEX_KINDS`; the rule that picks one by gallery size is
:mod:`siamface.gallery.index_choice`; the file format is :mod:`siamface.gallery.index_file`.
"""

from __future__ import annotations

import contextlib
import struct
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import ClassVar

import numpy as np

from siamface.errors import SiamfaceError
from siamface.registry import Registry

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


#: The index kinds by name (``gallery index --kind``); classes imported when chosen.
INDEX_KINDS: Registry[type[VectorIndex]] = Registry("index kind")
INDEX_KINDS.register_lazy("flat", "siamface.gallery.index_kinds:FlatIndex", help="exact (faiss)")
INDEX_KINDS.register_lazy(
    "pqfs", "siamface.gallery.index_kinds:PQFastScanIndex", help="4-bit fast-scan PQ (faiss)"
)
INDEX_KINDS.register_lazy(
    "ivfpqfs",
    "siamface.gallery.index_kinds:IVFPQFastScanIndex",
    help="inverted lists + fast-scan PQ (faiss)",
)
INDEX_KINDS.register_lazy("hnsw", "siamface.gallery.index_kinds:HnswlibIndex", help="hnswlib")
INDEX_KINDS.register_lazy(
    "usearch", "siamface.gallery.index_kinds:USearchIndex", help="usearch HNSW, int8 vectors"
)


def index_class(kind: str) -> type[VectorIndex]:
    """The class of index kind ``kind``; unknown kinds fail with the choices."""
    if kind not in INDEX_KINDS:
        raise SiamfaceError(
            f"unknown index kind {kind!r}; choose from {', '.join(INDEX_KINDS.names())}"
        )
    return INDEX_KINDS.get(kind).builder


def make_index(kind: str, dim: int, **params) -> VectorIndex:
    """A new empty index of kind ``kind``; a kind whose package is missing names the extra."""
    cls = index_class(kind)
    try:
        return cls(dim, **params)
    except ImportError as err:
        raise SiamfaceError(
            f"index kind {kind!r} needs a package that is not installed ({err.name}); "
            "pip install 'siamface[ann]'"
        ) from err
