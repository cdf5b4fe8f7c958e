"""Image files -> people to enroll: which files belong to whom, embedded with a model.

Everything that can go wrong with the input (missing paths, empty folders, loose images
without a name, unreadable images or images without a face) is found *before* the gallery
is touched, and reported with the file names, so a failed enrollment changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from siamface.embed.load import Embedder
from siamface.errors import SiamfaceError
from siamface.faces.errors import is_ambiguous
from siamface.folders.identities import scan_identity_folders
from siamface.folders.images import (
    ImageLoadError,
    file_digest,
    is_image_path,
    load_rgb,
    unsupported_reason,
)
from siamface.gallery.records import NewPerson
from siamface.gallery.thumbnail import make_thumbnail
from siamface.gallery.validation import check_name

_SHOW = 10


@dataclass
class EnrollPlan:
    """Who is to be enrolled from which files, and what was ignored on the way."""

    groups: list[tuple[str, list[Path]]]
    ignored: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return sum(len(p) for _, p in self.groups)


@dataclass
class EmbeddedPeople:
    """The result of embedding a plan: people ready for ``Gallery.enroll_many``."""

    people: list[NewPerson]
    skipped_images: list[tuple[Path, str]] = field(default_factory=list)
    skipped_people: list[str] = field(default_factory=list)


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        f
        for f in folder.rglob("*")
        if f.is_file() and not f.name.startswith(".") and is_image_path(f)
    )


def _not_images_in(folder: Path) -> list[tuple[Path, str]]:
    """Files in a person's folder that are not images, with the reason (reported, so that a
    user who expected them to count sees that they did not)."""
    return [
        (f, unsupported_reason(f))
        for f in sorted(folder.rglob("*"))
        if f.is_file() and not f.name.startswith(".") and not is_image_path(f)
    ]


def plan_enrollment(inputs: Sequence[str | Path], name: str | None = None) -> EnrollPlan:
    """Decide who gets which images.

    * ``name`` given: every image file and every image under every folder is that person.
    * no ``name``: each folder is either a folder of identity folders (``DIR/<person>/<img>``,
      one person per sub-folder) or, when it holds images directly, one person named after
      the folder. Loose image files need a ``name``.
    """
    paths = [Path(p).expanduser() for p in inputs]
    if not paths:
        raise SiamfaceError("nothing to enroll: give a folder or image files")
    for p in paths:
        if not p.exists():
            raise SiamfaceError(f"not found: {p}")
    if name is not None:
        images: list[Path] = []
        skipped: list[tuple[Path, str]] = []
        for p in paths:
            if p.is_dir():
                found = _images_in(p)
                skipped += _not_images_in(p)
                if not found:
                    raise SiamfaceError(f"no images found in {p}")
                images += found
            elif is_image_path(p):
                images.append(p)
            else:
                raise SiamfaceError(f"{p} is not an image file (unknown suffix {p.suffix!r})")
        return EnrollPlan([(check_name(name), list(dict.fromkeys(images)))], skipped)
    loose = [p for p in paths if not p.is_dir()]
    if loose:
        raise SiamfaceError(
            f"image files given without --name ({loose[0]}{' ...' if len(loose) > 1 else ''}): "
            "say whose they are with --name NAME, or give a folder of identity folders"
        )
    groups: dict[str, list[Path]] = {}
    ignored: list[tuple[Path, str]] = []
    for root in paths:
        has_subfolders = any(
            d.is_dir() and not d.name.startswith(".") and _images_in(d) for d in root.iterdir()
        )
        if has_subfolders:
            scan = scan_identity_folders([root])
            ignored += scan.ignored
            for s in scan.samples:
                groups.setdefault(s.identity, []).append(s.path)
        else:
            found = _images_in(root)
            if not found:
                raise SiamfaceError(
                    f"no images found in {root}: expected images of one person, or identity "
                    f"folders like {root}/<person>/<image>.jpg"
                )
            if root.resolve().name in groups:
                raise SiamfaceError(f"two folders named {root.resolve().name!r} given")
            groups[root.resolve().name] = found
            ignored += _not_images_in(root)
    # Folder names are person names: the same rule as every other way in, before any work.
    return EnrollPlan([(check_name(n), imgs) for n, imgs in groups.items()], ignored)


def embed_plan(
    embedder: Embedder,
    plan: EnrollPlan,
    skip_bad: bool = False,
    metadata: dict | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    progress: bool = False,
    thumbnails: bool = True,
) -> EmbeddedPeople:
    """Embed every planned image. Unreadable images (or, for aligned models, images without
    a detectable face) abort with a list of the files, unless ``skip_bad``: then they are
    skipped, and a person left with no usable image is skipped too. With ``thumbnails``
    each person gets a small JPEG of their first usable face, as the model sees it."""
    flat = [(name, p) for name, ps in plan.groups for p in ps]
    emb, errors = embedder.embed_paths(
        [p for _, p in flat],
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        ambiguous="refuse",  # a wrong face enrolled is a wrong person found later
    )
    bad = [(flat[i][1], reason) for i, reason in sorted(errors.items())]
    # Photos where two faces are equally likely are always left out and listed, never
    # guessed: they do not stop an enrolment (crop them, or pick the face in the page).
    unsure = [(p, r) for p, r in bad if is_ambiguous(r)]
    if len(bad) > len(unsure) and not skip_bad:
        bad = [(p, r) for p, r in bad if not is_ambiguous(r)]
        lines = "\n".join(f"  {p}: {r}" for p, r in bad[:_SHOW])
        more = f"\n  ... and {len(bad) - _SHOW} more" if len(bad) > _SHOW else ""
        raise SiamfaceError(
            f"{len(bad)} image(s) cannot be used (unreadable, or no face found); nothing was "
            f"enrolled. Fix or remove them, or pass --skip-bad:\n{lines}{more}"
        )
    rows: dict[str, list[int]] = {}
    paths: dict[str, list[Path]] = {}
    row = 0
    for i, (name, p) in enumerate(flat):
        if i in errors:
            continue
        rows.setdefault(name, []).append(row)
        paths.setdefault(name, []).append(p)
        row += 1
    people = []
    for name, _ in plan.groups:
        if name not in rows:
            continue
        ps = paths[name]
        people.append(
            NewPerson(
                name=name,
                embeddings=emb[rows[name]],
                refs=[str(p.resolve()) for p in ps],
                digests=[file_digest(p) for p in ps],
                metadata=dict(metadata or {}),
                thumbnail=_thumbnail(embedder, ps[0]) if thumbnails else None,
            )
        )
    skipped_people = [name for name, _ in plan.groups if name not in rows]
    if not people:
        raise SiamfaceError("no usable image at all; nothing was enrolled")
    return EmbeddedPeople(people, bad, skipped_people)


def _thumbnail(embedder: Embedder, path: Path) -> bytes | None:
    """The first usable image's face (aligned and resized like the model's input), as JPEG.
    Decoded once more (one image a person): the batch loaders only keep tensors."""
    try:
        return make_thumbnail(embedder.display_face(load_rgb(path)))
    except (ImageLoadError, OSError, ValueError):
        return None  # it embedded a moment ago; a file changed since just has no picture
