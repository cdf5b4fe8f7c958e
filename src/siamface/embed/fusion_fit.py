"""Learning a fusion (``siamface fuse``): which members are centred, their weights, the record.

The fusion itself, a :class:`~siamface.embed.fusion.FusedEmbedder`, only applies what is
learnt here: each member's optional centre, then the weighted concatenation. Learning happens
on labelled pairs of validation people (people the fused model will not be tested on):

* :func:`siamface.embed.centring.choose_centres`: which members are centred on the fitting
  people's mean face (only where a member's own AUC rises on people the mean never saw);
* :func:`fit_fusion`: the weights, from the (centred) members' cosines;
* :func:`fusion_record`: the JSON record of all of it, with provenance.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import numpy as np

from siamface.embed.base import Embedder
from siamface.embed.fusion import FORMAT, FORMAT_VERSION
from siamface.errors import SiamfaceError
from siamface.version import __version__

#: How ``siamface fuse`` chooses the weights.
OBJECTIVES = ("logistic", "tar")


def fit_fusion(
    scores: np.ndarray,
    same: np.ndarray,
    c: float = 100.0,
    objective: str = "logistic",
    far: float = 1e-3,
    seed: int = 0,
) -> dict:
    """Member weights from the members' cosines on labelled pairs (one column each).

    ``logistic``: a logistic regression of same/different on the cosines, classes weighted to
    balance (impostor pairs outnumber genuine ones by orders of magnitude); its coefficients,
    normalised, are the weights. It fits the bulk of the pairs, where most pairs are easy.
    ``tar``: the weights (on the simplex: a grid for two members, the regression's weights
    plus seeded random ones for more) that accept the most genuine pairs at false-accept
    rates ``far`` and ``10 * far`` (their mean TAR): the low-FAR end that identity checks
    run at. Either way a member with a non-positive weight is dropped (a cosine cannot carry
    a negative weight) and the regression's probability on the fused score becomes the pair
    head. Returns ``{"coef", "intercept", "weights", "scale", "bias", "objective"}`` where
    ``weights`` sum to 1 and ``sigmoid(scale * (fused_cosine - bias))`` is the probability.
    """
    from sklearn.linear_model import LogisticRegression

    if objective not in OBJECTIVES:
        raise SiamfaceError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    x = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    if x.ndim != 2 or x.shape[1] < 2:
        raise SiamfaceError("fusion needs the scores of at least two models")
    if y.all() or not y.any():
        raise SiamfaceError("fusion needs both genuine and impostor pairs")
    active = list(range(x.shape[1]))
    while True:
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=1000)
        lr.fit(x[:, active], y)
        coef = lr.coef_[0]
        if (coef > 0).all() or len(active) == 1:
            break
        active = [a for a, b in zip(active, coef, strict=True) if b > 0] or active[:1]
    beta = np.zeros(x.shape[1])
    beta[active] = np.maximum(coef, 1e-9)
    weights = beta / beta.sum()
    if objective == "tar":
        weights = _tar_weights(x, y, weights, far, seed)
    # The probability on the fused score: a 1-d regression (same as above for "logistic").
    fused = (x @ weights)[:, None]
    head = LogisticRegression(C=c, class_weight="balanced", max_iter=1000).fit(fused, y)
    scale = max(float(head.coef_[0][0]), 1e-9)
    b0 = float(head.intercept_[0])
    return {
        "coef": [float(v * scale) for v in weights],
        "intercept": b0,
        "weights": [float(v) for v in weights],
        "scale": scale,
        "bias": -b0 / scale,
        "objective": objective,
    }


def _tar_weights(x: np.ndarray, y: np.ndarray, start: np.ndarray, far: float, seed: int):
    """The candidate weights with the best mean TAR at ``far`` and ``10 * far``."""
    from sklearn.metrics import roc_curve

    k = x.shape[1]
    if k == 2:
        grid = np.linspace(0.0, 1.0, 101)
        cands = np.stack([grid, 1.0 - grid], axis=1)
    else:
        cands = np.random.default_rng(seed).dirichlet(np.ones(k), 400)
    cands = np.vstack([start[None, :], cands])

    def value(w: np.ndarray) -> float:
        fpr, tpr, _ = roc_curve(y, x @ w)
        return float(np.mean([tpr[fpr <= f].max() for f in (far, 10 * far)]))

    vals = [value(w) for w in cands]
    return cands[int(np.argmax(vals))]


def fusion_record(
    members: Sequence[tuple[str, Embedder]],
    fit: dict,
    threshold: dict,
    provenance: dict,
    centres: Sequence[np.ndarray | None] | None = None,
) -> dict:
    """The JSON record of a learned fusion (``centres``: per member, from
    :func:`siamface.embed.centring.choose_centres`)."""
    import sklearn

    centres = list(centres) if centres is not None else [None] * len(members)
    out = []
    for (ref, e), w, c in zip(members, fit["weights"], centres, strict=True):
        m = {"model": ref, "fingerprint": e.fingerprint, "weight": w}
        if c is not None:
            m["centre"] = [round(float(v), 7) for v in c]
        out.append(m)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "members": out,
        "threshold": threshold,
        "pair_head": {"scale": fit["scale"], "bias": fit["bias"]},
        "logistic": {"coef": fit["coef"], "intercept": fit["intercept"]},
        "objective": fit.get("objective", "logistic"),
        "provenance": {
            **provenance,
            "method": "logistic regression on member cosines (class-balanced)"
            + (
                ", members centred where it helped held-out people"
                if any(c is not None for c in centres)
                else ""
            ),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "siamface_version": __version__,
            "sklearn_version": sklearn.__version__,
        },
    }


def fusion_pairs(
    labels: Sequence[str], max_impostors: int = 200_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs to fit a fusion on: every genuine pair and a seeded sample of impostor pairs
    (all of them when there are fewer). Returns (i, j, same) index arrays, i < j."""
    lab = np.asarray(labels)
    n = len(lab)
    _, codes = np.unique(lab, return_inverse=True)
    gi, gj = [], []
    for c in np.unique(codes):
        idx = np.flatnonzero(codes == c)
        a, b = np.triu_indices(len(idx), k=1)
        gi.append(idx[a])
        gj.append(idx[b])
    gen_i = np.concatenate(gi) if gi else np.zeros(0, int)
    gen_j = np.concatenate(gj) if gj else np.zeros(0, int)
    n_imp = n * (n - 1) // 2 - len(gen_i)
    rng = np.random.default_rng(seed)
    if n_imp <= max_impostors:
        a, b = np.triu_indices(n, k=1)
        keep = codes[a] != codes[b]
        imp_i, imp_j = a[keep], b[keep]
    else:
        draws = int(max_impostors * 1.3) + 100
        a = rng.integers(0, n, draws)
        b = rng.integers(0, n, draws)
        keep = codes[a] != codes[b]
        lo, hi = np.minimum(a, b)[keep], np.maximum(a, b)[keep]
        pairs = np.unique(lo.astype(np.int64) * n + hi)
        pairs = rng.permutation(pairs)[:max_impostors]
        imp_i, imp_j = pairs // n, pairs % n
    i = np.concatenate([gen_i, imp_i]).astype(np.int64)
    j = np.concatenate([gen_j, imp_j]).astype(np.int64)
    same = np.concatenate([np.ones(len(gen_i), bool), np.zeros(len(imp_i), bool)])
    return i, j, same
