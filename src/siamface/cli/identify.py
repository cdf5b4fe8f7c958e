"""``siamface identify GALLERY IMG...``: who is this? Ranked people, or "unknown"."""

from __future__ import annotations

import argparse
import json
import sys

from siamface.cli._faces import add_face_arg, face_of
from siamface.cli._model_args import MODEL_HELP, threshold_value
from siamface.cli.gallery._shared import load_gallery_model
from siamface.errors import SiamfaceError
from siamface.folders.images import ImageLoadError, load_rgb
from siamface.gallery import open_gallery


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "identify",
        help="search a gallery for the people in images (1:N, open-set)",
        description="Embed each image with the gallery's model and list the best-matching "
        "enrolled people with cosine similarity. The answer is 'unknown' when the best score "
        "is below the gallery's threshold (set with 'siamface gallery set --threshold').",
        epilog="exit status: 0 = every image answered (known or unknown), 2 = an error, "
        "including some images that could not be read (the others are still answered)",
    )
    p.add_argument(
        "gallery", metavar="GALLERY", help="gallery folder, or milvus://HOST:PORT/COLLECTION"
    )
    p.add_argument("images", nargs="+", metavar="IMG")
    p.add_argument("--model", metavar="MODEL", help=MODEL_HELP + " (default: the gallery's)")
    p.add_argument("--top-k", type=int, default=5, help="candidates to list (default 5)")
    p.add_argument(
        "--threshold",
        type=threshold_value,
        help="override the gallery's threshold (a cosine similarity in [-1, 1])",
    )
    p.add_argument("--json", action="store_true", help="print results as JSON")
    add_face_arg(p, "--face", "the photo (one IMG)")
    p.add_argument(
        "--every-face",
        action="store_true",
        help="answer for every face in each photo (with its box), not only the one it is about",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    if args.top_k < 1:
        raise SiamfaceError(f"--top-k must be at least 1, got {args.top_k}")
    if args.face and len(args.images) != 1:
        raise SiamfaceError("--face picks a face of one photo: give one IMG with it")
    if args.face and args.every_face:
        raise SiamfaceError("--face and --every-face exclude each other")
    with open_gallery(args.gallery) as g:
        if len(g) == 0:
            raise SiamfaceError(f"gallery {args.gallery} is empty; enroll people first")
        embedder = load_gallery_model(g, args.model)
        paths = [Path(p) for p in args.images]
        if args.every_face:
            return _every_face(args, g, embedder, paths)
        # Photo by photo: each says which of its faces it used, and one with two equally
        # likely faces is answered with an error naming them (the others still answered).
        faces, errors, detections = [], {}, {}
        for i, p in enumerate(paths):
            try:
                face, det = face_of(embedder, p, args.face, quiet=bool(args.json))
            except SiamfaceError as err:
                errors[i] = str(err).removeprefix(f"{p}: ").removeprefix(f"cannot read {p}: ")
                continue
            faces.append(face.transpose(2, 0, 1))
            detections[i] = det
        emb = embedder.embed_batch(np.stack(faces)) if faces else None
        if len(errors) == len(paths):
            i, reason = next(iter(errors.items()))
            raise SiamfaceError(f"cannot use {paths[i]}: {reason}")
        thr = args.threshold  # None: the gallery's own
        results = g.search(emb, args.top_k, fingerprint=embedder.fingerprint, threshold=thr)
    out, it = [], iter(results)
    for i, p in enumerate(paths):
        if i in errors:
            out.append({"image": str(p), "error": errors[i]})
        else:
            det = detections.get(i)
            out.append({"image": str(p), **next(it).to_dict(), "detections": [det] if det else []})
    if args.json:
        print(json.dumps(out if len(out) > 1 else out[0], indent=1))
    else:
        for o in out:
            _print(o)
    # 2, not 1: a script must tell "could not read an image" from a successful answer.
    return 2 if errors else 0


def _every_face(args, g, embedder, paths) -> int:
    """Every person in each photo: one search per face, answered with its box."""
    import numpy as np

    out, failed = [], False
    thr = args.threshold  # None: the gallery's own
    for p in paths:
        try:
            found, _ = embedder.locate_every_face(load_rgb(p))
        except ImageLoadError as err:
            out.append({"image": str(p), "error": str(err) or "unreadable image"})
            failed = True
            continue
        emb = embedder.embed_batch(np.stack([f.crop.transpose(2, 0, 1) for f in found]))
        results = g.search(emb, args.top_k, fingerprint=embedder.fingerprint, threshold=thr)
        faces = []
        for f, r in zip(found, results, strict=True):
            c = f.choice
            box = None if c is None or c.face is None else [round(float(v), 1) for v in c.face.box]
            faces.append({"index": 0 if c is None else c.index, "box": box, **r.to_dict()})
        out.append({"image": str(p), "faces": faces})
    if args.json:
        print(json.dumps(out if len(out) > 1 else out[0], indent=1))
    else:
        for o in out:
            if "error" in o:
                _print(o)
                continue
            for f in o["faces"]:
                at = (
                    ""
                    if f["box"] is None
                    else " at (" + ", ".join(str(round(v)) for v in f["box"]) + ")"
                )
                _print({**f, "image": f"{o['image']} face {f['index']}{at}"})
    return 2 if failed else 0


def _print(o: dict) -> None:
    if "error" in o:
        print(f"{o['image']}: error: {o['error']}", file=sys.stderr)
        return
    thr = o["threshold"]
    thr_s = "no threshold" if thr is None else f"threshold {thr:.4f}"
    if o["known"]:
        head = f"{o['identity']} ({o['score']:.4f})"
    elif o["score"] is None:
        head = "unknown (empty gallery)"
    else:
        head = f"unknown (best {o['matches'][0]['name']} {o['score']:.4f} is below the threshold)"
    print(f"{o['image']}: {head}  [{thr_s}]")
    for r, m in enumerate(o["matches"], 1):
        mark = "  <- above threshold" if m["accepted"] and thr is not None else ""
        print(f"  {r}. {m['name']}  {m['score']:.4f}{mark}")
