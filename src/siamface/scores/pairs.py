"""Embeddings of a labelled set -> scores of every genuine and impostor pair, in bounded memory.

The article compared every pair in a Python double loop (~9 us a pair) and kept every score in
a list. Here the work is a handful of BLAS matrix products over row blocks, and memory does not
grow with the number of pairs:

* Images are sorted by identity, so for a row ``i`` the genuine partners are the columns
  ``(i, end_of_its_identity)`` and the impostor partners are all columns from there on. A row
  block ``E[r0:r1] @ E[r0:].T`` therefore yields both kinds of pairs as plain slices (no
  masks, no index arrays), and only the upper block-triangle of the score matrix is computed.
* Each kind of score goes into a :class:`ScoreSet`. Up to ``exact_limit`` scores are kept
  exactly (float32). Beyond that the set is a histogram of 2**20 uniform bins over [-1, 1]
  (8 MB whatever the number of pairs; bin width 1.9e-6). Histogrammed genuine scores are
  placed on their bin's lower edge and impostor scores on its upper edge, so the quantisation
  can only make a model look (by at most one bin of threshold) worse, never better: a
  threshold read off the curve gives at most the FAR it reports.
* Impostor pairs can also be sampled (seeded, uniformly, with replacement) when there are too
  many to score; the report then says so and how many were scored.

Metrics come from scikit-learn's ROC with the histogram counts as sample weights, so they are
the numbers scikit-learn would give on the (quantised) scores.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from siamface.scores.metrics import (
    DEFAULT_FARS,
    VerificationMetrics,
    weighted_verification_metrics,
)

#: Histogram resolution for large score sets (bins over [-1, 1]).
HIST_BINS = 1 << 20
#: Above this many scores of one kind, keep a histogram instead of the exact scores.
EXACT_LIMIT = 2_000_000
#: Score-matrix elements computed per block (float32: 16 MB).
BLOCK_ELEMS = 4_000_000
#: At least this many rows per block (BLAS efficiency), more when the set is small.
BLOCK_ROWS = 128
#: Below this many images the whole job takes milliseconds: BLAS runs single-threaded, since
#: waking and synchronising threads then costs more than it saves (a lot more on busy cores).
SINGLE_THREAD_BELOW = 5000
#: Default cap on impostor pairs scored exhaustively; above it a seeded sample is scored.
DEFAULT_MAX_IMPOSTORS = 2_000_000_000
#: Sample size used when the impostor pairs exceed ``DEFAULT_MAX_IMPOSTORS``.
DEFAULT_IMPOSTOR_SAMPLE = 100_000_000


class ScoreSet:
    """Scores of one kind (genuine or impostor): exact up to a size, else a fine histogram.

    ``expected`` (the number of scores that will be added) decides the representation up
    front, so exact scores go straight into one preallocated array.
    """

    def __init__(self, expected: int, exact_limit: int = EXACT_LIMIT, upper_edge: bool = False):
        self.expected = int(expected)
        self.exact = self.expected <= exact_limit
        self.upper_edge = upper_edge
        self.n = 0
        if self.exact:
            self._scores = np.empty(self.expected, dtype=np.float32)
        else:
            self._counts = np.zeros(HIST_BINS, dtype=np.int64)

    @property
    def bin_width(self) -> float | None:
        """Score quantisation (None when exact)."""
        return None if self.exact else 2.0 / HIST_BINS

    def add(self, scores: np.ndarray) -> None:
        """Add a block of scores (any shape; copied once into place when exact)."""
        k = scores.size
        if self.exact:
            if self.n + k > self.expected:
                raise ValueError("more scores than announced")
            self._scores[self.n : self.n + k].reshape(scores.shape)[...] = scores
        else:
            idx = ((scores + np.float32(1.0)) * np.float32(HIST_BINS / 2.0)).astype(np.intp)
            idx = idx.reshape(-1)
            np.clip(idx, 0, HIST_BINS - 1, out=idx)
            self._counts += np.bincount(idx, minlength=HIST_BINS)
        self.n += k

    def values_and_weights(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Distinct score values and their multiplicities (None: all ones)."""
        if self.exact:
            return self._scores[: self.n], None
        nz = np.flatnonzero(self._counts)
        edge = nz + 1 if self.upper_edge else nz
        return (edge * (2.0 / HIST_BINS) - 1.0).astype(np.float64), self._counts[nz]

    def count_at_least(self, threshold: float) -> int:
        v, w = self.values_and_weights()
        hit = v >= threshold
        return int(hit.sum() if w is None else w[hit].sum())

    def counts_at_least(self, thresholds: np.ndarray) -> np.ndarray:
        """:meth:`count_at_least` for many thresholds at once (one sort, one search)."""
        v, w = self.values_and_weights()
        order = np.argsort(v, kind="stable")
        v = v[order]
        w = np.ones(v.size, np.int64) if w is None else np.asarray(w)[order]
        above = np.concatenate([np.cumsum(w[::-1])[::-1], [0]])  # weight of v[i:], per i
        # Thresholds in the scores' own precision, as ``v >= t`` compares them one at a time.
        t = np.asarray(thresholds, np.float64).astype(v.dtype)
        return above[np.searchsorted(v, t, side="left")]

    def histogram(self, edges: np.ndarray) -> np.ndarray:
        """Counts in coarser bins (for plots)."""
        v, w = self.values_and_weights()
        counts, _ = np.histogram(np.clip(v, edges[0], edges[-1]), bins=edges, weights=w)
        return counts

    def quantile_range(self, lo: float = 0.0, hi: float = 1.0) -> tuple[float, float]:
        v, w = self.values_and_weights()
        if v.size == 0:
            return 0.0, 0.0
        if w is None:
            return float(np.quantile(v, lo)), float(np.quantile(v, hi))
        c = np.cumsum(w) / w.sum()
        return float(v[np.searchsorted(c, lo)]), float(v[min(np.searchsorted(c, hi), v.size - 1)])


@dataclass
class ScoredPairs:
    """All genuine pairs and all (or a seeded sample of) impostor pairs of a labelled set."""

    genuine: ScoreSet
    impostor: ScoreSet
    n_genuine_total: int
    n_impostor_total: int
    impostor_sampled: bool = False
    seed: int | None = None
    notes: list[str] = field(default_factory=list)

    def weighted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(scores, labels, weights) for scikit-learn; weights None when all scores are exact."""
        gv, gw = self.genuine.values_and_weights()
        iv, iw = self.impostor.values_and_weights()
        scores = np.concatenate([gv.astype(np.float64), iv.astype(np.float64)])
        labels = np.concatenate([np.ones(gv.size, bool), np.zeros(iv.size, bool)])
        if gw is None and iw is None:
            return scores, labels, None
        gw = np.ones(gv.size, np.int64) if gw is None else gw
        iw = np.ones(iv.size, np.int64) if iw is None else iw
        return scores, labels, np.concatenate([gw, iw]).astype(np.float64)

    def metrics(self, fars: tuple[float, ...] = DEFAULT_FARS) -> VerificationMetrics:
        scores, labels, weights = self.weighted()
        m = weighted_verification_metrics(scores, labels, weights, fars)
        m.notes = self.notes + m.notes
        return m

    def rates_at(self, threshold: float) -> dict:
        """Measured TAR / FAR / balanced accuracy when deciding ``score >= threshold``."""
        tar = self.genuine.count_at_least(threshold) / max(self.genuine.n, 1)
        far = self.impostor.count_at_least(threshold) / max(self.impostor.n, 1)
        return {
            "threshold": float(threshold),
            "tar": tar,
            "far": far,
            "frr": 1.0 - tar,
            "balanced_accuracy": (tar + 1.0 - far) / 2.0,
        }

    def rates_table(self, thresholds: np.ndarray) -> dict[str, list[float]]:
        """TAR and FAR at each of ``thresholds`` (deciding ``score >= t``), measured like
        :meth:`rates_at`. A compact ROC drops the points between its vertices, so it cannot
        say what happens at an arbitrary threshold; this table can (the page's slider)."""
        t = np.asarray(thresholds, np.float64)
        tar = self.genuine.counts_at_least(t) / max(self.genuine.n, 1)
        far = self.impostor.counts_at_least(t) / max(self.impostor.n, 1)
        return {"threshold": t.tolist(), "tar": tar.tolist(), "far": far.tolist()}

    def summary(self) -> dict:
        return {
            "genuine_pairs": self.genuine.n,
            "impostor_pairs_scored": self.impostor.n,
            "impostor_pairs_total": self.n_impostor_total,
            "impostor_pairs": "seeded sample" if self.impostor_sampled else "all",
            "sample_seed": self.seed if self.impostor_sampled else None,
            "genuine_scores": "exact" if self.genuine.exact else "histogram",
            "impostor_scores": "exact" if self.impostor.exact else "histogram",
            "histogram_bin_width": self.impostor.bin_width or self.genuine.bin_width,
        }


def pair_counts(labels: np.ndarray) -> tuple[int, int]:
    """(genuine, impostor) unordered pair counts of a labelled set."""
    _, sizes = np.unique(np.asarray(labels), return_counts=True)
    n = int(sizes.sum())
    gen = int((sizes.astype(np.int64) * (sizes - 1) // 2).sum())
    return gen, n * (n - 1) // 2 - gen


def score_all_pairs(
    embeddings: np.ndarray,
    labels: np.ndarray,
    max_impostors: int | None = DEFAULT_MAX_IMPOSTORS,
    sample_size: int = DEFAULT_IMPOSTOR_SAMPLE,
    seed: int = 0,
    exact_limit: int = EXACT_LIMIT,
    block_elems: int = BLOCK_ELEMS,
    progress: bool = False,
) -> ScoredPairs:
    """Score every genuine pair and every impostor pair (or, when there are more than
    ``max_impostors`` of them, a seeded uniform sample of ``sample_size``).

    ``embeddings`` are unit vectors (cosine = dot product); ``labels`` any hashable ids.
    Memory: the sorted embeddings, one block of ``block_elems`` scores and two ScoreSets.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    codes = np.unique(np.asarray(labels), return_inverse=True)[1].reshape(-1)
    if emb.ndim != 2 or len(emb) != len(codes):
        raise ValueError(f"embeddings {emb.shape} and labels ({len(codes)}) do not match")
    order = np.argsort(codes, kind="stable")
    e = np.ascontiguousarray(emb[order])
    codes = codes[order]
    n = len(e)
    ends = np.flatnonzero(np.diff(codes)) + 1
    ends = np.concatenate([ends, [n]]).astype(np.int64)
    n_gen, n_imp = pair_counts(codes)
    sample = max_impostors is not None and n_imp > max_impostors
    genuine = ScoreSet(n_gen, exact_limit)
    impostor = ScoreSet(min(sample_size, n_imp) if sample else n_imp, exact_limit, True)
    notes: list[str] = []
    if sample:
        notes.append(
            f"impostor pairs: a seeded uniform sample of {impostor.expected:,} of {n_imp:,} "
            f"(seed {seed}); FAR below ~10/{impostor.expected:,} is noisy"
        )
    if not (genuine.exact and impostor.exact):
        notes.append(
            "scores kept as a 2^20-bin histogram (width 1.9e-06); quantisation errs on the "
            "pessimistic side (impostors rounded up, genuines down)"
        )
    ident_end = np.repeat(ends, np.diff(np.concatenate([[0], ends])))  # per row
    rows = int(min(n, max(BLOCK_ROWS, block_elems // max(n, 1))))
    limit = _blas_single_thread() if n < SINGLE_THREAD_BELOW else contextlib.nullcontext()
    with tqdm(total=n, desc="scoring", unit="img", disable=not progress) as bar, limit:
        if sample:
            _score_genuine(e, ends, ident_end, genuine, rows, bar)
            _sample_impostors(e, codes, impostor, seed)
        else:
            _score_all(e, ident_end, genuine, impostor, rows, bar)
    return ScoredPairs(genuine, impostor, n_gen, n_imp, sample, seed, notes)


def _find_blas():
    """The loaded BLAS libraries' thread controls, found once per process at import time
    (scanning the process's libraries takes tens of ms: library set-up, not scoring work)."""
    try:
        from threadpoolctl import ThreadpoolController  # scikit-learn's own dependency

        return ThreadpoolController().select(user_api="blas")
    except Exception:  # noqa: BLE001 - thread limiting is an optimisation, never required
        return None


_BLAS = _find_blas()


def _blas_single_thread():
    return _BLAS.limit(limits=1) if _BLAS is not None else contextlib.nullcontext()


def _segments(ident_end: np.ndarray, r0: int, r1: int) -> Iterator[tuple[int, int, int]]:
    """(s0, s1, b): runs of rows of one identity inside [r0, r1); b ends that identity."""
    s0 = r0
    while s0 < r1:
        b = int(ident_end[s0])
        yield s0, min(r1, b), b
        s0 = min(r1, b)


class _Triu:
    """Cached strict-upper-triangle indices of (rows, cols) rectangles."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        if (rows, cols) not in self._cache:
            self._cache[(rows, cols)] = np.triu_indices(rows, k=1, m=cols)
        return self._cache[(rows, cols)]


def _score_all(e, ident_end, genuine: ScoreSet, impostor: ScoreSet, rows: int, bar) -> None:
    """Every pair i < j, by row blocks: the block's own square with a symmetric rank-k update
    (BLAS syrk, half the work of a product), the rest of its rows with one product."""
    from scipy.linalg.blas import ssyrk

    n = len(e)
    triu = _Triu()
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        sq = ssyrk(1.0, e[r0:r1].T, trans=1)  # upper triangle of e[r0:r1] @ e[r0:r1].T
        right = e[r0:r1] @ e[r1:].T if r1 < n else None
        for s0, s1, b in _segments(ident_end, r0, r1):
            rs = slice(s0 - r0, s1 - r0)
            cend = min(b, r1) - r0
            genuine.add(sq[rs, s0 - r0 : cend][triu(s1 - s0, cend - (s0 - r0))])
            if b < r1:
                impostor.add(sq[rs, b - r0 :])
            if right is not None:
                if b > r1:
                    genuine.add(right[rs, : b - r1])
                impostor.add(right[rs, max(b - r1, 0) :])
        bar.update(r1 - r0)


def _score_genuine(e, ends, ident_end, genuine: ScoreSet, rows: int, bar) -> None:
    """Only the pairs within each identity (impostors are sampled separately)."""
    triu = _Triu()
    starts = np.concatenate([[0], ends[:-1]])
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        for s0 in range(a, b, rows):
            s1 = min(b, s0 + rows)
            block = e[s0:s1] @ e[s0:b].T
            genuine.add(block[triu(s1 - s0, b - s0)])
        bar.update(b - a)


def _sample_impostors(e: np.ndarray, codes: np.ndarray, out: ScoreSet, seed: int) -> None:
    """Uniform (with replacement) impostor pairs, scored in chunks of gathered rows."""
    rng = np.random.default_rng(seed)
    n, need, chunk = len(e), out.expected, 1 << 14
    while out.n < need:
        k = min(chunk, need - out.n)
        i = rng.integers(0, n, 2 * k + 64)
        j = rng.integers(0, n, 2 * k + 64)
        keep = codes[i] != codes[j]
        i, j = i[keep][:k], j[keep][:k]
        out.add(np.einsum("ij,ij->i", e[i], e[j]))
