"""Open-set split and identification metrics (rank-k, DIR@FAR) against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from gallery_helpers import person_images, random_units

from siamface.decide.open_set import Match, SearchResult
from siamface.errors import SiamfaceError
from siamface.gallery.identification import (
    evaluate_open_set,
    identification_metrics,
    split_open_set,
)


def _res(*pairs) -> SearchResult:
    ms = [Match(n, s, i, True) for i, (n, s) in enumerate(pairs)]
    return SearchResult(ms[0].name, ms[0].score, ms, None)


def test_metrics_known_answer():
    genuine = [
        _res(("a", 0.9), ("b", 0.2)),  # correct, high
        _res(("b", 0.8), ("a", 0.1)),  # correct, high
        _res(("c", 0.5), ("a", 0.4)),  # correct, low score
        _res(("c", 0.7), ("b", 0.6)),  # wrong at rank 1, right at rank 2
        _res(("a", 0.3), ("c", 0.2)),  # true identity "b" not in the top 2
    ]
    labels = ["a", "b", "c", "b", "b"]
    strangers = [_res(("a", s)) for s in (0.1, 0.2, 0.3, 0.4, 0.45, 0.55, 0.6, 0.65, 0.7, 0.75)]
    m = identification_metrics(
        genuine, labels, strangers, "mean", fars=(0.1, 0.3, 0.01), ranks=(1, 2), threshold=0.5
    )
    assert m.rank == {"1": 0.6, "2": 0.8}
    # FAR 0.1: one of ten strangers may pass -> threshold just above 0.7: genuine 0.9, 0.8 pass
    assert m.dir_at_far["1e-01"] == pytest.approx(0.4)
    assert 0.7 < m.threshold_at_far["1e-01"] <= 0.7 + 1e-6
    # FAR 0.3: three may pass -> threshold just above 0.6; 0.5 (correct) fails
    assert m.dir_at_far["3e-01"] == pytest.approx(0.4)
    assert m.dir_at_far["1e-02"] is None and m.notes
    assert m.at_threshold == {"threshold": 0.5, "dir": pytest.approx(0.6), "far": 0.5}


def test_split_is_disjoint_seeded_and_checked():
    labels = [f"id{i // 6}" for i in range(60)]  # 10 identities x 6 images
    s = split_open_set(labels, strangers=0.3, enroll_images=2, seed=1)
    assert len(s.strangers) == 3 and len(s.enrolled) == 7
    assert all(len(v) == 2 for v in s.enrolled.values())
    g_rows = {r for r, _ in s.genuine}
    e_rows = {r for v in s.enrolled.values() for r in v}
    assert not g_rows & e_rows and not (g_rows | e_rows) & set(s.stranger_rows)
    assert len(g_rows) == 7 * 4 and len(s.stranger_rows) == 18
    assert all(labels[r] in s.strangers for r in s.stranger_rows)
    assert split_open_set(labels, 0.3, 2, seed=1) == s
    assert split_open_set(labels, 0.3, 2, seed=2) != s
    with pytest.raises(SiamfaceError, match="stranger"):
        split_open_set(labels, strangers=9)
    with pytest.raises(SiamfaceError, match="genuine probes"):
        split_open_set(labels, strangers=2, enroll_images=6)


def test_evaluate_open_set_through_a_gallery(tmp_path):
    emb = person_images(np.random.default_rng(0), 12, 5, 64, spread=0.3).reshape(60, 64)
    labels = [f"id{i // 5}" for i in range(60)]
    split = split_open_set(labels, strangers=4, enroll_images=2)
    for agg in ("mean", "max"):
        m = evaluate_open_set(emb, split, "x" * 16, agg, threshold=0.5, workdir=tmp_path)
        assert m.rank["1"] == 1.0 and m.dir_at_far["1e-01"] == 1.0  # well separated
    noisy = random_units(1, *emb.shape)
    m = evaluate_open_set(noisy, split, "x" * 16, "mean", workdir=tmp_path)
    assert m.rank["1"] < 0.5  # random embeddings cannot identify anyone
