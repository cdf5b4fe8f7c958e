"""``siamface prepare``: raw photos in identity folders -> aligned face crops, ready to train."""

from __future__ import annotations

import argparse
import json

from siamface.faces.align import AlignParams
from siamface.faces.choose import DEFAULT_FACE_POLICY, FACE_POLICIES
from siamface.faces.detect import DEFAULT_DETECTOR, detector_names

EPILOG = """\
examples:
  siamface prepare ../shared/data/celeba_wild data/celeba_aligned
  siamface prepare photos/ faces/ --size 224 --margin 0.2 --faces central
  siamface prepare photos/ faces/ --json > prepare.json      # machine-readable report

OUT_DIR receives one folder per identity with the aligned crops (PNG), a marker file
siamface_prepare.json that records the alignment settings (siamface train reads it, so the
model knows it expects aligned faces), and siamface_prepare_report.json listing images with
no face, several faces (and those left out because two faces were equally likely to be the
person), a low detector score, or that could not be read. Run the same command again to
resume after an interruption: finished images are skipped. RAW_DIR is never modified.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="detect and align the faces of raw photos (identity folders -> aligned crops)",
        description=(
            "Detect the face in every photo of RAW_DIR/<person>/, align it on five landmarks "
            "(eyes, nose, mouth corners) onto the standard ArcFace template, and write the "
            "crops to OUT_DIR/<person>/. Uses all CPU cores; resumable."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("raw_dir", metavar="RAW_DIR", help="identity folders of raw photos")
    p.add_argument("out_dir", metavar="OUT_DIR", help="where the aligned identity folders go")
    p.add_argument("--size", type=int, default=112, help="output crop size in pixels (112)")
    p.add_argument(
        "--margin",
        type=float,
        default=0.0,
        help="extra context around the face as a fraction of the crop (0 = ArcFace framing)",
    )

    p.add_argument(
        "--faces",
        choices=FACE_POLICIES,
        default=DEFAULT_FACE_POLICY,
        help="several faces in a photo: auto (the face the photo is about: size, place and "
        "detector score; see docs/faces.md), the largest, the most central, the detector's "
        f"most confident (score), or all ({DEFAULT_FACE_POLICY})",
    )
    p.add_argument(
        "--ambiguous",
        choices=("skip", "use"),
        default="skip",
        help="photos where two faces are equally likely to be the person: leave them out and "
        "list them (skip, default: a wrong face is a wrong label) or use the likelier (use)",
    )

    p.add_argument(
        "--detector",
        default=DEFAULT_DETECTOR,
        choices=detector_names(),
        help=f"face detector backend ({DEFAULT_DETECTOR}: OpenCV Zoo's YuNet through OpenCV)",
    )
    p.add_argument(
        "--min-score", type=float, default=0.5, help="ignore detections below this score (0.5)"
    )
    p.add_argument(
        "--low-score",
        type=float,
        default=0.8,
        help="report chosen faces scored below this as doubtful (0.8)",
    )
    p.add_argument(
        "--max-side",
        type=int,
        default=640,
        help="downscale photos to this longest side for detection only (640)",
    )
    p.add_argument("--format", choices=("png", "jpg"), default="png", help="crop format")
    p.add_argument("--workers", type=int, help="processes (default: all CPU cores)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from siamface.faces.prepare import (  # lazy: --help speed (tqdm)
        PrepareOptions,
        prepare_folders,
        summary_lines,
    )

    align = AlignParams(
        detector=args.detector,
        min_score=args.min_score,
        margin=args.margin,
        face=args.faces,
        max_side=args.max_side,
    )
    options = PrepareOptions(
        image_size=args.size,
        align=align,
        low_score=args.low_score,
        image_format=args.format,
        workers=args.workers,
        ambiguous=args.ambiguous,
    )
    report = prepare_folders(args.raw_dir, args.out_dir, options, progress=not args.no_progress)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print("\n".join(summary_lines(report)))
    return 0
