"""``siamface data check``: the dataset report ``train`` writes, without training.

Scanning and decoding every image is cheap next to a training run and answers the questions
worth asking first: how many identities and images, how many positive and negative pairs,
which files are unreadable, too small, broken links or not images at all, which identity
folders are empty, which files are byte-identical under two names (label errors), and where
the identity count stands against the article's guidance (a few hundred IDs: small task;
1000-2000: medium; 5000+: large).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from siamface.data.dataset import decode_images
from siamface.data.folders import scan_identity_folders
from siamface.data.marker import read_marker
from siamface.data.report import DatasetReport, build_report

#: Decoding size for the check: enough to prove a file decodes, cheap to resize to.
CHECK_SIZE = 32


def check_dataset(
    roots: Sequence[str | Path],
    min_images: int = 2,
    duplicates: bool = True,
    workers: int | None = None,
    progress: bool = True,
) -> DatasetReport:
    """Scan and decode identity folders (nothing is written) -> the dataset report."""
    scan = scan_identity_folders(roots)
    decoded = decode_images(
        [s.path for s in scan.samples],
        CHECK_SIZE,
        workers=workers,
        cache_limit_bytes=0,  # only whether each file decodes matters here
        desc="checking images",
        progress=progress,
    )
    unreadable = {scan.samples[i].path: r for i, r in decoded.errors.items()}
    report = build_report(
        [scan.samples[i] for i in decoded.ok],
        unreadable,
        scan.ignored,
        min_images,
        check_duplicates=duplicates,
        empty_identities=scan.empty_identities,
    )
    for root in scan.roots:
        marker = read_marker(root)
        if marker is not None and marker.get("complete") is not True:
            report.warnings.append(
                f"{root} was not finished by 'siamface prepare' (train refuses it); run the "
                "same prepare command again to complete it"
            )
    return report
