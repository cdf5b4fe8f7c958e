"""Verification metrics from similarity scores of genuine and impostor pairs.

All functions take ``scores`` (higher = more alike, here cosine similarity) and boolean
``labels`` (True = same person), and use scikit-learn's ROC so the numbers match what users
compute themselves. Rates below 1 / (number of impostor pairs) cannot be measured; those are
reported as ``None`` with a note instead of an optimistic extrapolation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.metrics import auc as area_under_curve
from sklearn.metrics import roc_auc_score, roc_curve

DEFAULT_FARS = (1e-1, 1e-2, 1e-3, 1e-4)


@dataclass
class VerificationMetrics:
    """Summary metrics of one set of scored pairs."""

    auc: float
    eer: float
    eer_threshold: float
    best_accuracy: float  # balanced: mean of TAR and TRR, as with LFW's equal pair counts
    best_accuracy_threshold: float
    tar_at_far: dict[str, float | None]
    threshold_at_far: dict[str, float | None]
    n_genuine: int
    n_impostor: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def headline(self) -> str:
        t3 = self.tar_at_far.get("1e-03")
        t3s = f"{t3:.4f}" if t3 is not None else "n/a"
        return (
            f"AUC {self.auc:.4f}  EER {self.eer:.4f}  TAR@FAR=1e-3 {t3s}  "
            f"acc {self.best_accuracy:.4f} @ {self.best_accuracy_threshold:.3f}"
        )


def far_key(far: float) -> str:
    """Stable dictionary key for a FAR value, e.g. 0.001 -> '1e-03'."""
    return f"{far:.0e}"


def tar_at_far(
    fpr: np.ndarray, tpr: np.ndarray, thr: np.ndarray, far: float
) -> tuple[float, float]:
    """Highest TAR whose FAR does not exceed ``far``, and the threshold giving it."""
    ok = np.flatnonzero(fpr <= far)
    i = ok[np.argmax(tpr[ok])]
    return float(tpr[i]), float(thr[i])


def verification_metrics(
    scores: np.ndarray, labels: np.ndarray, fars: tuple[float, ...] = DEFAULT_FARS
) -> VerificationMetrics:
    """AUC, EER, TAR at each FAR, best balanced accuracy and the thresholds behind them."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    n_gen, n_imp = int(labels.sum()), int((~labels).sum())
    if n_gen == 0 or n_imp == 0:
        raise ValueError(
            f"need both genuine and impostor pairs (got {n_gen} genuine, {n_imp} impostor)"
        )
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    thr = np.where(np.isinf(thr), np.nextafter(scores.max(), np.inf), thr)
    auc = float(roc_auc_score(labels, scores))
    return summarise_roc(fpr, tpr, thr, auc, n_gen, n_imp, fars)


def summarise_roc(
    fpr: np.ndarray,
    tpr: np.ndarray,
    thr: np.ndarray,
    auc: float,
    n_gen: int,
    n_imp: int,
    fars: tuple[float, ...],
) -> VerificationMetrics:
    """EER, best balanced accuracy and TAR at each FAR from ROC points (shared by the exact
    and the weighted/histogram paths)."""
    fnr = 1.0 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    bal = (tpr + (1.0 - fpr)) / 2.0
    j = int(np.argmax(bal))
    notes: list[str] = []
    tars: dict[str, float | None] = {}
    thrs: dict[str, float | None] = {}
    for far in fars:
        key = far_key(far)
        if far < 1.0 / n_imp:
            tars[key] = thrs[key] = None
            notes.append(f"FAR {key} is below 1/{n_imp} impostor pairs and cannot be measured here")
            continue
        tars[key], thrs[key] = tar_at_far(fpr, tpr, thr, far)
    return VerificationMetrics(
        auc=auc,
        eer=float((fpr[i] + fnr[i]) / 2.0),
        eer_threshold=float(thr[i]),
        best_accuracy=float(bal[j]),
        best_accuracy_threshold=float(thr[j]),
        tar_at_far=tars,
        threshold_at_far=thrs,
        n_genuine=n_gen,
        n_impostor=n_imp,
        notes=notes,
    )


def all_pair_scores(
    embeddings: np.ndarray, labels: np.ndarray, max_impostors: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and same/different labels of every unordered pair (i < j) of a small set.

    For validation during training (a few thousand images). When ``max_impostors`` is set,
    impostor pairs are subsampled (seeded) and every genuine pair is kept. Large sets go
    through the chunked scorer in :mod:`siamface.scores.pairs` instead.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    lab = np.asarray(labels)
    iu, ju = np.triu_indices(len(emb), k=1)
    same = lab[iu] == lab[ju]
    if max_impostors is not None and (~same).sum() > max_impostors:
        rng = np.random.default_rng(seed)
        imp = np.flatnonzero(~same)
        keep = np.concatenate([np.flatnonzero(same), rng.choice(imp, max_impostors, False)])
        iu, ju, same = iu[keep], ju[keep], same[keep]
    scores = np.einsum("ij,ij->i", emb[iu], emb[ju])
    return scores, same


def roc_points(
    scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's ROC (every distinct threshold kept) with the infinite first threshold
    replaced by a finite one just above the top score, so it can be stored and plotted."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    fpr, tpr, thr = roc_curve(labels, scores, sample_weight=weights, drop_intermediate=False)
    thr = np.where(np.isinf(thr), np.nextafter(scores.max(), np.inf), thr)
    return fpr, tpr, thr


def weighted_verification_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None = None,
    fars: tuple[float, ...] = DEFAULT_FARS,
) -> VerificationMetrics:
    """:func:`verification_metrics` for scores with multiplicities.

    Large evaluations keep score histograms (value, count) instead of millions of raw scores
    (see :mod:`siamface.scores.pairs`); passing the counts as scikit-learn sample weights
    gives exactly the metrics of the expanded score list. ``weights=None`` means all ones.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    w = np.ones(scores.size) if weights is None else np.asarray(weights, np.float64).ravel()
    n_gen, n_imp = int(round(w[labels].sum())), int(round(w[~labels].sum()))
    if n_gen == 0 or n_imp == 0:
        raise ValueError(
            f"need both genuine and impostor pairs (got {n_gen} genuine, {n_imp} impostor)"
        )
    fpr, tpr, thr = roc_points(scores, labels, weights)
    auc = float(area_under_curve(fpr, tpr))
    return summarise_roc(fpr, tpr, thr, auc, n_gen, n_imp, fars)
