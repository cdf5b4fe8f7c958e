"""``siamface calibrate``: choose a checkpoint's decision threshold on validation faces.

A threshold is only meaningful for the error rate it was chosen for, on people the model never
saw. This command measures all pairs of the given identity folders, picks the threshold giving
the target false-accept rate (or the best balanced accuracy), and writes a new checkpoint with
that threshold and its provenance (target FAR, measured TAR and FAR, pair counts, data
folder). The weights are unchanged (same fingerprint); the file is replaced atomically.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

from siamface.cli._model_args import add_embed_args, add_model_args, open_model_arg, rate
from siamface.errors import SiamfaceError
from siamface.fileio import check_output_file

#: Fewer impostor pairs than this above the threshold make the FAR estimate noisy.
MIN_IMPOSTORS_ABOVE = 10


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="set a checkpoint's decision threshold from validation faces",
        description=__doc__.split("\n\n", 1)[1],
        epilog=(
            "examples:\n"
            "  siamface calibrate --model runs/pins --data faces/ --held-out runs/pins\n"
            "  siamface calibrate --model m.safetensors --data val/ --far 1e-4 --out m2.safetensors"
            "\n"
            "  siamface calibrate --model m.safetensors --data val/ --best-accuracy"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="DIR",
        help="validation identity folders DIR/<person>/<image> (repeatable)",
    )
    who = p.add_mutually_exclusive_group()
    who.add_argument(
        "--identities",
        metavar="LIST",
        help="only these people: 'a,b,c', a text file or a JSON list",
    )
    who.add_argument(
        "--held-out", metavar="RUN_DIR", help="only the validation identities of a training run"
    )
    goal = p.add_mutually_exclusive_group()
    goal.add_argument(
        "--far", type=rate, default=1e-3, help="target false-accept rate (default 1e-3)"
    )
    goal.add_argument(
        "--best-accuracy",
        action="store_true",
        help="threshold of best balanced accuracy instead of a target FAR",
    )
    p.add_argument(
        "--out", metavar="FILE", help="new checkpoint (default: replace the given one, atomically)"
    )
    p.add_argument(
        "--max-impostors",
        type=int,
        metavar="N",
        help="score a seeded sample of N impostor pairs when there are more",
    )
    p.add_argument("--seed", type=int, default=0, help="impostor-sample seed")
    p.add_argument("--json", action="store_true", help="print the threshold record as JSON")
    add_embed_args(p)
    p.set_defaults(func=run)


def checkpoint_path(model: str) -> Path:
    """The .safetensors file calibrate would rewrite; ONNX models are refused."""

    p = Path(model).expanduser()
    if p.suffix == ".onnx":
        raise SiamfaceError(
            f"{p} is an ONNX export, which calibrate cannot rewrite: calibrate the .safetensors "
            "checkpoint it came from and export again (or pass --threshold to verify)"
        )
    if p.is_dir():
        p = p / "best.safetensors"
    if not p.is_file():
        raise SiamfaceError(f"checkpoint not found: {p}")
    if p.suffix != ".safetensors":
        raise SiamfaceError(f"{p}: calibrate needs a siamface .safetensors checkpoint")
    return p


def other_target(args: argparse.Namespace) -> tuple[str, Path] | None:
    """Models whose threshold lives outside a checkpoint: ("fusion", file to write) for a
    fusion (a file, or ``a+b``, which needs --out), ("card", card to write) for a third-party
    ONNX file; None for checkpoints and built-in models."""
    from siamface.embed.fusion import is_fusion_file  # lazy: --help speed
    from siamface.embed.tta import split_tta  # lazy: --help speed

    base, tta = split_tta(args.model)
    p = Path(base).expanduser()
    out = Path(args.out).expanduser() if args.out else None
    if is_fusion_file(p) or (not p.exists() and "+" in base):
        if out is None and not p.exists():
            raise SiamfaceError(f"{args.model} is a shipped fusion: give --out FILE.json")
        return "fusion", out or p
    if p.suffix == ".onnx" and p.is_file():
        from siamface.embed.card import card_beside  # lazy: --help speed
        from siamface.embed.onnx_backend import has_siamface_metadata  # lazy: --help speed

        if has_siamface_metadata(p) and not args.card:
            return None  # an export: checkpoint_path explains what to do
        card = Path(args.card).expanduser() if args.card else card_beside(p)
        if card is None:
            return None  # opening the model reports the missing card
        return "card", out or card
    if tta != "none":
        raise SiamfaceError(
            "calibrate writes a checkpoint, which cannot record tta=flip: fuse it (siamface fuse "
            "MODEL OTHER --tta flip) or pass --threshold to the commands"
        )
    return None


def measure_threshold(args: argparse.Namespace):
    """Embed ``--data`` with ``--model`` and choose the threshold (at ``--far``, or for the
    best accuracy): (model, evaluation, threshold with its measured TAR/FAR and date, rates)."""
    from siamface.decide.threshold import Threshold  # lazy: --help speed
    from siamface.scores import evaluate as ev  # lazy: --help speed
    from siamface.scores.metrics import DEFAULT_FARS  # lazy: --help speed (sklearn, scipy)

    ids = None
    if args.identities:
        ids = ev.read_identity_list(args.identities)
    elif args.held_out:
        ids = ev.held_out_identities(args.held_out)
    images = ev.collect_images(args.data, ids)
    model = open_model_arg(args)
    fars = tuple(sorted(set(DEFAULT_FARS) | {args.far}, reverse=True))
    kw = {"max_impostors": args.max_impostors, "sample_size": args.max_impostors}
    result = ev.evaluate_folders(
        model,
        images,
        None,
        fars=fars,
        seed=args.seed,
        batch_size=args.batch_size,
        workers=args.workers,
        plots=False,
        progress=not args.no_progress,
        **(kw if args.max_impostors else {}),
    )
    m, scored = result.metrics, result.scored
    source = ", ".join(str(r) for r in images.roots)
    if images.identity_filter:
        source += f" ({images.identity_filter})"
    if args.best_accuracy:
        thr = Threshold.parse(
            {
                "value": m.best_accuracy_threshold,
                "target_far": None,
                "method": "best_accuracy",
                "source": source,
                "n_impostor": m.n_impostor,
            }
        )
    else:
        thr = Threshold.at_far(m, args.far, source)
    rates = scored.rates_at(thr.value)
    today = datetime.date.today().isoformat()
    thr = thr.with_fields(tar=rates["tar"], far=rates["far"], calibrated=today)
    return model, result, thr, rates


def run_other(args: argparse.Namespace, kind: str, out: Path) -> int:
    """Calibrate a fusion or a carded ONNX model: the new threshold goes into its file."""
    model, result, thr, _ = measure_threshold(args)
    rec = thr.to_record()
    m = result.metrics
    old = model.threshold
    if kind == "fusion":
        from siamface.embed.fusion import (  # lazy: --help speed
            packaged_fusion,
            read_fusion,
            write_fusion,
        )
        from siamface.embed.tta import split_tta  # lazy: --help speed

        base = split_tta(args.model)[0]
        src = Path(base).expanduser()
        fusion = src if src.exists() else packaged_fusion(base.split("+"))
        if fusion is None:
            raise SiamfaceError(
                f"{base} has no learned weights to keep: run siamface fuse to make a fusion file"
            )
        data = read_fusion(fusion)
        data["threshold"] = rec
        write_fusion(data, out)
    else:
        import dataclasses

        from siamface.embed.card import write_card  # lazy: --help speed

        card = dataclasses.replace(
            getattr(model, "inner", model).model_card,
            threshold=float(rec["value"]),
            threshold_source=f"siamface calibrate on {rec['source']}, {rec['calibrated']} "
            f"(TAR {rec['tar']:.4f}, FAR {rec['far']:.2e})",
        )
        write_card(card, out)
    if args.json:
        print(json.dumps({kind: str(out), "threshold": rec, "previous": old}))
        return 0
    print(
        f"threshold {rec['value']:.4f}: measured TAR {rec['tar']:.4f}, FAR {rec['far']:.2e} on "
        f"{m.n_genuine:,} genuine / {m.n_impostor:,} impostor pairs"
    )
    print(f"written to {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    from siamface.model.checkpoint import (  # lazy: --help speed (torch, torchvision)
        load_checkpoint,
        save_checkpoint,
    )
    from siamface.model.zoo import (  # lazy: --help speed (torch, torchvision)
        get_pretrained,
        resolve_checkpoint,
    )

    other = other_target(args)
    if other is not None:
        return run_other(args, *other)
    builtin = not Path(args.model).expanduser().exists() and get_pretrained(args.model)
    if builtin and not args.out:
        raise SiamfaceError(
            f"{args.model} is a built-in model: give --out FILE.safetensors for the calibrated copy"
        )
    src = None if builtin else checkpoint_path(args.model)
    out = Path(args.out).expanduser() if args.out else src
    check_output_file(out, "checkpoint")  # before the embedding work, not after
    model, result, thr, rates = measure_threshold(args)
    m = result.metrics
    rec = thr.with_fields(
        balanced_accuracy=rates["balanced_accuracy"],
        n_genuine=m.n_genuine,
        identities=result.report["data"]["identities"],
        images=result.report["data"]["images_embedded"],
    ).to_record()
    notes = list(result.report["notes"])
    above = round(rates["far"] * m.n_impostor)
    if not args.best_accuracy and above < MIN_IMPOSTORS_ABOVE:
        notes.append(
            f"only {above} impostor pairs score above this threshold: the FAR estimate is "
            "noisy; calibrate on more identities for a target this low"
        )
    ckpt = resolve_checkpoint(args.model) if src is None else load_checkpoint(src)
    old = ckpt.threshold
    if ckpt.fingerprint != model.fingerprint:  # the file changed under us
        raise SiamfaceError(f"{src} changed while calibrating; run again")
    ckpt.threshold = rec
    save_checkpoint(ckpt, out)
    if args.json:
        print(
            json.dumps({"checkpoint": str(out), "threshold": rec, "previous": old, "notes": notes})
        )
        return 0
    goal = "best balanced accuracy" if args.best_accuracy else f"target FAR {args.far:g}"
    print(
        f"threshold {rec['value']:.4f} ({goal}, {rec['method']}): measured TAR {rec['tar']:.4f}"
        f", FAR {rec['far']:.2e} on {m.n_genuine:,} genuine / {m.n_impostor:,} impostor pairs"
    )
    if old and old.get("value") is not None:
        print(f"previous threshold {old['value']:.4f} ({old.get('source', '?')})")
    for n in notes:
        print(f"note: {n}")
    print(f"written to {out}")
    return 0
