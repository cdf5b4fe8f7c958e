"""``siamface gallery enroll``: embed images of people and add them (creates the gallery)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from siamface.cli._model_args import MODEL_HELP
from siamface.cli.gallery._shared import GALLERY_HELP, load_gallery_model
from siamface.errors import SiamfaceError


def add_parser(gs: argparse._SubParsersAction) -> None:
    """Add this action's parser to ``siamface gallery`` (called in --help order)."""
    e = gs.add_parser(
        "enroll",
        help="add people from image folders or files (creates the gallery)",
        description="Enroll people. Without --name, each FOLDER is a folder of identity "
        "folders (FOLDER/<person>/<images>) or, if it holds images directly, one person named "
        "after it. With --name, all given images (and images in given folders) are that "
        "person. Any unreadable image (or, for aligned models, image without a face) aborts "
        "the whole enrollment unless --skip-bad; a name already enrolled is refused unless "
        "--append.",
    )
    e.add_argument("gallery", metavar="GALLERY", help=GALLERY_HELP + " (created if missing)")
    e.add_argument("inputs", nargs="+", metavar="DIR_OR_IMAGE")
    e.add_argument("--model", metavar="MODEL", help=MODEL_HELP + " (default: the gallery's)")
    e.add_argument("--name", help="enroll all given images as this one person")
    e.add_argument("--append", action="store_true", help="add images to people already enrolled")
    e.add_argument("--metadata", metavar="JSON", help="JSON object stored with each person")
    e.add_argument("--skip-bad", action="store_true", help="skip unusable images (listed)")
    e.add_argument("--threshold", type=float, help="open-set threshold for a new gallery")
    e.add_argument(
        "--aggregation",
        choices=["mean", "max"],
        help="new gallery: search mean templates (default) or every image",
    )
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--workers", type=int, help="image-decoding processes")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=run_enroll)


def run_enroll(args: argparse.Namespace) -> int:
    from siamface.decide.threshold import Threshold  # lazy: --help speed
    from siamface.embed.load import create_embedder, model_reference  # lazy: --help speed
    from siamface.gallery import Gallery  # lazy: --help speed
    from siamface.gallery.backends import backend_name  # lazy: --help speed
    from siamface.gallery.enroll import embed_plan, plan_enrollment  # lazy: --help speed
    from siamface.gallery.validation import parse_metadata  # lazy: --help speed

    metadata = parse_metadata(args.metadata, "--metadata")
    plan = plan_enrollment(args.inputs, args.name)  # input errors before anything is opened
    created = False
    builtin = backend_name(args.gallery) == "builtin"
    if builtin:  # a read-only or full place is refused before minutes of embedding
        from siamface.fileio import check_output_dir  # lazy: --help speed

        check_output_dir(args.gallery, "gallery")
    if Gallery.exists(args.gallery):
        if args.threshold is not None or args.aggregation:
            raise SiamfaceError(
                "--threshold/--aggregation only apply when creating a gallery; "
                "use 'siamface gallery set'"
            )
        gallery = Gallery.open(args.gallery)
        embedder = load_gallery_model(gallery, args.model)
    else:
        where = Path(args.gallery).expanduser() if builtin else args.gallery
        if (
            builtin
            and where.exists()
            and (not where.is_dir() or any(not f.name.startswith(".") for f in where.iterdir()))
        ):
            raise SiamfaceError(f"{where} is not a siamface gallery (no gallery.sqlite inside)")
        if not args.model:
            raise SiamfaceError(f"{where} does not exist yet: give --model to create it")
        embedder = create_embedder(args.model)
        threshold = args.threshold
        if threshold is None:
            threshold = Threshold.parse(embedder.threshold)
        gallery = None
    if gallery is not None and not args.append:
        taken = [n for n, _ in plan.groups if n in gallery]
        if taken:  # fail fast, before embedding anything
            raise SiamfaceError(
                f"already enrolled: {', '.join(taken[:5])}{' ...' if len(taken) > 5 else ''} "
                "(use --append to add images, or remove them first); nothing was enrolled"
            )
    embedded = embed_plan(
        embedder,
        plan,
        skip_bad=args.skip_bad,
        metadata=metadata,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not args.no_progress and not args.json,
    )
    if gallery is None:
        gallery = Gallery.create(
            args.gallery,
            fingerprint=embedder.fingerprint,
            embedding_size=embedder.embedding_size,
            threshold=threshold,
            model_source=model_reference(args.model),
            aggregation=args.aggregation or "mean",
        )
        created = True
    with gallery:
        dupes = gallery.duplicates_elsewhere(embedded.people)
        records = gallery.enroll_many(
            embedded.people, fingerprint=embedder.fingerprint, append=args.append
        )
        info = gallery.info()
    out = {
        "gallery": str(args.gallery),
        "created": created,
        "enrolled": [r.to_dict() for r in records],
        "skipped_images": [{"path": str(p), "reason": r} for p, r in embedded.skipped_images],
        "skipped_people": embedded.skipped_people,
        "ignored_files": [{"path": str(p), "reason": r} for p, r in plan.ignored],
        "duplicate_files": dupes,
        "people": info["people"],
        "images": info["images"],
    }
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    verb = "created gallery and enrolled" if created else "enrolled"
    n_img = sum(r.n_images for r in records)
    print(f"{verb} {len(records)} people ({n_img} images total for them) in {args.gallery}")
    for r in records[:20]:
        print(f"  {r.name}: {r.n_images} image(s)")
    if len(records) > 20:
        print(f"  ... and {len(records) - 20} more")
    for p, r in embedded.skipped_images:
        print(f"  skipped {p}: {r}", file=sys.stderr)
    for n in embedded.skipped_people:
        print(f"  skipped {n}: no usable image", file=sys.stderr)
    for p, r in plan.ignored:
        print(f"  ignored {p}: {r}", file=sys.stderr)
    for d in dupes:
        print(
            f"  warning: {d['path']} is byte-identical to an image of {d['other']!r}",
            file=sys.stderr,
        )
    print(f"gallery now holds {info['people']} people, {info['images']} images")
    return 0
