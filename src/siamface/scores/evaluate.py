"""Model + data -> a verification report: the work behind ``siamface evaluate`` and
``siamface calibrate``.

Two protocols:

* **all pairs** of an identity-folder set (optionally restricted to some identities, e.g. the
  held-out validation identities of a training run): every genuine pair, every (or a seeded
  sample of) impostor pair, scored in bounded memory (:mod:`siamface.scores.pairs`);
* **pairs file** (LFW ``pairs.txt``): the listed pairs only, with 10-fold accuracy
  (:mod:`siamface.scores.protocol`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from siamface.errors import SiamfaceError
from siamface.scores.metrics import DEFAULT_FARS, VerificationMetrics
from siamface.scores.pairs import (
    DEFAULT_IMPOSTOR_SAMPLE,
    DEFAULT_MAX_IMPOSTORS,
    ScoredPairs,
    ScoreSet,
    score_all_pairs,
)
from siamface.scores.report import (
    curve_and_metrics,
    model_section,
    now_iso,
    operating_points,
    write_plots,
    write_report,
)
from siamface.version import __version__

#: Thresholds at which a report tabulates TAR and FAR: every 0.005 of cosine, -1..1.
RATE_GRID = np.round(np.linspace(-1.0, 1.0, 401), 3)


@dataclass
class Evaluation:
    """The JSON report plus the in-memory scores behind it (for calibration)."""

    report: dict
    scored: ScoredPairs
    metrics: VerificationMetrics


@dataclass
class LabelledImages:
    """Image paths with identities, after filtering, plus what was left out and why."""

    paths: list[Path]
    labels: list[str]
    roots: list[Path]
    identity_filter: str | None = None
    ignored: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------------- identities
def read_identity_list(spec: str) -> list[str]:
    """Identity names from ``spec``: a JSON file (a list, or a training run's
    ``dataset_report.json`` with ``val_identity_names``), a text file (one name a line) or
    a comma-separated list of names."""
    p = Path(spec).expanduser()
    if p.is_dir() and (p / "dataset_report.json").is_file():
        p = p / "dataset_report.json"
    if p.is_file():
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".json":
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                raise SiamfaceError(f"{p} is not valid JSON: {err}") from err
            if isinstance(obj, dict):
                obj = obj.get("val_identity_names", obj.get("identities"))
            if not isinstance(obj, list) or not all(isinstance(x, str) for x in obj):
                raise SiamfaceError(
                    f"{p}: expected a JSON list of identity names or a dataset_report.json "
                    "with 'val_identity_names'"
                )
            names = obj
        else:
            names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    elif Path(spec).suffix in (".json", ".txt"):
        raise SiamfaceError(f"identity list not found: {p}")
    else:
        names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise SiamfaceError(f"no identity names in {spec!r}")
    return names


def _run_report(run_dir: str | Path) -> tuple[Path, dict]:
    """(path, content) of a training run directory's ``dataset_report.json`` (or that file)."""
    run = Path(run_dir).expanduser()
    rep = run / "dataset_report.json" if run.is_dir() else run
    if not rep.is_file():
        raise SiamfaceError(f"{run} is not a training run directory (no dataset_report.json)")
    return rep, json.loads(rep.read_text(encoding="utf-8"))


def held_out_identities(run_dir: str | Path) -> list[str]:
    """The never-trained-on identities of a training run directory: its test identities
    (which chose nothing) when it has some, else its validation identities."""
    rep, report = _run_report(run_dir)
    names = report.get("test_identity_names") or report.get("val_identity_names") or []
    if not names:
        raise SiamfaceError(f"{rep} lists no validation identities (val_identities=0?)")
    return list(names)


def untrained_identities(run_dir: str | Path) -> list[str]:
    """Every identity a training run held out from training: its validation *and* test
    people. What a later fitting step (a fusion's weights) may use, once the run's own
    verdict on its test people is given: none of them moved the run's weights."""
    rep, report = _run_report(run_dir)
    names = list(report.get("val_identity_names") or []) + list(
        report.get("test_identity_names") or []
    )
    if not names:
        raise SiamfaceError(f"{rep} lists no validation or test identities")
    return names


def collect_images(data: Sequence[str | Path], identities: Sequence[str] | None = None):
    """Scan identity folders and keep the requested identities (all when None)."""
    from siamface.folders.identities import scan_identity_folders  # lazy: PIL

    scan = scan_identity_folders(list(data))
    samples = scan.samples
    filt = None
    if identities is not None:
        wanted = set(identities)
        known = set(scan.identities)
        missing = sorted(wanted - known)
        if missing:
            raise SiamfaceError(
                f"{len(missing)} requested identities are not folders under "
                f"{', '.join(map(str, scan.roots))}: {', '.join(missing[:5])}"
                + (" ..." if len(missing) > 5 else "")
            )
        samples = [s for s in samples if s.identity in wanted]
        filt = f"{len(wanted)} identities"
    return LabelledImages(
        paths=[s.path for s in samples],
        labels=[s.identity for s in samples],
        roots=scan.roots,
        identity_filter=filt,
        ignored=[{"path": str(p), "reason": r} for p, r in scan.ignored],
    )


def trained_on(
    model_path: str | Path, roots: Sequence[Path], identities: Sequence[str]
) -> tuple[Path, list[str]] | None:
    """(run directory, the given identities it trained on) when ``model_path`` is a training
    run's model and ``identities`` come from the same data roots; None when they do not or
    nothing overlaps (a model from elsewhere cannot be checked)."""
    p = Path(model_path).expanduser()
    run = p if p.is_dir() else p.parent
    rep, meta = run / "dataset_report.json", run / "run.json"
    if not (rep.is_file() and meta.is_file()):
        return None
    try:
        report = json.loads(rep.read_text())
        val = set(report.get("val_identity_names") or []) | set(
            report.get("test_identity_names") or []
        )
        data = [Path(d).expanduser().resolve() for d in json.loads(meta.read_text())["data"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if sorted(data) != sorted(Path(r).resolve() for r in roots):
        return None
    seen = sorted(set(identities) - val)
    return (run, seen) if seen else None


def training_overlap_note(
    model_path: str | Path, roots: Sequence[Path], identities: Sequence[str]
) -> str | None:
    """Warn when a run directory's model is evaluated on its own training identities."""
    hit = trained_on(model_path, roots, identities)
    if hit is None:
        return None
    run, seen = hit
    return (
        f"{len(seen)} of the {len(set(identities))} evaluated identities were used to train "
        f"this model ({run}); its numbers on them are optimistic. Evaluate on people it never "
        f"saw with --held-out {run}"
    )


# ------------------------------------------------------------------------- embedding
def embed_all(embedder, paths: Sequence[Path], batch_size: int, workers, progress: bool):
    """Embed ``paths``; returns (embeddings, kept indices, {index: reason})."""
    emb, errors = embedder.embed_paths(
        paths, batch_size=batch_size, workers=workers, progress=progress
    )
    kept = [i for i in range(len(paths)) if i not in errors]
    return emb, kept, errors


def _centre_fallback(embedder, paths: Sequence[Path], emb, kept, errors):
    """Embed the centre of every readable photo in ``errors`` where no face was found:
    (all embeddings in ``paths`` order, kept indices, remaining errors, centred paths)."""
    from siamface.faces.errors import NoFaceError  # lazy: PIL
    from siamface.folders.images import ImageLoadError, load_rgb  # lazy: PIL

    full = np.zeros((len(paths), embedder.embedding_size), dtype=np.float32)
    full[kept] = emb
    left, centred, done = {}, [], list(kept)
    for i, reason in errors.items():
        try:
            img = load_rgb(paths[i])
            try:
                embedder.face_array(img)
                left[i] = reason  # a face after all (a changed file): keep the error
                continue
            except NoFaceError:
                face = embedder.centre_face(img)
        except ImageLoadError:
            left[i] = reason
            continue
        full[i] = embedder.embed_batch(face.transpose(2, 0, 1)[None])[0]
        centred.append(str(paths[i]))
        done.append(i)
    return full, sorted(done), left, centred


# ------------------------------------------------------------------------- protocols
def evaluate_folders(
    embedder,
    images: LabelledImages,
    out_dir: Path | None,
    fars: tuple[float, ...] = DEFAULT_FARS,
    max_impostors: int | None = DEFAULT_MAX_IMPOSTORS,
    sample_size: int = DEFAULT_IMPOSTOR_SAMPLE,
    seed: int = 0,
    batch_size: int = 64,
    workers: int | None = None,
    plots: bool = True,
    progress: bool = True,
    kfold_draws: int = 0,
    per_fold: int = 300,
    folds: int = 10,
) -> Evaluation:
    """All-pairs evaluation of labelled images; writes report.json (+ plots) to ``out_dir``.

    ``kfold_draws``: also the LFW-style ``folds``-fold accuracy averaged over that many
    generated pairs files of ``per_fold`` pairs of each kind per fold (one generated file is
    a noisy estimate: :mod:`siamface.scores.kfold_draws`)."""
    t0 = time.perf_counter()
    if len(set(images.labels)) < 2:
        raise SiamfaceError("evaluation needs at least 2 identities (impostor pairs)")
    emb, kept, errors = embed_all(embedder, images.paths, batch_size, workers, progress)
    t1 = time.perf_counter()
    labels = np.array([images.labels[i] for i in kept])
    if len(set(labels.tolist())) < 2 or len(labels) < 3:
        raise SiamfaceError(
            f"only {len(labels)} readable images of {len(set(labels.tolist()))} identities: "
            "nothing to evaluate"
        )
    scored = score_all_pairs(emb, labels, max_impostors, sample_size, seed=seed, progress=progress)
    if scored.genuine.n == 0:
        raise SiamfaceError("no identity has two readable images: no genuine pairs to score")
    draws = None
    if kfold_draws:
        from siamface.scores.kfold_draws import kfold_draws_report  # lazy: PIL via protocol

        draws = kfold_draws_report(emb, labels.tolist(), kfold_draws, per_fold, seed, folds)
    t2 = time.perf_counter()
    return _finish(
        embedder,
        scored,
        out_dir,
        fars,
        plots,
        protocol="all-pairs",
        kfold_draws=draws,
        data={
            "roots": [str(r) for r in images.roots],
            "identity_filter": images.identity_filter,
            "identities": len(set(labels.tolist())),
            "images": len(images.paths),
            "images_embedded": len(kept),
            "unreadable": [{"path": str(images.paths[i]), "reason": r} for i, r in errors.items()],
            "ignored_files": len(images.ignored),
            "ignored": images.ignored,
        },
        timing={"embed_s": t1 - t0, "score_s": t2 - t1},
        extra_notes=[
            n
            for n in [
                training_overlap_note(embedder.source, images.roots, images.labels),
                _ignored_note(images.ignored),
            ]
            if n
        ],
    )


def evaluate_pairs_file(
    embedder,
    pairs_path: str | Path,
    root: str | Path,
    out_dir: Path | None,
    fars: tuple[float, ...] = DEFAULT_FARS,
    batch_size: int = 64,
    workers: int | None = None,
    plots: bool = True,
    progress: bool = True,
    probe_embedder=None,
    no_face: str = "centre",
) -> Evaluation:
    """The LFW pairs protocol: listed pairs, 10-fold accuracy, AUC and TAR at FAR.

    Every listed pair must be scored. A readable photo where no face is found is embedded
    from its centre (``no_face="centre"``, the framing of face-centred benchmark photos) and
    listed in the report (``data.no_face_centre``); ``no_face="error"`` stops instead.
    ``probe_embedder``: the second photo of each pair is embedded by it instead (e.g. the same
    model seeing the photo under a camera condition)."""
    from siamface.scores.protocol import kfold_accuracy, read_pairs, resolve_pairs  # lazy: PIL

    if no_face not in ("centre", "error"):
        raise SiamfaceError(f"no_face must be 'centre' or 'error', got {no_face!r}")
    t0 = time.perf_counter()
    pairs_path = Path(pairs_path).expanduser()
    pf = read_pairs(pairs_path)
    files = resolve_pairs(pf, root, pairs_path)
    unique = sorted({f for ab in files for f in ab})
    pos = {f: k for k, f in enumerate(unique)}
    emb, kept, errors = embed_all(embedder, unique, batch_size, workers, progress)
    centred: list[str] = []
    if errors and no_face == "centre":
        emb, kept, errors, centred = _centre_fallback(embedder, unique, emb, kept, errors)
    if errors:
        bad = {unique[i]: r for i, r in errors.items()}
        first = next(p for p, ab in zip(pf.pairs, files, strict=True) if set(ab) & set(bad))
        f = next(iter(bad))
        raise SiamfaceError(
            f"{pairs_path}, line {first.line}: cannot read {f}: {bad[f]} "
            f"({len(bad)} unreadable image(s) in all)"
        )
    t1 = time.perf_counter()
    emb_b = emb
    if probe_embedder is not None:
        emb_b, kept_b, errors_b = embed_all(probe_embedder, unique, batch_size, workers, progress)
        if errors_b and no_face == "centre":
            emb_b, _, errors_b, _ = _centre_fallback(
                probe_embedder, unique, emb_b, kept_b, errors_b
            )
        if errors_b:
            i, why = next(iter(errors_b.items()))
            raise SiamfaceError(f"{pairs_path}: cannot read {unique[i]} as a probe: {why}")
    a = emb[[pos[x] for x, _ in files]]
    b = emb_b[[pos[y] for _, y in files]]
    scores = np.einsum("ij,ij->i", a, b)
    same = pf.labels
    scored = ScoredPairs(
        _exact(scores[same]), _exact(scores[~same]), int(same.sum()), int((~same).sum())
    )
    kf = kfold_accuracy(scores, same, pf.fold_ids)
    t2 = time.perf_counter()
    notes = []
    if pf.folds == 1:
        notes.append("one fold only: the accuracy threshold is chosen and tested on the same pairs")
    return _finish(
        embedder,
        scored,
        out_dir,
        fars,
        plots,
        protocol="pairs-file",
        data={
            "pairs_file": str(pairs_path),
            "roots": [str(Path(root))],
            "identities": len({p.name_a for p in pf.pairs} | {p.name_b for p in pf.pairs}),
            "images": len(unique),
            "images_embedded": len(kept),
            "unreadable": [],
            "no_face_centre": centred,
            "folds": pf.folds,
            "pairs_per_fold": pf.per_fold,
        },
        timing={"embed_s": t1 - t0, "score_s": t2 - t1},
        kfold=kf.to_dict(),
        extra_notes=notes,
    )


def _ignored_note(ignored: list[dict]) -> str | None:
    """Files and folders that were not used, said once instead of silently dropped."""
    if not ignored:
        return None
    first = ignored[0]
    return (
        f"{len(ignored)} file(s) or folder(s) under the data were not used (not images, or "
        f"empty identity folders), e.g. {first['path']}: {first['reason']}"
    )


def _thin_far_notes(m: VerificationMetrics, min_pairs: int = 10) -> list[str]:
    """Measurable is not the same as reliable: flag FARs resting on a handful of pairs."""
    out = []
    for key, tar in m.tar_at_far.items():
        above = float(key) * m.n_impostor
        if tar is not None and above < min_pairs:
            out.append(
                f"TAR at FAR {key} rests on at most {int(above)} impostor pairs above its "
                "threshold: a rough estimate; more identities would firm it up"
            )
    return out


def _exact(scores: np.ndarray) -> ScoreSet:
    s = ScoreSet(len(scores), exact_limit=len(scores))
    s.add(np.asarray(scores, np.float32))
    return s


def _finish(
    embedder,
    scored: ScoredPairs,
    out_dir: Path | None,
    fars: tuple[float, ...],
    plots: bool,
    protocol: str,
    data: dict,
    timing: dict,
    kfold: dict | None = None,
    extra_notes: Sequence[str] = (),
    kfold_draws: dict | None = None,
) -> Evaluation:
    t0 = time.perf_counter()
    m, curve = curve_and_metrics(scored, fars)
    timing["metrics_s"] = time.perf_counter() - t0
    report = {
        "siamface_version": __version__,
        "created": now_iso(),
        "protocol": protocol,
        "model": model_section(embedder),
        "data": data,
        "pairs": scored.summary(),
        "metrics": m.to_dict(),
        "operating_points": operating_points(scored, m, embedder.threshold),
        "kfold": kfold,
        "kfold_draws": kfold_draws,
        "roc": curve,
        "rates_by_threshold": scored.rates_table(RATE_GRID),
        "plots": {},
        "notes": list(extra_notes) + m.notes + _thin_far_notes(m),
        "timing_s": timing,
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        if plots:
            t1 = time.perf_counter()
            report["plots"] = write_plots(out_dir, scored, m, curve, embedder.threshold)
            timing["plots_s"] = time.perf_counter() - t1
        timing["total_s"] = sum(timing.values())
        report["timing_s"] = {k: round(v, 4) for k, v in timing.items()}
        write_report(out_dir, report)
    else:
        report["timing_s"] = {k: round(v, 4) for k, v in timing.items()}
    return Evaluation(report, scored, m)
