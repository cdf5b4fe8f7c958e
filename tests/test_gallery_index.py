"""Vector index backends behind one interface, the index file format and the size rule."""

from __future__ import annotations

import numpy as np
import pytest

from siamface.errors import SiamfaceError
from siamface.gallery import index as ix
from siamface.gallery import index_choice, index_file


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1200, 32)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", sorted(ix.INDEX_KINDS.names()))
def test_backend_add_search_remove_roundtrip(kind, data, tmp_path):
    pytest.importorskip({"hnsw": "hnswlib", "usearch": "usearch"}.get(kind, "faiss"))
    params = {"nlist": 8, "nprobe": 8} if kind == "ivfpqfs" else {}
    idx = ix.make_index(kind, 32, **params)
    if idx.needs_training:
        idx.train(data, len(data))
    ids = np.arange(len(data), dtype=np.int64) * 7 + 100  # ids need not be dense
    idx.add(ids, data)
    assert idx.ntotal == len(data)
    scores, found = idx.search(data[:50], 5)
    assert found.shape == (50, 5) and scores.shape == (50, 5)
    hit = (found == ids[:50, None]).any(axis=1).mean()
    assert hit >= (1.0 if kind == "flat" else 0.9)
    assert (np.diff(scores, axis=1) <= 1e-5).all()  # best first
    # scores are accurate cosine similarities whatever the index compresses
    rows = (found - 100) // 7
    exact = np.einsum("nkd,nd->nk", data[rows], data[:50])
    np.testing.assert_allclose(scores, exact, atol=1e-3)
    idx.remove(ids[:10])
    assert idx.ntotal == len(data) - 10
    _, again = idx.search(data[:10], 5)
    assert not np.isin(again, ids[:10]).any()
    index_file.write_index_file(tmp_path / "i.bin", idx, {"version": 3})
    head, loaded = index_file.read_index_file(tmp_path / "i.bin")
    assert head["version"] == 3 and head["kind"] == kind and loaded.ntotal == idx.ntotal
    np.testing.assert_array_equal(loaded.search(data[10:20], 3)[1], idx.search(data[10:20], 3)[1])


def test_empty_index_and_damaged_files(tmp_path, data):
    idx = ix.make_index("flat", 32)
    s, i = idx.search(data[:2], 3)
    assert (i == -1).all() and np.isneginf(s).all()
    p = tmp_path / "i.bin"
    index_file.write_index_file(p, idx, {"version": 1})
    raw = p.read_bytes()
    p.write_bytes(raw[:-10])
    with pytest.raises(ValueError):
        index_file.read_index_file(p)
    p.write_bytes(b"nonsense")
    assert index_file.read_index_header(p) is None
    with pytest.raises(ValueError, match="not a siamface"):
        index_file.read_index_file(p)
    assert index_file.read_index_header(tmp_path / "missing") is None
    with pytest.raises(SiamfaceError, match="unknown index kind"):
        ix.make_index("annoy", 32)
    with pytest.raises(SiamfaceError, match="divide"):
        ix.make_index("pqfs", 30, m=7)


def test_size_rule():
    assert index_choice.choose_kind(10) == "flat"
    assert index_choice.choose_kind(index_choice.EXACT_MAX) == "flat"
    assert index_choice.choose_kind(index_choice.EXACT_MAX + 1) == index_choice.LARGE_KIND == "pqfs"


def test_float16_store_keeps_ids_sorted_and_rescores():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((10, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    st = ix.Float16Store(8)
    st.add(np.array([5, 1, 9]), v[:3])  # unsorted batch
    st.add(np.array([20, 30]), v[3:5])
    st.add(np.array([7]), v[5:6])  # out of order: merged
    assert st.ids[: st.n].tolist() == [1, 5, 7, 9, 20, 30] and len(st) == 6
    st.remove(np.array([9, 99]))
    st.add(np.array([5]), v[6:7])  # re-added id (a refreshed template) overwrites
    assert len(st) == 5
    cand = np.array([[30, 9, 5, -1, 1]])
    s, i = st.rescore(v[6:7], cand, 4)
    assert i[0, 0] == 5 and s[0, 0] == pytest.approx(1.0, abs=1e-3)
    assert 9 not in i[0] and -1 not in i[0, :3] and i[0, 3] == -1
    back = ix.Float16Store.from_bytes(8, memoryview(st.to_bytes()))
    assert back.ids.tolist() == [1, 5, 7, 20, 30]
    np.testing.assert_array_equal(back.rescore(v[:1], cand, 3)[1], st.rescore(v[:1], cand, 3)[1])
