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

from siamface.folders.identities import scan_identity_folders
from siamface.folders.marker import read_marker
from siamface.folders.report import DatasetReport, build_report
from siamface.folders.scan_index import ScanIndex, index_path, scan_files

#: Decoding size for the check: enough to prove a file decodes, cheap to resize to.
CHECK_SIZE = 32


def check_dataset(
    roots: Sequence[str | Path],
    min_images: int = 2,
    duplicates: bool = True,
    workers: int | None = None,
    progress: bool = True,
    scan_cache: str = "auto",
) -> DatasetReport:
    """Scan and decode identity folders -> the dataset report. Nothing is written beside the
    data; ``scan_cache`` is where the scan index lives (``none``: in memory only)."""
    scan = scan_identity_folders(roots)
    paths = [s.path for s in scan.samples]
    # The same scan index training uses: a later 'train' on these folders (or a second check)
    # reuses the decode checks and hashes instead of opening every file again.
    index = ScanIndex(index_path(scan_cache))
    try:
        result = scan_files(
            paths,
            CHECK_SIZE,
            "decode",
            index,
            keep_pixels=False,  # only whether each file decodes matters here
            workers=workers,
            progress=progress,
        )
    finally:
        index.close()
    facts = result.facts
    unreadable = {paths[i]: f.error or "unreadable" for i, f in enumerate(facts) if not f.ok}
    report = build_report(
        [scan.samples[i] for i, f in enumerate(facts) if f.ok],
        unreadable,
        scan.ignored,
        min_images,
        check_duplicates=duplicates,
        empty_identities=scan.empty_identities,
        digests={paths[i]: f.sha256 for i, f in enumerate(facts) if f.sha256},
    )
    for root in scan.roots:
        marker = read_marker(root)
        if marker is not None and marker.get("complete") is not True:
            report.warnings.append(
                f"{root} was not finished by 'siamface prepare' (train refuses it); run the "
                "same prepare command again to complete it"
            )
    return report
