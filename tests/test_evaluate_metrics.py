"""Chunked all-pairs scoring and weighted metrics, checked against brute force + scikit-learn."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from siamface.scores.metrics import (
    all_pair_scores,
    verification_metrics,
    weighted_verification_metrics,
)
from siamface.scores.pairs import ScoreSet, pair_counts, score_all_pairs


def _unit(rng, n, d=16, labels=None, signal=0.4):
    e = rng.normal(size=(n, d)).astype(np.float32)
    if labels is not None:  # make same-identity vectors alike, so metrics are not trivial
        centers = rng.normal(size=(int(labels.max()) + 1, d)).astype(np.float32)
        e += signal * 3 * centers[labels]
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_weighted_metrics_equal_unweighted_and_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.random(3000) < 0.3
    scores = rng.normal(size=3000) + labels * 1.2
    m = weighted_verification_metrics(scores, labels)
    ref = verification_metrics(scores, labels)
    assert m.auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert m.eer == ref.eer and m.best_accuracy == ref.best_accuracy
    assert m.tar_at_far == ref.tar_at_far and m.threshold_at_far == ref.threshold_at_far
    fpr, tpr, thr = roc_curve(labels, scores)
    ok = fpr <= 1e-2
    assert m.tar_at_far["1e-02"] == pytest.approx(tpr[ok].max())


def test_integer_weights_equal_repeated_scores():
    rng = np.random.default_rng(2)
    vals = np.round(rng.normal(size=400), 2)
    labels = rng.random(400) < 0.4
    w = rng.integers(1, 5, 400)
    expanded = weighted_verification_metrics(np.repeat(vals, w), np.repeat(labels, w))
    weighted = weighted_verification_metrics(vals, labels, w.astype(float))
    assert weighted.auc == pytest.approx(expanded.auc, abs=1e-12)
    assert weighted.eer == pytest.approx(expanded.eer, abs=1e-12)
    assert weighted.n_impostor == expanded.n_impostor == int(w[~labels].sum())
    assert weighted.tar_at_far == pytest.approx(expanded.tar_at_far)


@pytest.mark.parametrize(
    ("n", "n_ids", "block_elems"),
    [(240, 7, 10_000), (301, 3, 2_000), (150, 150, 5_000), (200, 1, 1_000)],
)
def test_score_all_pairs_matches_brute_force(n, n_ids, block_elems):
    rng = np.random.default_rng(n)
    if n_ids == 1:  # one big identity plus singletons: a lone identity split across blocks
        labels = np.r_[np.zeros(n - 20, int), np.arange(1, 21)]
    else:
        labels = rng.integers(0, n_ids, n)
    e = _unit(rng, n, labels=labels)
    names = np.array([f"id{x}" for x in labels])  # any hashable labels work
    sp = score_all_pairs(e, names, block_elems=block_elems)
    s, same = all_pair_scores(e, labels)
    assert (sp.genuine.n, sp.impostor.n) == (int(same.sum()), int((~same).sum()))
    assert pair_counts(labels) == (int(same.sum()), int((~same).sum()))
    g, _ = sp.genuine.values_and_weights()
    i, _ = sp.impostor.values_and_weights()
    np.testing.assert_allclose(np.sort(g), np.sort(s[same]), atol=1e-5)
    np.testing.assert_allclose(np.sort(i), np.sort(s[~same]), atol=1e-5)
    m = sp.metrics()
    assert m.auc == pytest.approx(roc_auc_score(same, s), abs=1e-5)


def test_histogram_mode_is_close_and_pessimistic():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, 500)
    e = _unit(rng, 500, labels=labels)
    exact = score_all_pairs(e, labels)
    hist = score_all_pairs(e, labels, exact_limit=100)
    assert not hist.impostor.exact and not hist.genuine.exact and exact.impostor.exact
    me, mh = exact.metrics(), hist.metrics()
    assert mh.auc == pytest.approx(me.auc, abs=1e-4)
    assert mh.auc <= me.auc + 1e-12  # quantisation never flatters the model
    assert mh.eer == pytest.approx(me.eer, abs=2e-3)
    t = me.threshold_at_far["1e-02"]
    assert hist.rates_at(t)["far"] >= exact.rates_at(t)["far"]
    assert any("histogram" in note for note in hist.notes)


def test_rates_table_matches_rates_at_every_threshold():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 8, 300)
    e = _unit(rng, 300, labels=labels)
    grid = np.linspace(-1, 1, 81)
    for scored in (score_all_pairs(e, labels), score_all_pairs(e, labels, exact_limit=100)):
        table = scored.rates_table(grid)
        for t, tar, far in zip(table["threshold"], table["tar"], table["far"], strict=True):
            want = scored.rates_at(t)
            assert tar == pytest.approx(want["tar"], abs=1e-12)
            assert far == pytest.approx(want["far"], abs=1e-12)
        assert table["tar"][0] == 1.0 and table["far"][-1] == 0.0
        assert table["tar"] == sorted(table["tar"], reverse=True)  # never rises with t


def test_impostor_sampling_is_seeded_and_reported():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 8, 400)
    e = _unit(rng, 400, labels=labels)
    a = score_all_pairs(e, labels, max_impostors=1000, sample_size=5000, seed=7)
    b = score_all_pairs(e, labels, max_impostors=1000, sample_size=5000, seed=7)
    full = score_all_pairs(e, labels)
    assert a.impostor_sampled and a.impostor.n == 5000 and a.genuine.n == full.genuine.n
    assert a.n_impostor_total == full.impostor.n
    np.testing.assert_array_equal(
        a.impostor.values_and_weights()[0], b.impostor.values_and_weights()[0]
    )
    assert a.summary()["impostor_pairs"] == "seeded sample"
    assert a.metrics().auc == pytest.approx(full.metrics().auc, abs=0.03)


def test_far_below_one_over_impostors_is_not_measurable():
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(4), 5)  # 150 impostor pairs
    sp = score_all_pairs(_unit(rng, 20, labels=labels), labels)
    m = sp.metrics()
    assert m.n_impostor == 150
    assert m.tar_at_far["1e-03"] is None and m.threshold_at_far["1e-04"] is None
    assert m.tar_at_far["1e-01"] is not None
    assert any("1e-03" in n and "cannot be measured" in n for n in m.notes)


def test_memory_stays_bounded_for_many_pairs():
    """18M pairs: exact float32 storage alone would be 72 MB; the histogram path stays small."""
    rng = np.random.default_rng(6)
    n = 6000
    labels = np.arange(n) // 60
    e = _unit(rng, n, d=8)
    tracemalloc.start()
    try:
        sp = score_all_pairs(e, labels, exact_limit=100_000, block_elems=500_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sp.impostor.n == n * (n - 1) // 2 - sp.genuine.n
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.1f} MB"


def test_scoreset_rejects_overflow_and_clips_rounding():
    s = ScoreSet(2)
    s.add(np.array([0.5, 0.25], np.float32))
    with pytest.raises(ValueError):
        s.add(np.array([0.1], np.float32))
    h = ScoreSet(10, exact_limit=1, upper_edge=True)
    h.add(np.array([1.0000001, -1.0000001, 0.0], np.float32))
    v, w = h.values_and_weights()
    assert v.min() >= -1.0 and v.max() <= 1.0 + 1e-9 and w.sum() == 3
