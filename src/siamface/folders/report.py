"""What is in a dataset, before any training: counts, pairs, duplicates, warnings.

The article's guidance is that the number of usable *pairs* and identities decides what a
Siamese model can learn (a few hundred IDs is a small task, 1000-2000 medium, 5000+ large).
Users should see that, and see labelling problems (the same file under two people), before
spending hours of compute.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

from siamface.folders.identities import EMPTY_IDENTITY, Sample
from siamface.folders.images import file_digest


@dataclass
class DatasetReport:
    """Summary of a set of labelled images, JSON-serialisable via :meth:`to_dict`."""

    identities: int
    images: int
    images_per_identity: dict[str, float]
    positive_pairs: int
    negative_pairs: int
    excluded_identities: list[str] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)
    ignored_files: list[dict] = field(default_factory=list)
    empty_identities: list[str] = field(default_factory=list)
    duplicates_within_identity: list[list[str]] = field(default_factory=list)
    duplicates_across_identities: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def summary_lines(self) -> list[str]:
        """A short human-readable version for the terminal."""
        ipi = self.images_per_identity
        lines = [
            f"identities: {self.identities}   images: {self.images}",
            f"images per identity: min {ipi['min']:.0f} / median {ipi['median']:.0f} / "
            f"max {ipi['max']:.0f}",
            f"pairs: {self.positive_pairs:,} positive, {self.negative_pairs:,} negative",
        ]
        if self.excluded_identities:
            lines.append(
                f"excluded (fewer than 2 images): {len(self.excluded_identities)} identities"
            )
        if self.unreadable:
            lines.append(f"skipped unreadable files: {len(self.unreadable)}")
            lines += [f"  - {u['path']}: {u['reason']}" for u in self.unreadable[:10]]
        files = [u for u in self.ignored_files if u["reason"] != EMPTY_IDENTITY]
        if files:
            lines.append(f"ignored files (not images): {len(files)}")
            lines += [f"  - {u['path']}: {u['reason']}" for u in files[:10]]
        if self.empty_identities:
            lines.append(f"empty identity folders (no image files): {len(self.empty_identities)}")
            lines += [f"  - {p}" for p in self.empty_identities[:10]]
        if self.duplicates_within_identity:
            lines.append(
                f"byte-identical duplicates within an identity: "
                f"{len(self.duplicates_within_identity)} groups"
            )
        if self.duplicates_across_identities:
            lines.append(
                f"byte-identical files under different identities (label errors?): "
                f"{len(self.duplicates_across_identities)}"
            )
            for d in self.duplicates_across_identities[:5]:
                lines.append(f"  - {', '.join(d['files'])}")
        lines += [f"warning: {w}" for w in self.warnings]
        return lines


def id_count_guidance(n_ids: int) -> str | None:
    """The article's rule of thumb on identity counts, as a warning when it applies."""
    if n_ids < 100:
        return (
            f"only {n_ids} identities: below the article's small-task scale (a few hundred "
            "IDs); expect weak generalisation to unseen people"
        )
    if n_ids < 1000:
        return (
            f"{n_ids} identities: a small task by the article's guidance (a few hundred IDs; "
            "1000-2000 for medium tasks such as public-camera search, 5000+ for large ones)"
        )
    if n_ids < 5000:
        return f"{n_ids} identities: a medium task by the article's guidance (5000+ for large)"
    return None


def build_report(
    samples: Sequence[Sample],
    unreadable: dict[Path, str] | None = None,
    ignored: Sequence[tuple[Path, str]] = (),
    min_images: int = 2,
    check_duplicates: bool = True,
    empty_identities: Sequence[Path] = (),
    digests: dict[Path, str] | None = None,
) -> DatasetReport:
    """Describe ``samples`` (the readable images) and list the problems found on the way.

    ``digests`` are SHA-256 hex digests already computed (e.g. by a cached scan); files
    missing from it are hashed here."""
    counts = Counter(s.identity for s in samples)
    excluded = sorted(i for i, n in counts.items() if n < min_images)
    kept = {i: n for i, n in counts.items() if n >= min_images}
    per = sorted(kept.values()) or [0]
    n_img = sum(kept.values())
    pos = sum(n * (n - 1) // 2 for n in kept.values())
    neg = n_img * (n_img - 1) // 2 - pos
    report = DatasetReport(
        identities=len(kept),
        images=n_img,
        images_per_identity={"min": per[0], "median": float(median(per)), "max": per[-1]},
        positive_pairs=pos,
        negative_pairs=neg,
        excluded_identities=excluded,
        unreadable=[{"path": str(p), "reason": r} for p, r in (unreadable or {}).items()],
        ignored_files=[{"path": str(p), "reason": r} for p, r in ignored],
        empty_identities=[str(p) for p in empty_identities],
    )
    if check_duplicates:
        _find_duplicates(samples, report, digests or {})
    guidance = id_count_guidance(len(kept))
    if guidance:
        report.warnings.append(guidance)
    if excluded:
        report.warnings.append(
            f"{len(excluded)} identities have fewer than {min_images} images and are excluded "
            f"from sampling: {', '.join(excluded[:5])}{' ...' if len(excluded) > 5 else ''}"
        )
    if report.empty_identities:
        report.warnings.append(
            f"{len(report.empty_identities)} identity folders hold no image file: "
            + ", ".join(Path(p).name for p in report.empty_identities[:5])
            + (" ..." if len(report.empty_identities) > 5 else "")
        )
    if report.duplicates_across_identities:
        report.warnings.append(
            f"{len(report.duplicates_across_identities)} files appear byte-identical under "
            "different identities: probable labelling errors"
        )
    return report


def _find_duplicates(
    samples: Sequence[Sample], report: DatasetReport, digests: dict[Path, str]
) -> None:
    by_digest: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_digest[digests.get(s.path) or file_digest(s.path)].append(s)
    for group in by_digest.values():
        if len(group) < 2:
            continue
        ids = {s.identity for s in group}
        if len(ids) > 1:
            report.duplicates_across_identities.append(
                {"identities": sorted(ids), "files": [str(s.path) for s in group]}
            )
        else:
            report.duplicates_within_identity.append([str(s.path) for s in group])
