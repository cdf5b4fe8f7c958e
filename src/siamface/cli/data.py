"""``siamface data check DIR...``: what is in a dataset, before any training."""

from __future__ import annotations

import argparse
import json

from siamface.errors import SiamfaceError

EPILOG = """\
Reports identities, images, positive/negative pairs, unreadable files (corrupt, truncated,
too small, broken links), files that are not images (.gif, .txt...), empty identity folders,
byte-identical files within and across identities, and the article's guidance on identity
counts. Nothing is written. Exit status 0 when the data can be trained on, 2 otherwise.

examples:
  siamface data check ../shared/data/pins90
  siamface data check faces/ more_faces/ --json > data_report.json
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="check identity folders (the dataset report, without training)",
        description="Dataset tools.",
    )
    act = p.add_subparsers(dest="action", metavar="ACTION")
    ck = act.add_parser(
        "check",
        help="report identities, pairs, unreadable files and duplicates",
        description="The dataset report 'siamface train' writes, without training.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ck.add_argument("data", nargs="+", metavar="DIR", help="identity folders DIR/<person>/<img>")
    ck.add_argument(
        "--min-images",
        type=int,
        default=2,
        help="identities with fewer readable images are excluded from pairs (2)",
    )
    ck.add_argument(
        "--no-duplicates", action="store_true", help="skip the byte-identical-file search"
    )
    ck.add_argument("--workers", type=int, help="decoding processes (default: all cores)")
    ck.add_argument("--json", action="store_true", help="print the report as JSON")
    ck.add_argument("--no-progress", action="store_true", help="no progress bar")
    ck.set_defaults(func=run_check)
    p.set_defaults(func=_no_action)


def _no_action(args: argparse.Namespace) -> int:

    raise SiamfaceError("say 'siamface data check DIR...'")


def run_check(args: argparse.Namespace) -> int:
    from siamface.folders.check import check_dataset  # lazy: --help speed (torch, tqdm)

    if args.min_images < 2:
        raise SiamfaceError(f"--min-images must be at least 2, got {args.min_images}")
    if args.workers is not None and args.workers < 1:
        raise SiamfaceError(f"--workers must be at least 1, got {args.workers}")
    report = check_dataset(
        args.data,
        min_images=args.min_images,
        duplicates=not args.no_duplicates,
        workers=args.workers,
        progress=not args.no_progress,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=1, ensure_ascii=False))
    else:
        print("\n".join(report.summary_lines()))
    if report.identities < 2:
        raise SiamfaceError(
            f"only {report.identities} identities with >= {args.min_images} readable images: "
            "not enough to train or evaluate on (at least 2 are needed)"
        )
    return 0
