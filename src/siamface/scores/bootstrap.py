"""Confidence intervals for verification metrics, by bootstrap over *identities*, and paired
comparisons of two models on the same people.

Pairs are not independent samples: every pair of one person shares that person's photos, so
resampling pairs gives intervals far too narrow. The unit that was sampled is the person, so the
bootstrap resamples people (in at most ``max_clusters`` groups of people, chosen by seed, so its
cost stays bounded on large sets): a replicate weights each person's genuine pairs by how often
the person was drawn, and each impostor pair by the product of its two people's counts.

Scores are binned (``BINS`` bins of cosine over [-1, 1], 0.001 wide); the metrics of every
replicate are read from the weighted histograms, vectorised over replicates. A comparison of two
models uses the same replicates for both (paired), so the interval is that of the *difference*
on the same people, much tighter than two separate intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BINS = 2000
#: The metrics of a verdict and whether higher is better.
METRICS: dict[str, bool] = {
    "auc": True,
    "eer": False,
    "tar_at_far_1e-3": True,
    "accuracy": True,
}


@dataclass
class PairHistograms:
    """Binned genuine scores per group of people, impostor scores per pair of groups."""

    genuine: np.ndarray  # (K, BINS)
    impostor: np.ndarray  # (K, K, BINS), upper triangle incl. diagonal

    @property
    def clusters(self) -> int:
        return self.genuine.shape[0]

    def weighted(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(R, BINS) genuine and impostor histograms of replicates with group counts ``w``."""
        k = self.clusters
        g = w @ self.genuine
        imp = self.impostor.reshape(k, k * BINS)
        h = np.empty((len(w), BINS))
        for a in range(0, len(w), 64):
            part = (w[a : a + 64] @ imp).reshape(-1, k, BINS)
            h[a : a + 64] = np.einsum("rkb,rk->rb", part, w[a : a + 64])
        return g, h


def _bins(scores: np.ndarray) -> np.ndarray:
    return np.clip(
        ((np.asarray(scores, np.float64) + 1.0) * (BINS / 2)).astype(np.int64), 0, BINS - 1
    )


def clusters_of(labels: Sequence, max_clusters: int, seed: int = 0) -> np.ndarray:
    """Group index of each item: one group per person, or people dealt at random into
    ``max_clusters`` groups when there are more."""
    names, inv = np.unique(np.asarray(labels), return_inverse=True)
    n = len(names)
    if n <= max_clusters:
        return inv.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(n)
    return (perm % max_clusters)[inv].astype(np.int64)


def histograms_from_pairs(
    ca: np.ndarray, cb: np.ndarray, scores: np.ndarray, same: np.ndarray, k: int
) -> PairHistograms:
    """Histograms of listed pairs (a pairs file): groups ``ca``/``cb`` of each pair's people."""
    b = _bins(scores)
    same = np.asarray(same, bool)
    gen = np.bincount(ca[same] * BINS + b[same], minlength=k * BINS).reshape(k, BINS)
    lo, hi = np.minimum(ca, cb)[~same], np.maximum(ca, cb)[~same]
    imp = np.bincount((lo * k + hi) * BINS + b[~same], minlength=k * k * BINS)
    return PairHistograms(gen.astype(np.float64), imp.reshape(k, k, BINS).astype(np.float64))


def histograms_all_pairs(
    emb: np.ndarray,
    labels: Sequence,
    groups: np.ndarray,
    probe: np.ndarray | None = None,
    block: int = 512,
) -> PairHistograms:
    """Every pair ``i < j`` of labelled images. ``probe``: other embeddings of the same images
    (e.g. under a camera condition); pair (i, j) then compares ``emb[i]`` (enrolled) with
    ``probe[j]`` (seen)."""
    emb = np.asarray(emb, np.float32)
    other = emb if probe is None else np.asarray(probe, np.float32)
    _, lab = np.unique(np.asarray(labels), return_inverse=True)
    k = int(groups.max()) + 1
    n = len(emb)
    gen = np.zeros(k * BINS, np.float64)
    imp = np.zeros(k * k * BINS, np.float64)
    for a in range(0, n - 1, block):
        rows = np.arange(a, min(a + block, n))
        s = emb[rows] @ other[a:].T  # columns a.. n-1
        cols = np.arange(a, n)
        upper = cols[None, :] > rows[:, None]
        ri, cj = np.nonzero(upper)
        i, j = rows[ri], cols[cj]
        b = _bins(s[ri, cj])
        same = lab[i] == lab[j]
        gen += np.bincount(groups[i[same]] * BINS + b[same], minlength=k * BINS)
        gi, gj = groups[i[~same]], groups[j[~same]]
        lo, hi = np.minimum(gi, gj), np.maximum(gi, gj)
        imp += np.bincount((lo * k + hi) * BINS + b[~same], minlength=k * k * BINS)
    return PairHistograms(gen.reshape(k, BINS), imp.reshape(k, k, BINS))


def metrics_from_histograms(g: np.ndarray, h: np.ndarray) -> dict[str, np.ndarray]:
    """AUC, EER, TAR@FAR=1e-3 and best balanced accuracy of each row's histograms."""
    g = np.atleast_2d(g)
    h = np.atleast_2d(h)
    G = np.maximum(g.sum(1, keepdims=True), 1e-12)
    H = np.maximum(h.sum(1, keepdims=True), 1e-12)
    # Rates at thresholds t_k = lower edge of bin k, k = 0..BINS (BINS: accept nothing).
    tail_g = np.concatenate([np.cumsum(g[:, ::-1], 1)[:, ::-1], np.zeros((len(g), 1))], 1) / G
    tail_h = np.concatenate([np.cumsum(h[:, ::-1], 1)[:, ::-1], np.zeros((len(h), 1))], 1) / H
    below_h = 1.0 - tail_h[:, :-1]  # share of impostors in bins below b
    auc = ((g / G) * (below_h + 0.5 * h / H)).sum(1)
    frr = 1.0 - tail_g
    k_eer = np.argmin(np.abs(tail_h - frr), axis=1)
    rows = np.arange(len(g))
    eer = (tail_h[rows, k_eer] + frr[rows, k_eer]) / 2
    ok = tail_h <= 1e-3
    k_far = np.argmax(ok, axis=1)  # first threshold meeting the FAR (tail_h is decreasing)
    tar = tail_g[rows, k_far]
    acc = (0.5 * (tail_g + 1.0 - tail_h)).max(1)
    return {"auc": auc, "eer": eer, "tar_at_far_1e-3": tar, "accuracy": acc}


def replicate_weights(k: int, replicates: int, seed: int) -> np.ndarray:
    """(R, K) counts: each replicate draws K groups with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(k, np.full(k, 1.0 / k), size=replicates).astype(np.float64)


def _ci(x: np.ndarray, level: float) -> list[float]:
    a = (1.0 - level) / 2
    return [float(np.quantile(x, a)), float(np.quantile(x, 1.0 - a))]


def interval(hist: PairHistograms, replicates: int = 1000, seed: int = 0, level: float = 0.95):
    """Each metric with its bootstrap interval."""
    w = replicate_weights(hist.clusters, replicates, seed)
    point = metrics_from_histograms(*hist.weighted(np.ones((1, hist.clusters))))
    reps = metrics_from_histograms(*hist.weighted(w))
    return {m: {"value": float(point[m][0]), "ci": _ci(reps[m], level)} for m in METRICS}


def compare(
    new: PairHistograms,
    ref: PairHistograms,
    replicates: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict]:
    """Paired comparison of ``new`` against ``ref`` on the same people and pairs: per metric
    both values with intervals, the difference (new - ref) with its interval, and
    ``"better"``/``"worse"`` when the interval excludes 0 (``None`` otherwise)."""
    if new.genuine.shape != ref.genuine.shape:
        raise ValueError("the two models were not scored on the same groups of people")
    k = new.clusters
    w = replicate_weights(k, replicates, seed)
    ones = np.ones((1, k))
    pn, pr = (
        metrics_from_histograms(*new.weighted(ones)),
        metrics_from_histograms(*ref.weighted(ones)),
    )
    rn, rr = metrics_from_histograms(*new.weighted(w)), metrics_from_histograms(*ref.weighted(w))
    out: dict[str, dict] = {}
    for m, higher in METRICS.items():
        d = rn[m] - rr[m]
        lo, hi = _ci(d, level)
        gain_lo = lo if higher else -hi  # lower bound of the improvement
        gain_hi = hi if higher else -lo
        sig = "better" if gain_lo > 0 else "worse" if gain_hi < 0 else None
        out[m] = {
            "new": float(pn[m][0]),
            "new_ci": _ci(rn[m], level),
            "ref": float(pr[m][0]),
            "ref_ci": _ci(rr[m], level),
            "delta": float(pn[m][0] - pr[m][0]),
            "delta_ci": [lo, hi],
            "significant": sig,
        }
    return out


def format_delta(name: str, row: dict) -> str:
    """``tar_at_far_1e-3 +0.0123 (95% CI +0.0040..+0.0210)``."""
    lo, hi = row["delta_ci"]
    return f"{name} {row['delta']:+.4f} (95% CI {lo:+.4f}..{hi:+.4f})"
