"""``siamface evaluate``: error rates of a model on labelled faces, and the thresholds behind
them (all pairs of identity folders, or the LFW pairs protocol)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from siamface.cli._model_args import (
    add_embed_args,
    add_model_args,
    open_model_arg,
    positive_int,
    rate,
)
from siamface.errors import SiamfaceError
from siamface.fileio import check_output_dir

EPILOG = """\
protocols:
  all pairs (default)  every genuine pair and every impostor pair of DIR/<person>/<image>
                       (a seeded sample of impostors beyond --max-impostors), in bounded memory
  pairs file           --pairs pairs.txt (LFW format; 'siamface pairs make' writes one):
                       10-fold accuracy (threshold chosen on 9 folds, applied to the 10th)
  drawn pairs files    --kfold-draws 20 (with all pairs or --compare): the 10-fold accuracy
                       averaged over 20 pairs files drawn from your folders as 'siamface
                       pairs make --seed 0..19' would write them; one drawn file is a noisy
                       estimate (a difference of two models was +0.6 to +1.9 points in 90 %
                       of draws on the same 78 people), so compare models on the mean over draws

examples:
  siamface evaluate --model runs/pins --data faces/ --held-out runs/pins
  siamface evaluate --model model.safetensors --data lfw/ --pairs lfw/pairs.txt --out eval_lfw
  siamface evaluate --model model.onnx --data faces/ --identities "Ann,Bob,Carl" --json
  siamface evaluate --model fused.json --compare dlib --data test_people/ --kfold-draws 20

Writes OUT/report.json and OUT/roc.png (log FAR), OUT/det.png, OUT/scores.png.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure verification error rates (ROC, EER, TAR@FAR, 10-fold accuracy)",
        description=(
            "Embed labelled faces and measure how well the model tells people apart: AUC, "
            "EER, TAR at FAR 1e-1..1e-4 (with the thresholds that give them), best accuracy, "
            "and the rates at the model's stored threshold. FARs below 1/#impostor pairs are "
            "reported as not measurable."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument(
        "--data",
        action="append",
        metavar="DIR",
        required=True,
        help="identity folders DIR/<person>/<image> (repeatable; with --pairs: the image root)",
    )
    p.add_argument("--pairs", metavar="FILE", help="LFW-format pairs file: run that protocol")
    p.add_argument(
        "--no-face",
        choices=("centre", "error"),
        default="centre",
        help="with --pairs, a photo where no face is found: embed the centre of the photo and "
        "list it in the report (centre, default: every listed pair is scored) or stop (error)",
    )
    who = p.add_mutually_exclusive_group()
    who.add_argument(
        "--identities",
        metavar="LIST",
        help="only these people: 'a,b,c', a text file (one a line) or a JSON list",
    )
    who.add_argument(
        "--held-out",
        metavar="RUN_DIR",
        help="only the identities a training run never trained on: its test identities "
        "(test_identities) when it has some, else its validation identities",
    )
    p.add_argument("--out", default="evaluation", metavar="DIR", help="report folder")
    p.add_argument(
        "--far",
        type=rate,
        action="append",
        metavar="RATE",
        help="false-accept rates to report TAR at (repeatable; default 1e-1 1e-2 1e-3 1e-4)",
    )
    p.add_argument(
        "--max-impostors",
        type=positive_int,
        metavar="N",
        help="score a seeded sample of N impostor pairs when there are more "
        "(default: all up to 2e9, else a 1e8 sample)",
    )
    p.add_argument(
        "--compare",
        metavar="OTHER_MODEL",
        help="compare --model with this one on the same pairs: each metric's difference with a "
        "95%% interval by bootstrap over identities (writes OUT/compare.json)",
    )
    p.add_argument(
        "--condition",
        metavar="SPEC",
        help="see every face under a camera condition, e.g. lowres:28,jpeg:40 or a preset "
        "(cctv, cctv-eval, masked, infrared); applied to the aligned crop, the same for every "
        "model and run. Degradations: " + ", ".join(_condition_names()),
    )
    p.add_argument(
        "--condition-probe-only",
        action="store_true",
        help="with --condition: only the second photo of each pair is degraded (enrolled clean, "
        "seen by the camera); needs --pairs or --compare",
    )
    p.add_argument(
        "--replicates",
        type=positive_int,
        default=1000,
        metavar="N",
        help="bootstrap replicates of --compare (default 1000)",
    )
    p.add_argument(
        "--kfold-draws",
        type=positive_int,
        metavar="N",
        help="also the 10-fold accuracy over N pairs files drawn from the folders (seeds "
        "SEED..; a draw a fold cannot fill is skipped and listed); not with --pairs",
    )
    p.add_argument(
        "--folds",
        type=positive_int,
        metavar="N",
        help="with --kfold-draws: folds of each drawn file (10; needs 2 people per fold)",
    )
    p.add_argument(
        "--per-fold",
        type=positive_int,
        metavar="N",
        help="with --kfold-draws: same-person pairs per fold, and as many different (300)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="impostor-sample, condition, bootstrap, draw seed"
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_embed_args(p)
    p.set_defaults(func=run)


def _condition_names() -> list[str]:
    from siamface.tensors.conditions import REGISTRY  # lazy: --help speed

    return list(REGISTRY)


def run(args: argparse.Namespace) -> int:
    from siamface.scores import evaluate as ev  # lazy: --help speed
    from siamface.scores.metrics import DEFAULT_FARS  # lazy: --help speed (sklearn, scipy)
    from siamface.scores.report import summary_lines  # lazy: --help speed (sklearn, scipy)

    check_output_dir(args.out, "report folder")  # before minutes of embedding

    fars = tuple(sorted(set(args.far), reverse=True)) if args.far else DEFAULT_FARS
    common = dict(
        fars=fars,
        batch_size=args.batch_size,
        workers=args.workers,
        plots=not args.no_plots,
        progress=not args.no_progress,
    )
    cond = None
    if args.condition:
        from siamface.tensors.conditions import parse_condition  # lazy: --help speed

        cond = parse_condition(args.condition, args.seed)
    elif args.condition_probe_only:
        raise SiamfaceError("--condition-probe-only needs --condition SPEC")
    if (args.folds or args.per_fold) and not args.kfold_draws:
        raise SiamfaceError("--folds and --per-fold shape drawn pairs files: add --kfold-draws N")
    args.folds, args.per_fold = args.folds or 10, args.per_fold or 300
    if args.kfold_draws and args.pairs:
        raise SiamfaceError(
            "--kfold-draws draws pairs files from the folders; with --pairs the file is the "
            "protocol: drop one of them"
        )
    if args.compare:
        return _run_compare(args, cond, common)
    if args.pairs:
        if len(args.data) != 1:
            raise SiamfaceError("--pairs takes one --data folder (the image root)")
        if args.identities or args.held_out:
            raise SiamfaceError("--identities/--held-out do not apply to a pairs file")
        model = open_model_arg(args)
        model, probe = _conditioned(model, cond, args.condition_probe_only)
        result = ev.evaluate_pairs_file(
            model,
            args.pairs,
            args.data[0],
            Path(args.out),
            probe_embedder=probe,
            no_face=args.no_face,
            **common,
        )
        centred = result.report.get("data", {}).get("no_face_centre") or []
        if centred and not args.json:
            print(
                f"no face found in {len(centred)} photo(s); their centre was embedded instead "
                f"(listed in the report as no_face_centre): {', '.join(centred[:3])}"
                + (" ..." if len(centred) > 3 else ""),
                file=sys.stderr,
            )
    else:
        ids = None
        if args.identities:
            ids = ev.read_identity_list(args.identities)
        elif args.held_out:
            ids = ev.held_out_identities(args.held_out)
        images = ev.collect_images(args.data, ids)  # check the data before loading the model
        if cond and args.condition_probe_only:
            raise SiamfaceError(
                "--condition-probe-only on all pairs of a folder: use --pairs FILE, or "
                "--compare OTHER_MODEL (which supports it)"
            )
        model = open_model_arg(args)
        model, _ = _conditioned(model, cond, False)
        kw = {}
        if args.max_impostors:
            kw = {"max_impostors": args.max_impostors, "sample_size": args.max_impostors}
        result = ev.evaluate_folders(
            model,
            images,
            Path(args.out),
            seed=args.seed,
            kfold_draws=args.kfold_draws or 0,
            per_fold=args.per_fold,
            folds=args.folds,
            **kw,
            **common,
        )
    if cond:
        result.report["condition"] = {"spec": cond.spec, "probe_only": args.condition_probe_only}
        ev.write_report(Path(args.out), result.report)
    if args.json:
        print(json.dumps(result.report, indent=1, ensure_ascii=False))
    else:
        for line in summary_lines(result.report):
            print(line)
        print(f"report: {Path(args.out) / 'report.json'}", file=sys.stdout)
    return 0


def _conditioned(model, cond, probe_only: bool):
    """(embedder of the first photos, embedder of the second photos or None)."""
    if not cond:
        return model, None
    from siamface.scores.compare import ConditionedEmbedder  # lazy: --help speed

    seen = ConditionedEmbedder(model, cond)
    return (model, seen) if probe_only else (seen, None)


def _run_compare(args: argparse.Namespace, cond, common: dict) -> int:
    """``--compare``: both models on the same pairs, differences with intervals."""
    from siamface.embed.load import create_embedder  # lazy: --help speed
    from siamface.scores import compare as cmp  # lazy: --help speed
    from siamface.scores import evaluate as ev  # lazy: --help speed

    kw = {"batch_size": args.batch_size, "workers": args.workers, "progress": common["progress"]}
    opts = {"replicates": args.replicates, "seed": args.seed, **kw}
    if args.pairs:
        if len(args.data) != 1:
            raise SiamfaceError("--pairs takes one --data folder (the image root)")
        new, ref = open_model_arg(args), create_embedder(args.compare, device=args.device)
        rep = cmp.compare_pairs_file(
            new, ref, args.pairs, args.data[0], cond, args.condition_probe_only, **opts
        )
    else:
        ids = None
        if args.identities:
            ids = ev.read_identity_list(args.identities)
        elif args.held_out:
            ids = ev.held_out_identities(args.held_out)
        images = ev.collect_images(args.data, ids)
        new, ref = open_model_arg(args), create_embedder(args.compare, device=args.device)
        rep = cmp.compare_folders(
            new,
            ref,
            images.paths,
            images.labels,
            cond,
            args.condition_probe_only,
            kfold_draws=args.kfold_draws or 0,
            per_fold=args.per_fold,
            folds=args.folds,
            **opts,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(rep, indent=1), encoding="utf-8")
    if args.json:
        print(json.dumps(rep, indent=1, ensure_ascii=False))
    else:
        for line in cmp.summary_lines(rep):
            print(line)
        print(f"report: {out / 'compare.json'}")
    return 0
