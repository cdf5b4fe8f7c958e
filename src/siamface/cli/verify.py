"""``siamface verify``: are two faces the same person? Similarity, decision, and the threshold
behind it; ``--pairs-csv`` for many pairs; ``--gallery G --as NAME`` for one face against a
claimed, enrolled identity (the article's 1:1 use case: "I am Alice").

Exit status (single pair or claim): 0 = same person, 1 = different people, 2 = error
(including "no threshold to decide with"). With ``--pairs-csv``: 0 = all pairs decided,
2 = error.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from siamface.cli._faces import add_face_arg, face_of
from siamface.cli._model_args import (
    add_embed_args,
    add_model_args,
    open_model_arg,
    threshold_value,
)
from siamface.cli.gallery._shared import load_gallery_model
from siamface.decide.threshold import Threshold
from siamface.decide.verify import (
    Verification,
    decide_pair,
    pair_threshold,
    read_pairs_csv,
    verify_claim,
    verify_pairs,
)
from siamface.errors import SiamfaceError
from siamface.fileio import atomic_write, check_output_file
from siamface.gallery import Gallery

EXIT_SAME, EXIT_DIFFERENT = 0, 1

EPILOG = """\
exit status: 0 = same person, 1 = different people, 2 = error (with --pairs-csv: 0 = done)

The decision is similarity >= threshold. The threshold is the one stored in the checkpoint
(calibrated on validation identities at a target false-accept rate, see 'siamface calibrate')
unless --threshold is given (a cosine similarity in [-1, 1]). With --gallery G --as NAME the
face is compared with NAME as enrolled in gallery G, at the gallery's threshold; --model then
defaults to the model the gallery was built with. Models trained with loss=bce also report
the pair head's same-person probability beside the cosine.

examples:
  siamface verify --model runs/pins a.jpg b.jpg && echo same
  siamface verify --model model.onnx a.jpg b.jpg --threshold 0.45 --json
  siamface verify --model runs/pins --pairs-csv pairs.csv --out decisions.csv
    (pairs.csv: 'image1,image2' rows; relative paths are read from the CSV's folder)
  siamface verify --gallery staff --as "Alice Smith" door_camera.jpg && open_door
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="decide whether two face images show the same person",
        description="Cosine similarity of two faces and a same/different decision.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p, required=False)
    p.add_argument("images", nargs="*", metavar="IMAGE", help="two image files (one with --as)")
    p.add_argument(
        "--threshold",
        type=threshold_value,
        help="decide with this threshold instead (a cosine similarity in [-1, 1])",
    )
    p.add_argument("--gallery", metavar="GALLERY", help="gallery holding the claimed person")
    p.add_argument(
        "--as", dest="person", metavar="NAME", help="with --gallery: the claimed identity"
    )
    p.add_argument("--pairs-csv", metavar="FILE", help="CSV of image1,image2 rows")
    p.add_argument("--root", metavar="DIR", help="folder relative CSV paths start from")
    p.add_argument("--out", metavar="FILE", help="with --pairs-csv: write results CSV here")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_face_arg(p, "--face1", "the first photo")
    add_face_arg(p, "--face2", "the second photo")
    add_face_arg(p, "--face", "the photo (with --as)")
    add_embed_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    if args.gallery or args.person:
        return _run_claim(args)
    if not args.model:
        raise SiamfaceError("--model is required (or --gallery G --as NAME for a claimed identity)")
    if args.pairs_csv:
        if args.face1 or args.face2 or args.face:
            raise SiamfaceError("--face1/--face2 pick faces of two photos, not of a pairs CSV")
        if args.images:
            raise SiamfaceError("give either two images or --pairs-csv, not both")
        return _run_csv(args)
    if args.root or args.out:
        raise SiamfaceError("--root and --out only apply with --pairs-csv")
    if args.face:
        raise SiamfaceError("--face is for one photo (with --as); use --face1 and --face2")
    if len(args.images) != 2:
        raise SiamfaceError(f"give exactly two images (got {len(args.images)}), or --pairs-csv")
    return _run_one(args)


def _run_one(args: argparse.Namespace) -> int:
    import numpy as np

    a, b = (Path(x).expanduser() for x in args.images)
    for p in (a, b):
        if not p.is_file():
            raise SiamfaceError(f"image not found: {p}")
    model = open_model_arg(args)
    quiet = bool(args.json)
    (fa, da), (fb, db) = (
        face_of(model, a, args.face1, "--face1", quiet),
        face_of(model, b, args.face2, "--face2", quiet),
    )
    emb = model.embed_batch(np.stack([fa.transpose(2, 0, 1), fb.transpose(2, 0, 1)]))
    sim = float(emb[0] @ emb[1])
    detections = [d for d in (da, db) if d is not None]
    try:
        thr = pair_threshold(args.threshold, Threshold.parse(model.threshold), args.model)
    except SiamfaceError as err:
        p = model.probability(sim)
        r = Verification(sim, False, 0.0, "none", None if p is None else float(p))
        if args.json:
            out = _one_json(args, model, r) | {"same": None, "error": str(err)}
            print(json.dumps(out | {"detections": detections}))
        else:
            print(f"similarity {r.similarity:.4f}; no decision:", file=sys.stderr)
        raise
    r = decide_pair(sim, thr, model.probability(sim))
    if args.json:
        print(json.dumps(_one_json(args, model, r) | {"detections": detections}))
    else:
        verdict = "same person" if r.same else "different people"
        print(f"{verdict}: {_because(r)}")
    return EXIT_SAME if r.same else EXIT_DIFFERENT


def _because(r) -> str:
    op = ">=" if r.same else "<"
    prob = "" if r.probability is None else f", same-person probability {r.probability:.3f}"
    return (
        f"similarity {r.similarity:.4f} {op} threshold {r.threshold:.4f} "
        f"({r.threshold_source}){prob}"
    )


def _run_claim(args: argparse.Namespace) -> int:
    """One face against a claimed identity enrolled in a gallery."""

    if not (args.gallery and args.person):
        raise SiamfaceError("--gallery and --as go together: --gallery G --as NAME IMAGE")
    if args.pairs_csv or args.root or args.out:
        raise SiamfaceError("--pairs-csv, --root and --out do not apply with --gallery/--as")
    if len(args.images) != 1:
        raise SiamfaceError(f"give exactly one image with --as (got {len(args.images)})")
    image = Path(args.images[0]).expanduser()
    if not image.is_file():
        raise SiamfaceError(f"image not found: {image}")
    with Gallery.open(args.gallery) as g:
        if g.person(args.person) is None:
            raise SiamfaceError(f"{args.person!r} is not enrolled in gallery {args.gallery}")
        model = load_gallery_model(g, args.model)
        face, det = face_of(model, image, args.face, "--face", bool(args.json))
        emb = model.embed_batch(face.transpose(2, 0, 1)[None])
        r = verify_claim(model, g, emb[0], args.person, args.threshold)
    if args.json:
        print(
            json.dumps(
                {"image": str(image), **r.to_dict(), "model": str(model.source)}
                | {"fingerprint": model.fingerprint, "detections": [det] if det else []}
            )
        )
    else:
        verdict = f"is {r.person}" if r.same else f"is not {r.person}"
        print(f"{verdict}: {_because(r)}")
    return EXIT_SAME if r.same else EXIT_DIFFERENT


def _one_json(args, model, r) -> dict:
    return {
        "image1": args.images[0],
        "image2": args.images[1],
        **r.to_dict(),
        "model": str(model.source),
        "fingerprint": model.fingerprint,
        "model_card": model.card(),
    }


def _run_csv(args: argparse.Namespace) -> int:

    rows = read_pairs_csv(args.pairs_csv, args.root)  # checks every path before model work
    if args.out:
        check_output_file(args.out, "results file")
    model = open_model_arg(args)
    thr = pair_threshold(args.threshold, Threshold.parse(model.threshold), args.model)
    results = verify_pairs(
        model,
        [(r.a, r.b) for r in rows],
        thr,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not args.no_progress,
        where=lambda k: f"{args.pairs_csv}, line {rows[k].line}",
    )
    n_same = sum(r.same for r in results)
    summary = (
        f"{len(results)} pairs: {n_same} same, {len(results) - n_same} different "
        f"(threshold {thr.value:.4f}, {thr.describe()})"
    )
    table = [
        {"line": row.line, "image1": str(row.a), "image2": str(row.b), **res.to_dict()}
        for row, res in zip(rows, results, strict=True)
    ]
    if args.out:
        fields = ["image1", "image2", "similarity", "same", "threshold"]
        if any(r.probability is not None for r in results):
            fields.append("probability")

        def write(p: Path) -> None:
            with open(p, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(table)

        atomic_write(Path(args.out), write)
    if args.json:
        print(
            json.dumps(
                {
                    "model": str(model.source),
                    "fingerprint": model.fingerprint,
                    "threshold": thr.value,
                    "threshold_source": thr.describe(),
                    "pairs": table,
                }
            )
        )
    elif not args.out:
        w = csv.writer(sys.stdout)
        w.writerow(["image1", "image2", "similarity", "same"])
        for t in table:
            w.writerow([t["image1"], t["image2"], f"{t['similarity']:.6f}", int(t["same"])])
    print(summary + (f"; written to {args.out}" if args.out else ""), file=sys.stderr)
    return 0
