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


CAMERA_EPILOG = """\
examples:
  siamface data camera-copy people/ people_cctv/
  siamface fuse runs/cctv/best.safetensors dlib --data people_cctv/ --held-out runs/cctv \\
      --out cctv+dlib.json
  siamface evaluate --model cctv+dlib.json --data test_cctv/ --compare sface

Exit status 0 when at least one photo was written; 2 otherwise (nothing readable, a bad
argument, or DST not new or empty).
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
    cam = act.add_parser(
        "camera-copy",
        help="a CCTV-like copy of photo folders (shrunk, JPEG-encoded, scaled back)",
        description="Copy every photo under SRC to DST as a distant, compressed camera sees "
        "it: shrunk --shrink times (area average), JPEG-encoded at --jpeg quality at that "
        "size, scaled back to its size (bicubic). The whole photo is degraded, so detection "
        "and alignment see what a camera gives them. Same relative paths and names (identity "
        "folders and pairs files still match); pixels stored losslessly. No randomness.",
        epilog=CAMERA_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cam.add_argument("src", metavar="SRC", help="photo folder (e.g. identity folders)")
    cam.add_argument("dst", metavar="DST", help="new (or empty) folder for the copy")
    cam.add_argument(
        "--shrink",
        type=float,
        default=4.0,
        help="how many times smaller the camera sees each photo (4: a face 112 px wide in "
        "the photo becomes 28 px)",
    )
    cam.add_argument("--jpeg", type=int, default=40, help="JPEG quality at the small size (40)")
    cam.add_argument("--json", action="store_true", help="print what was written as JSON")
    cam.add_argument("--no-progress", action="store_true", help="no progress bar")
    cam.set_defaults(func=run_camera_copy)
    p.set_defaults(func=_no_action)


def _no_action(args: argparse.Namespace) -> int:
    raise SiamfaceError("say 'siamface data check DIR...' or 'siamface data camera-copy SRC DST'")


def run_camera_copy(args: argparse.Namespace) -> int:
    from siamface.folders.camera_copy import camera_copy  # lazy: PIL

    rep = camera_copy(args.src, args.dst, args.shrink, args.jpeg, progress=not args.no_progress)
    if rep.written == 0:
        raise SiamfaceError(
            f"no readable photo under {rep.source}"
            + (
                f" ({len(rep.unreadable)} unreadable, e.g. {rep.unreadable[0]['path']}: "
                f"{rep.unreadable[0]['reason']})"
                if rep.unreadable
                else ""
            )
        )
    if args.json:
        print(json.dumps(rep.to_dict(), indent=1, ensure_ascii=False))
        return 0
    print(
        f"{rep.written} photos written to {rep.out} (shrunk {rep.shrink:g}x, JPEG "
        f"{rep.quality}, scaled back)"
    )
    for u in rep.unreadable[:10]:
        print(f"skipped {u['path']}: {u['reason']}")
    if len(rep.unreadable) > 10:
        print(f"... and {len(rep.unreadable) - 10} more unreadable (--json lists them all)")
    if rep.ignored:
        print(f"{len(rep.ignored)} files that are not images ignored")
    return 0


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
