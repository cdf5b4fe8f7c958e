"""Evaluation results -> ``report.json``, plots and a terminal summary.

The report is meant to answer "which threshold should I use, and what error rates will it
give on data like this?", so besides AUC it carries TAR at fixed FARs with their thresholds,
the measured rates at the model's stored threshold, how many pairs stand behind each number
(and which FARs are too small to measure), and a compact ROC for comparisons.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from siamface.fileio import atomic_write
from siamface.scores.metrics import VerificationMetrics, far_key, roc_points
from siamface.scores.pairs import ScoredPairs

REPORT_NAME = "report.json"
PLOT_NAMES = {"roc": "roc.png", "det": "det.png", "histogram": "scores.png"}


def model_section(embedder) -> dict:
    """What identifies the evaluated model (path, weights fingerprint, contract)."""
    ckpt = getattr(embedder, "checkpoint", None)
    return {
        "path": str(embedder.source),
        "fingerprint": embedder.fingerprint,
        "backbone": ckpt.model_cfg.backbone if ckpt is not None else None,
        "embedding_size": embedder.embedding_size,
        "preprocessing": embedder.preprocessing.to_dict(),
        "stored_threshold": embedder.threshold,
        "card": embedder.card() if hasattr(embedder, "card") else {},
    }


def curve_and_metrics(
    scored: ScoredPairs, fars: tuple[float, ...]
) -> tuple[VerificationMetrics, dict]:
    """Metrics plus a compact ROC (one scikit-learn ROC computation for both)."""
    from siamface.scores.plots import resample_curve  # lazy: matplotlib, PIL

    m = scored.metrics(fars)
    scores, labels, weights = scored.weighted()
    fpr, tpr, thr = roc_points(scores, labels, weights)
    return m, resample_curve(fpr, tpr, thr, min_far=1.0 / max(m.n_impostor, 1))


def operating_points(scored: ScoredPairs, m: VerificationMetrics, stored: dict | None) -> dict:
    """Measured rates at the thresholds a user may pick (stored, EER, best accuracy, FARs)."""
    out: dict[str, dict] = {}
    if stored and stored.get("value") is not None:
        out["stored_threshold"] = scored.rates_at(float(stored["value"]))
    out["eer"] = scored.rates_at(m.eer_threshold)
    out["best_accuracy"] = scored.rates_at(m.best_accuracy_threshold)
    for key, t in m.threshold_at_far.items():
        if t is not None:
            out[f"far_{key}"] = scored.rates_at(t)
    return out


def write_plots(
    out_dir: Path, scored: ScoredPairs, m: VerificationMetrics, curve: dict, stored: dict | None
) -> dict[str, str]:
    from siamface.scores.plots import plot_det, plot_histograms, plot_roc  # lazy: matplotlib, PIL

    g_lo, g_hi = scored.genuine.quantile_range(0.0005, 0.9995)
    i_lo, i_hi = scored.impostor.quantile_range(0.0005, 0.9995)
    lo, hi = max(-1.0, min(g_lo, i_lo) - 0.02), min(1.0, max(g_hi, i_hi) + 0.02)
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-3, 101)
    thresholds: dict[str, float] = {}
    if stored and stored.get("value") is not None:
        thresholds["stored threshold"] = float(stored["value"])
    thresholds["EER"] = m.eer_threshold
    t3 = m.threshold_at_far.get(far_key(1e-3))
    if t3 is not None:
        thresholds["FAR 1e-3"] = t3
    plot_roc(out_dir / PLOT_NAMES["roc"], curve, m)
    plot_det(out_dir / PLOT_NAMES["det"], curve, m)
    plot_histograms(
        out_dir / PLOT_NAMES["histogram"],
        edges,
        scored.genuine.histogram(edges),
        scored.impostor.histogram(edges),
        thresholds,
    )
    return dict(PLOT_NAMES)


def write_report(out_dir: Path, report: dict) -> Path:
    path = out_dir / REPORT_NAME
    text = json.dumps(report, indent=1, ensure_ascii=False, default=_jsonable)
    atomic_write(path, lambda p: p.write_text(text + "\n", encoding="utf-8"))
    return path


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def summary_lines(report: dict) -> list[str]:
    """A human-readable digest of a report for the terminal."""
    d, p, m = report["data"], report["pairs"], report["metrics"]
    lines = [
        f"model: {report['model']['path']} (fingerprint {report['model']['fingerprint']})",
        f"data: {d['identities']} identities, {d['images_embedded']} images embedded"
        + (f", {len(d['unreadable'])} unreadable skipped" if d.get("unreadable") else ""),
        f"pairs: {p['genuine_pairs']:,} genuine, {p['impostor_pairs_scored']:,} impostor"
        + (
            f" (seeded sample of {p['impostor_pairs_total']:,})"
            if p.get("impostor_pairs") == "seeded sample"
            else ""
        ),
        f"AUC {m['auc']:.4f}   EER {m['eer']:.4f} (threshold {m['eer_threshold']:.4f})",
        f"best balanced accuracy {m['best_accuracy']:.4f} at threshold "
        f"{m['best_accuracy_threshold']:.4f}",
    ]
    for key, tar in m["tar_at_far"].items():
        thr = m["threshold_at_far"][key]
        lines.append(
            f"TAR @ FAR {key}: "
            + (f"{tar:.4f} (threshold {thr:.4f})" if tar is not None else "not measurable")
        )
    kf = report.get("kfold")
    if kf:
        lines.append(
            f"{kf['folds']}-fold accuracy: {kf['accuracy_mean']:.4f} +- {kf['accuracy_std']:.4f}"
        )
    kd = report.get("kfold_draws")
    if kd:
        a = kd["accuracy"]
        lines.append(
            f"{kd['folds']}-fold accuracy over {kd['draws']} drawn pairs files "
            f"({kd['pairs_per_fold']} pairs of each kind per fold): {a['mean']:.4f} "
            f"(90% of draws {a['p5']:.4f}-{a['p95']:.4f})"
        )
    st = report.get("operating_points", {}).get("stored_threshold")
    if st:
        lines.append(
            f"at the stored threshold {st['threshold']:.4f}: TAR {st['tar']:.4f}, "
            f"FAR {st['far']:.2e}, balanced accuracy {st['balanced_accuracy']:.4f}"
        )
    elif report["model"].get("stored_threshold") is None:
        lines.append("the model has no stored threshold (siamface calibrate sets one)")
    lines += [f"note: {n}" for n in report.get("notes", [])]
    return lines
