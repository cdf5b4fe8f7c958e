"""The index kinds behind :class:`~siamface.gallery.index.VectorIndex`: faiss (exact, fast-scan
PQ, IVF + PQ) and graph indexes (hnswlib, usearch). Each imports its library when an index is
made, so the optional ones (hnswlib, usearch: the ``ann`` extra) stay optional."""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

import numpy as np

from siamface.errors import SiamfaceError
from siamface.gallery.index import SMALL_BATCH, VectorIndex, faiss_threads


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
