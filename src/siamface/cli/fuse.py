"""``siamface fuse``: learn how several face models vote, and save them as one model.

Every member embeds the same validation faces (identity folders of people none of the members
was trained on); every genuine pair and a seeded sample of impostor pairs is scored by each
member (each centred on its mean embedding first, where that raises its AUC on the half of the
people the mean was not taken from); a logistic regression on those cosines gives the members'
weights (its coefficients, which also put the members' differently spread scores on one scale).
The fused score is the weighted sum of the members' cosines, itself the cosine of the fused
embeddings (the members' unit embeddings scaled by the square roots of their weights,
concatenated), so galleries and the service use a fused model unchanged. Its threshold is
calibrated on the fused score of the same pairs, at --far. The output is one JSON file, usable
as --model in every command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from siamface.cli._model_args import add_embed_args, positive_int, rate
from siamface.errors import SiamfaceError
from siamface.fileio import check_output_file

EPILOG = """\
examples:
  siamface fuse sface dlib --data val_faces/ --out sface+dlib.json
  siamface fuse sface theirs.onnx --data val_faces/ --tta flip --out fused.json
  # a CCTV-adapted run with dlib, fitted on camera photos of the people it did not train on
  siamface fuse runs/cctv/best.safetensors dlib --data camera_photos/ --held-out runs/cctv \\
      --out cctv+dlib.json
  siamface verify --model fused.json a.jpg b.jpg
  siamface gallery enroll --gallery g/ --model fused.json people/
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fuse",
        help="learn a weighted fusion of several face models (one model file)",
        description=__doc__.split("\n\n", 1)[1],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="two or more models (as --model)")
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="DIR",
        help="validation identity folders DIR/<person>/<image> (repeatable); use people the "
        "fused model will not be tested on",
    )
    who = p.add_mutually_exclusive_group()
    who.add_argument(
        "--identities", metavar="LIST", help="only these people: 'a,b,c', a file or a JSON list"
    )
    who.add_argument(
        "--held-out",
        metavar="RUN_DIR",
        help="only the people a training run did not train on (its validation and test "
        "people): fit a fusion of that run's model on people none of its members learnt",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="fusion file to write (JSON)")
    p.add_argument(
        "--tta", choices=("none", "flip"), default="none", help="flip averaging for every member"
    )
    p.add_argument(
        "--no-centre",
        dest="centre",
        action="store_false",
        help="never centre a member (default: a member is centred on its mean embedding over "
        "--data when that raises its AUC on held-out halves of those people)",
    )
    p.add_argument("--far", type=rate, default=1e-3, help="threshold's false-accept rate (1e-3)")
    p.add_argument(
        "--objective",
        choices=("logistic", "tar"),
        default="logistic",
        help="weights from a logistic regression on the members' cosines (default), or the "
        "weights accepting the most genuine pairs at --far and 10x --far (tar)",
    )
    p.add_argument(
        "--max-impostors",
        type=positive_int,
        default=200_000,
        metavar="N",
        help="impostor pairs to fit on, a seeded sample (200000)",
    )
    p.add_argument("--seed", type=int, default=0, help="impostor-sample seed")
    p.add_argument("--device", default="auto", help="cpu, cuda ... (default: auto)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_embed_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from siamface.decide.threshold import Threshold  # lazy: --help speed
    from siamface.embed.base import apply_centre  # lazy: --help speed
    from siamface.embed.centring import choose_centres  # lazy: --help speed
    from siamface.embed.fusion import write_fusion  # lazy: --help speed
    from siamface.embed.fusion_fit import (  # lazy: --help speed
        fit_fusion,
        fusion_pairs,
        fusion_record,
    )
    from siamface.embed.load import create_embedder, model_reference  # lazy: --help speed
    from siamface.embed.tta import FlipEmbedder  # lazy: --help speed
    from siamface.scores import evaluate as ev  # lazy: --help speed
    from siamface.scores.metrics import (  # lazy: --help speed (sklearn, scipy)
        DEFAULT_FARS,
        verification_metrics,
    )

    if len(args.models) < 2:
        raise SiamfaceError("fuse needs two or more models, e.g. siamface fuse sface dlib ...")
    if len(set(args.models)) != len(args.models):
        raise SiamfaceError("each model may appear once in a fusion")
    out = Path(args.out).expanduser()
    check_output_file(out, "fusion file")
    ids = None
    if args.identities:
        ids = ev.read_identity_list(args.identities)
    elif args.held_out:
        ids = ev.untrained_identities(args.held_out)
    images = ev.collect_images(args.data, ids)
    if len(set(images.labels)) < 2:
        raise SiamfaceError("fuse needs at least two people in --data")
    for m in args.models:  # a member scored on its own training people gets too much weight
        hit = ev.trained_on(m, images.roots, images.labels)
        if hit:
            run, seen = hit
            print(
                f"warning: {len(seen)} of the {len(set(images.labels))} people fitted on were "
                f"used to train {m}: its weight will be too large. Fit on people it never saw "
                f"with --held-out {run}",
                file=sys.stderr,
            )
    refs = [model_reference(m) for m in args.models]
    members = [create_embedder(m, device=args.device) for m in args.models]
    scored = [FlipEmbedder(m) for m in members] if args.tta == "flip" else members
    n = len(images.paths)
    embs, errors = [], {}
    for m in scored:
        e, err = m.embed_paths(
            images.paths,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=not args.no_progress,
        )
        embs.append((e, err))
        for i, r in err.items():
            errors.setdefault(i, r)
    keep = [i for i in range(n) if i not in errors]
    aligned = []
    for e, err in embs:
        rows = {i: r for r, i in enumerate(k for k in range(n) if k not in err)}
        aligned.append(e[[rows[i] for i in keep]])
    labels = [images.labels[i] for i in keep]
    if len(set(labels)) < 2:
        raise SiamfaceError("fewer than two people have images every model could embed")
    pi, pj, same = fusion_pairs(labels, args.max_impostors, args.seed)
    if not same.any():
        raise SiamfaceError("no genuine pairs: every person needs two or more images")
    centres, centring = [None] * len(aligned), []
    if args.centre:
        centres, centring = choose_centres(aligned, labels, args.seed)
        aligned = [apply_centre(e, c) for e, c in zip(aligned, centres, strict=True)]
    scores = np.stack([np.einsum("ij,ij->i", e[pi], e[pj]) for e in aligned], axis=1)
    fit = fit_fusion(scores, same, objective=args.objective, far=args.far, seed=args.seed)
    fused = scores @ np.asarray(fit["weights"])
    fars = tuple(sorted(set(DEFAULT_FARS) | {args.far}, reverse=True))
    m = verification_metrics(fused, same, fars)
    source = ", ".join(str(r) for r in images.roots)
    thr = Threshold.at_far(m, args.far, source).to_record()
    per_member = {
        a: round(float(verification_metrics(scores[:, k], same, fars).auc), 5)
        for k, a in enumerate(args.models)
    }
    prov = {
        "data": source,
        "identities": len(set(labels)),
        "images": len(keep),
        "images_skipped": len(errors),
        "genuine_pairs": int(same.sum()),
        "impostor_pairs": int((~same).sum()),
        "seed": args.seed,
        "tta": args.tta,
        "fit_auc": {**per_member, "fused": round(float(m.auc), 5)},
    }
    if centring:
        prov["centring"] = dict(zip(args.models, centring, strict=True))
    rec = fusion_record(list(zip(refs, members, strict=True)), fit, thr, prov, centres)
    rec["tta"] = args.tta
    write_fusion(rec, out)
    if args.json:
        print(json.dumps({"fusion": str(out), **rec}))
        return 0
    weights = ", ".join(f"{a} {w:.3f}" for a, w in zip(args.models, fit["weights"], strict=True))
    print(f"weights: {weights}")
    for a, r in zip(args.models, centring, strict=False):
        if r.get("held_out_auc_plain") is not None:
            print(
                f"{a}: {'centred' if r['kept'] else 'not centred'} (held-out AUC "
                f"{r['held_out_auc_plain']:.4f} plain, {r['held_out_auc_centred']:.4f} centred)"
            )
    print(
        f"threshold {thr['value']:.4f} at FAR {args.far:g} (TAR {thr['tar']:.4f}) on "
        f"{int(same.sum()):,} genuine / {int((~same).sum()):,} impostor pairs of "
        f"{len(set(labels))} people"
    )
    print(
        "AUC on these (fitting) pairs: "
        + ", ".join(f"{k} {v:.4f}" for k, v in prov["fit_auc"].items())
    )
    if errors:
        print(f"note: {len(errors)} images skipped (a member found no face or could not read them)")
    print(f"written to {out}")
    return 0
