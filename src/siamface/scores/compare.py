"""Two models on the same people, and faces under a camera condition: ``siamface evaluate
--compare`` and ``--condition``.

A claim such as "the fine-tuned model is better" is a statement about a difference on the same
people; :func:`compare_folders` and :func:`compare_pairs_file` score both models on the same
pairs (under the same degradation of every image) and report each metric's difference with a
95 % interval by bootstrap over identities (:mod:`siamface.scores.bootstrap`).

A condition (:mod:`siamface.tensors.conditions`) is applied to the aligned face crop of every
image, keyed by its path, so both models see identical pixels. ``probe_only``: pairs compare an
enrolled (clean) photo with a probe seen under the condition, as a gallery enrolled at a desk
and queried from a camera.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from siamface.embed.pipeline import embed_files
from siamface.errors import SiamfaceError
from siamface.scores.bootstrap import (
    METRICS,
    clusters_of,
    compare,
    format_delta,
    histograms_all_pairs,
    histograms_from_pairs,
)
from siamface.tensors.conditions import Condition, path_key

MAX_CLUSTERS = 80


class ConditionedLoader:
    """A face loader whose faces are degraded by ``condition`` (picklable for workers)."""

    def __init__(self, loader, condition: Condition) -> None:
        self.loader = loader
        self.condition = condition

    def __call__(self, path: Path) -> np.ndarray:
        return self.condition.apply(self.loader(path), path_key(path))


class ConditionedEmbedder:
    """An embedder that sees every image under ``condition``; everything else delegates."""

    def __init__(self, embedder, condition: Condition) -> None:
        why = getattr(embedder, "condition_refusal", None)
        if why:  # degrading the wrong pixels would give figures that mean nothing, silently
            raise SiamfaceError(
                f"cannot show {embedder.source} faces under a condition: {why}. Degrade the "
                "photos instead (siamface data camera-copy for CCTV) and evaluate that copy, "
                "or use the condition with an ArcFace-aligned model"
            )
        self._inner = embedder
        self.condition = condition

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def face_loader(self):
        return ConditionedLoader(self._inner.face_loader(), self.condition)

    def embed_paths(self, paths, batch_size=64, workers=None, progress=True):
        return embed_files(
            self._inner.embed_batch,
            [Path(p) for p in paths],
            self._inner.preprocessing,
            batch_size=batch_size,
            workers=workers,
            loader=self.face_loader(),
            progress=progress,
        )


def _embed(embedder, paths: Sequence[Path], condition: Condition | None, **kw) -> np.ndarray:
    e = ConditionedEmbedder(embedder, condition) if condition else embedder
    emb, errors = e.embed_paths(list(paths), **kw)
    if errors:
        i, why = next(iter(errors.items()))
        raise SiamfaceError(
            f"cannot compare: {len(errors)} image(s) unreadable by {embedder.source}, e.g. "
            f"{paths[i]}: {why}; remove them or compare on a folder without them"
        )
    return emb


def _views(embedder, paths, condition, probe_only, **kw) -> tuple[np.ndarray, np.ndarray | None]:
    """(enrolled embeddings, probe embeddings or None when both sides are the same)."""
    if condition and probe_only:
        return _embed(embedder, paths, None, **kw), _embed(embedder, paths, condition, **kw)
    return _embed(embedder, paths, condition, **kw), None


def _report(result: dict, new, ref, extra: dict) -> dict:
    sig_better = [k for k, r in result.items() if r["significant"] == "better"]
    sig_worse = [k for k, r in result.items() if r["significant"] == "worse"]
    if sig_worse:
        verdict = f"significantly worse on {', '.join(sig_worse)}"
    elif sig_better:
        verdict = f"significantly better on {', '.join(sig_better)}, worse on none"
    else:
        verdict = "no significant difference on any metric"
    return {
        "protocol": extra.pop("protocol"),
        "model": str(new.source),
        "compare_with": str(ref.source),
        **extra,
        "metrics": result,
        "verdict": verdict,
    }


def compare_folders(
    new,
    ref,
    paths: Sequence[Path],
    labels: Sequence[str],
    condition: Condition | None = None,
    probe_only: bool = False,
    replicates: int = 1000,
    seed: int = 0,
    kfold_draws: int = 0,
    per_fold: int = 300,
    folds: int = 10,
    **kw,
) -> dict:
    """All pairs of labelled images, both models, paired bootstrap over identities.

    ``kfold_draws``: also both models' ``folds``-fold accuracy on the same generated pairs files and
    the difference per draw (:mod:`siamface.scores.kfold_draws`)."""
    if len(set(labels)) < 2:
        raise SiamfaceError("comparison needs at least 2 identities")
    groups = clusters_of(labels, MAX_CLUSTERS, seed)
    hists, views = [], {}
    for name, model in (("model", new), ("compare_with", ref)):
        a, b = _views(model, paths, condition, probe_only, **kw)
        views[name] = (a, b)
        hists.append(histograms_all_pairs(a, labels, groups, probe=b))
    result = compare(hists[0], hists[1], replicates, seed)
    extra = {}
    if kfold_draws:
        from siamface.scores.kfold_draws import paired_kfold_draws  # lazy: PIL via protocol

        extra["kfold_draws"] = paired_kfold_draws(
            views, [str(x) for x in labels], kfold_draws, per_fold, seed, folds
        )
    return _report(
        result,
        new,
        ref,
        {
            "protocol": "all-pairs",
            "condition": condition.spec if condition else None,
            "probe_only": bool(condition and probe_only),
            "identities": len(set(labels)),
            "images": len(paths),
            "bootstrap": {"replicates": replicates, "groups": int(groups.max()) + 1},
            **extra,
        },
    )


def compare_pairs_file(
    new,
    ref,
    pairs_path: str | Path,
    root: str | Path,
    condition: Condition | None = None,
    probe_only: bool = False,
    replicates: int = 1000,
    seed: int = 0,
    **kw,
) -> dict:
    """The listed pairs only; identities are the pairs' names, resampled as groups."""
    from siamface.scores.protocol import read_pairs, resolve_pairs  # lazy: PIL

    pairs_path = Path(pairs_path).expanduser()
    pf = read_pairs(pairs_path)
    files = resolve_pairs(pf, root, pairs_path)
    unique = sorted({f for ab in files for f in ab})
    pos = {f: k for k, f in enumerate(unique)}
    names = [p.name_a for p in pf.pairs] + [p.name_b for p in pf.pairs]
    groups = clusters_of(names, MAX_CLUSTERS, seed)
    n = len(pf.pairs)
    ca, cb = groups[:n], groups[n:]
    ia = np.array([pos[x] for x, _ in files])
    ib = np.array([pos[y] for _, y in files])
    hists = []
    for model in (new, ref):
        a, b = _views(model, unique, condition, probe_only, **kw)
        b = a if b is None else b
        scores = np.einsum("ij,ij->i", a[ia], b[ib])
        hists.append(histograms_from_pairs(ca, cb, scores, pf.labels, int(groups.max()) + 1))
    result = compare(hists[0], hists[1], replicates, seed)
    return _report(
        result,
        new,
        ref,
        {
            "protocol": "pairs-file",
            "pairs_file": str(pairs_path),
            "condition": condition.spec if condition else None,
            "probe_only": bool(condition and probe_only),
            "identities": len(set(names)),
            "pairs": n,
            "bootstrap": {"replicates": replicates, "groups": int(groups.max()) + 1},
        },
    )


def summary_lines(rep: dict) -> list[str]:
    """The comparison as a person reads it."""
    cond = f" under {rep['condition']}" + (" (probe only)" if rep["probe_only"] else "")
    lines = [
        f"{rep['model']} vs {rep['compare_with']} on {rep['identities']} identities"
        + (cond if rep.get("condition") else "")
        + f" ({rep['protocol']}; 95% CI, bootstrap over identities)",
    ]
    for name in METRICS:
        r = rep["metrics"][name]
        mark = {"better": "  better", "worse": "  WORSE"}.get(r["significant"] or "", "")
        lines.append(
            f"  {name:16s} {r['new']:.4f} vs {r['ref']:.4f}   {format_delta('delta', r)}{mark}"
        )
    kd = rep.get("kfold_draws")
    if kd:
        acc, d = kd["accuracy"], kd["delta"]
        lines.append(
            f"  {kd['folds']}-fold accuracy over {kd['draws']} drawn pairs files: "
            f"{acc['model']['mean']:.4f} vs {acc['compare_with']['mean']:.4f}   delta "
            f"{d['mean']:+.4f} (90% of draws {d['p5']:+.4f} to {d['p95']:+.4f})"
        )
    lines.append(f"verdict: {rep['verdict']}")
    return lines
