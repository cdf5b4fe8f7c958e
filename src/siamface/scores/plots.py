"""Verification plots: ROC on a log-FAR axis, DET on normal-deviate axes, score histograms.

Face verification is used at low false-accept rates, which a linear ROC (as in the article)
squeezes into the left edge; a log FAR axis and a DET plot show that region. Plots are drawn
on ``matplotlib.figure.Figure`` objects (Agg canvas, no pyplot state), so they work headless
and never change the caller's matplotlib backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import norm

from siamface.fileio import atomic_write
from siamface.scores.metrics import VerificationMetrics


def resample_curve(
    fpr: np.ndarray, tpr: np.ndarray, thr: np.ndarray, points: int = 200, min_far: float = 1e-6
) -> dict[str, list[float]]:
    """A compact ROC: the best TAR (and its threshold) at log-spaced FARs, plus FAR = 0.

    ROC arrays can hold a million points; this keeps what a plot or a comparison needs.
    """
    lo = max(min_far, float(fpr[fpr > 0].min()) if (fpr > 0).any() else 1.0)
    grid = np.unique(np.concatenate([np.logspace(np.log10(lo), 0, points), [1.0]]))
    idx = np.searchsorted(fpr, grid, side="right") - 1  # last ROC point with FAR <= x
    idx = np.unique(np.concatenate([[0], idx[idx >= 0], [len(fpr) - 1]]))
    return {
        "far": fpr[idx].tolist(),
        "tar": tpr[idx].tolist(),
        "threshold": thr[idx].tolist(),
    }


def _save(fig: Figure, path: Path) -> Path:
    # Atomic like every output: a full disk leaves the previous plot, not half a PNG.
    fmt = path.suffix.lstrip(".") or "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=110, bbox_inches="tight"))
    return path


def plot_roc(path: Path, curve: dict, m: VerificationMetrics, title: str = "ROC") -> Path:
    """TAR against FAR with FAR on a log axis from 1/#impostor pairs to 1."""
    far, tar = np.asarray(curve["far"]), np.asarray(curve["tar"])
    floor = 1.0 / max(m.n_impostor, 1)
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    keep = far > 0
    ax.step(far[keep], tar[keep], where="post", label=f"model (AUC {m.auc:.4f})")
    x = np.logspace(np.log10(floor), 0, 100)
    ax.plot(x, x, ls=":", color="grey", label="chance")
    for key, t in m.tar_at_far.items():
        if t is not None:
            ax.plot(float(key), t, "o", color="C3")
            ax.annotate(f"{t:.3f}", (float(key), t), textcoords="offset points", xytext=(4, -12))
    ax.axvline(floor, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel(f"false accept rate (log; dashed: 1/{m.n_impostor:,} impostor pairs)")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_det(path: Path, curve: dict, m: VerificationMetrics, title: str = "DET") -> Path:
    """False reject against false accept rate, both on normal-deviate (probit) axes."""
    far = np.asarray(curve["far"])
    frr = 1.0 - np.asarray(curve["tar"])
    floor = 1.0 / max(m.n_impostor, 1)
    fn_floor = 1.0 / max(m.n_genuine, 1)
    keep = (far > 0) & (frr > 0)
    fig = Figure(figsize=(5.6, 5.2))
    ax = fig.add_subplot()
    ax.plot(norm.ppf(far[keep]), norm.ppf(frr[keep]), label="model")
    ax.plot(norm.ppf(m.eer), norm.ppf(m.eer), "o", color="C3", label=f"EER {m.eer:.4f}")
    ticks = np.array([1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99])
    xt = ticks[ticks >= floor / 1.01]
    yt = ticks[ticks >= fn_floor / 1.01]
    ax.set_xticks(norm.ppf(xt), [_short(t) for t in xt])
    ax.set_yticks(norm.ppf(yt), [_short(t) for t in yt])
    ax.set_xlim(norm.ppf(floor), norm.ppf(0.99))
    ax.set_ylim(norm.ppf(fn_floor), norm.ppf(0.99))
    ax.set_xlabel("false accept rate (probit scale)")
    ax.set_ylabel("false reject rate (probit scale)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    return _save(fig, path)


def _short(rate: float) -> str:
    """Compact tick label: 1e-4, 1e-3, 1%, 5%, 50% (probit ticks crowd at low rates)."""
    return f"{rate:.0e}".replace("e-0", "e-") if rate < 0.01 else f"{rate:.0%}"


def plot_histograms(
    path: Path,
    edges: np.ndarray,
    genuine: np.ndarray,
    impostor: np.ndarray,
    thresholds: dict[str, float],
    title: str = "score distributions",
) -> Path:
    """Genuine and impostor score densities (each normalised to area 1), thresholds marked."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    width = np.diff(edges)
    for counts, label, color in ((genuine, "same person", "C2"), (impostor, "different", "C3")):
        total = counts.sum()
        dens = counts / (total * width) if total else counts
        ax.stairs(dens, edges, fill=True, alpha=0.35, color=color, label=f"{label} ({total:,})")
    styles = ["-", "--", ":", "-."]
    for k, (name, value) in enumerate(thresholds.items()):
        ax.axvline(value, color="k", ls=styles[k % 4], lw=1.2, label=f"{name}: {value:.3f}")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)
