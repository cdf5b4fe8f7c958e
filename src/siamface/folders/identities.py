"""Identity folders on disk -> a flat list of labelled image paths.

Layout expected everywhere in siamface: ``ROOT/<identity>/<image files>``. Several roots can be
combined; identities are then named ``<root name>/<identity>`` so that two datasets that both
have a folder called ``0001`` are never merged into one person by accident.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from siamface.errors import SiamfaceError
from siamface.folders.images import is_image_path, unsupported_reason
from siamface.folders.marker import PREPARE_FILES

#: Reason given for an identity folder that holds no image file.
EMPTY_IDENTITY = "empty identity folder (no image files)"


@dataclass(frozen=True)
class Sample:
    """One image file and the identity (person) it belongs to."""

    path: Path
    identity: str


@dataclass
class FolderScan:
    """Result of scanning identity folders: usable samples plus what was ignored and why."""

    samples: list[Sample]
    roots: list[Path]
    ignored: list[tuple[Path, str]] = field(default_factory=list)
    #: Identity folders holding no image at all (a person with no photos is worth a word).
    empty_identities: list[Path] = field(default_factory=list)

    @property
    def identities(self) -> list[str]:
        """Sorted identity names that have at least one sample."""
        return sorted({s.identity for s in self.samples})


def scan_identity_folders(roots: Sequence[str | Path]) -> FolderScan:
    """List every image under ``root/<identity>/`` for each root.

    Files directly under a root and files with a non-image suffix (``.gif``, a stray README)
    are ignored and listed in ``ignored``; identity folders without any image are listed in
    ``empty_identities`` and in ``ignored`` (so every command that reports what it ignored
    reports them); hidden files (``.DS_Store``) are skipped silently. Broken symbolic
    links are kept as samples, so that decoding reports them like any unreadable file.
    Raises :class:`SiamfaceError` for a missing root, a root that is a file, or roots that
    contain no identity folder with images.
    """
    if not roots:
        raise SiamfaceError("no data folder given (use --data DIR)")
    paths = [Path(r).expanduser() for r in roots]
    names = [p.resolve().name for p in paths]
    prefix = len(paths) > 1
    if prefix and len(set(names)) != len(names):
        raise SiamfaceError(
            f"data folders must have distinct names when combined (got {names}); "
            "identities are named '<folder>/<person>'"
        )
    samples: list[Sample] = []
    ignored: list[tuple[Path, str]] = []
    empty: list[Path] = []
    for root, name in zip(paths, names, strict=True):
        if not root.exists():
            raise SiamfaceError(f"data folder not found: {root}")
        if not root.is_dir():
            raise SiamfaceError(f"data path is not a folder: {root}")
        found_in_root = 0
        for ident_dir in sorted(root.iterdir()):
            if ident_dir.name.startswith(".") or ident_dir.name in PREPARE_FILES:
                continue
            if not ident_dir.is_dir():
                ignored.append((ident_dir, "file outside an identity folder"))
                continue
            identity = f"{name}/{ident_dir.name}" if prefix else ident_dir.name
            found_here = 0
            for f in sorted(ident_dir.rglob("*")):
                if f.is_dir() or f.name.startswith("."):
                    continue
                if not is_image_path(f):
                    ignored.append((f, unsupported_reason(f)))
                    continue
                samples.append(Sample(f, identity))
                found_here += 1
            if not found_here:
                empty.append(ident_dir)
                ignored.append((ident_dir, EMPTY_IDENTITY))
            found_in_root += found_here
        if found_in_root == 0:
            raise SiamfaceError(
                f"no images found in {root}: expected identity folders like "
                f"{root}/<person>/<image>.jpg"
            )
    return FolderScan(samples=samples, roots=paths, ignored=ignored, empty_identities=empty)


def scan_images(roots: Sequence[str | Path]) -> list[Path]:
    """Every image file under ``roots`` (any layout; no identities): unlabeled faces for
    distillation. Raises :class:`SiamfaceError` for a missing root or one without images."""
    out: list[Path] = []
    for r in roots:
        root = Path(r).expanduser()
        if not root.is_dir():
            raise SiamfaceError(f"unlabeled folder not found: {root}")
        found = [
            f
            for f in sorted(root.rglob("*"))
            if f.is_file() and not f.name.startswith(".") and is_image_path(f)
        ]
        if not found:
            raise SiamfaceError(f"no images found in unlabeled folder {root}")
        out.extend(found)
    return out
