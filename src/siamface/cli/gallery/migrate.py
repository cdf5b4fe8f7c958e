"""``siamface gallery migrate``: copy a gallery to another folder or backend."""

from __future__ import annotations

import argparse
import json
import sys

from siamface.cli.gallery._shared import GALLERY_HELP
from siamface.errors import SiamfaceError


def add_parser(gs: argparse._SubParsersAction) -> None:
    """Add this action's parser to ``siamface gallery`` (called in --help order)."""
    m = gs.add_parser(
        "migrate",
        help="copy a gallery to another folder or backend (resumable, verified)",
        description="Copy everyone (exact embeddings, refs, metadata, thumbnails) from SRC to "
        "DST, creating DST with SRC's settings if needed. People already in DST are skipped, "
        "so an interrupted migration is finished by running it again. Verified at the end: "
        "same counts, and a sample of searches with identical best matches in both.",
    )
    m.add_argument("source", metavar="SRC", help=GALLERY_HELP)
    m.add_argument("destination", metavar="DST", help=GALLERY_HELP)
    m.add_argument("--batch", type=int, default=500, help="people per write (default 500)")
    m.add_argument("--sample", type=int, default=100, help="searches compared (default 100)")
    m.add_argument("--json", action="store_true")
    m.add_argument("--no-progress", action="store_true")
    m.set_defaults(func=run_migrate)


def run_migrate(args: argparse.Namespace) -> int:
    from tqdm import tqdm  # lazy: --help speed

    from siamface.gallery.migrate import migrate  # lazy: --help speed

    bar = tqdm(desc="migrating", unit="person", disable=args.no_progress or args.json)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        rep = migrate(args.source, args.destination, args.batch, args.sample, progress=progress)
    finally:
        bar.close()
    if args.json:
        print(json.dumps(rep.to_dict(), indent=1))
    else:
        src, dst = rep.counts["source"], rep.counts["destination"]
        print(
            f"{'created' if rep.created else 'updated'} {rep.destination}: copied "
            f"{rep.copied_people} people ({rep.copied_images} images), skipped "
            f"{rep.skipped_existing} already there; people/images {src[0]}/{src[1]} -> "
            f"{dst[0]}/{dst[1]}; sample of {rep.sample} searches: {rep.top1_identical} same best "
            f"match, {rep.topk_identical} same top 5, max score difference {rep.max_score_diff}"
        )
        for p in rep.problems:
            print(f"  problem: {p}", file=sys.stderr)
    if not rep.verified:
        raise SiamfaceError(
            f"migration to {rep.destination} did not verify: {'; '.join(rep.problems)}"
        )
    return 0
