"""The marker of a folder tree written by ``siamface prepare``: one definition for every reader.

``prepare`` writes ``siamface_prepare.json`` at the root of its output: the alignment settings
the crops were made with (so a model trained on them records that it expects aligned faces),
and ``complete``, false while the run is in progress or was interrupted. ``prepare`` writes it,
``train`` reads it, folder scans skip it; they all use this module, so the name, format and
meaning cannot drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path

from siamface.errors import SiamfaceError
from siamface.fileio import atomic_write

MARKER_NAME = "siamface_prepare.json"
MARKER_FORMAT = "siamface-prepare"
MARKER_VERSION = 1
REPORT_NAME = "siamface_prepare_report.json"
#: Files prepare leaves at the root of its output; never data, never worth a warning.
PREPARE_FILES = frozenset({MARKER_NAME, REPORT_NAME})


def read_marker(folder: str | Path) -> dict | None:
    """The marker of a prepared tree, or None when ``folder`` was not made by prepare."""
    path = Path(folder) / MARKER_NAME
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SiamfaceError(f"{path}: unreadable prepare marker ({err})") from err
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        raise SiamfaceError(f"{path}: not a siamface prepare marker")
    if not isinstance(marker.get("align", {}), dict):
        raise SiamfaceError(f"{path}: 'align' must be a JSON object")
    return marker


def write_marker(folder: str | Path, marker: dict) -> None:
    """Write the marker atomically (a reader never sees half of it)."""
    atomic_write(
        Path(folder) / MARKER_NAME,
        lambda p: p.write_text(json.dumps(marker, indent=1), encoding="utf-8"),
    )


def check_complete(folder: str | Path, marker: dict) -> None:
    """Refuse a prepared tree whose prepare run did not finish: it holds only some people's
    crops, so a model trained on it would silently miss them."""
    if marker.get("complete") is not True:
        raise SiamfaceError(
            f"{folder} was not finished by 'siamface prepare' (its marker says complete: "
            f"{json.dumps(marker.get('complete'))}); run the same 'siamface prepare "
            f"{marker.get('source', 'RAW_DIR')} {folder}' again to complete it (it resumes)"
        )
