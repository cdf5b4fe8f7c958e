"""``siamface centre``: adapt a face model to your people without training, when it helps them.

A face model's embeddings share a component along the mean face of the population it sees, and
poor faces (small, blurred, compressed, dark) lean towards it most, so impostor pairs of poor
faces score high and the threshold at a low false-accept rate must sit high. This command
embeds your identity folders, measures on people the mean never saw (two halves of your people,
each scored with the other half's mean) whether subtracting the mean and normalising again
separates people better, and only then writes a centred copy of the model: a checkpoint (or,
for a third-party ONNX file, its model card) that every command (verify, evaluate, gallery,
serve, export) uses as is. Its threshold is measured on the same held-out scores (the old one
belongs to the uncentred model). Takes minutes where fine-tuning takes twenty; on the bench's
clean photos it gained about what fine-tuning gained, under a CCTV condition about half
(docs/finetune.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from siamface.cli._model_args import add_embed_args, rate
from siamface.errors import SiamfaceError
from siamface.fileio import check_output_file

if TYPE_CHECKING:
    import numpy as np

#: Exit code when centring did not help the held-out people (nothing is written).
EXIT_NOT_KEPT = 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "centre",
        help="centre a face model on your people's mean face, when held-out people gain",
        description=__doc__.split("\n\n", 1)[1],
        epilog=(
            "examples:\n"
            "  siamface centre --model sface --data faces/ --out sface_mine.safetensors\n"
            "  siamface centre --model sface --data faces/ --condition cctv --out sface_cctv"
            ".safetensors\n"
            "  siamface centre --model runs/pins --data more_faces/ --json\n\n"
            "exit status: 0 written, 1 centring did not help (nothing written; --force writes "
            "it anyway), 2 error"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help="siamface checkpoint (.safetensors), training run directory, a built-in face "
        "model run with PyTorch (sface), or a third-party .onnx with its model card (the centre "
        "and the threshold go into the card). A fusion centres its members itself (siamface "
        "fuse); dlib and siamface ONNX exports cannot be rewritten",
    )
    p.add_argument(
        "--card",
        metavar="FILE",
        help="model card of a third-party .onnx --model, when it is not beside the file",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="DIR",
        help="identity folders DIR/<person>/<image> of the people (and cameras) the model will "
        "see; not the people you will test it on (repeatable)",
    )
    p.add_argument(
        "--identities", metavar="LIST", help="only these people: 'a,b,c', a text file or JSON"
    )
    p.add_argument(
        "--condition",
        metavar="SPEC",
        help="see every face under a camera condition (e.g. cctv, lowres:28,jpeg:40): the mean "
        "of faces as your camera will show them, when you have clean photos only",
    )
    p.add_argument(
        "--far", type=rate, default=1e-3, help="target false-accept rate of the new threshold"
    )
    p.add_argument(
        "--force", action="store_true", help="write the centred model even if it did not help"
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="the centred checkpoint, or card for an .onnx model (default: replace the given "
        "one; required for a built-in model)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the halves and the condition")
    p.add_argument("--json", action="store_true", help="print what was measured as JSON")
    add_embed_args(p)
    p.set_defaults(func=run)


@dataclass
class Target:
    """What centre rewrites: the plain model to measure with, and how to write it centred."""

    plain: object  # an Embedder: the model without any centre it had, with its old threshold
    out: Path
    was_centred: bool
    #: (centre, threshold record, provenance) -> None: writes the centred model to ``out``
    write: Callable[[np.ndarray, dict, dict], None]
    dropped: list[str] = field(default_factory=list)  # what the centred copy loses


def torch_target(args: argparse.Namespace) -> Target:
    """A siamface checkpoint, run directory or built-in PyTorch face model (sface)."""
    import torch

    from siamface.cli.calibrate import checkpoint_path  # lazy: --help speed
    from siamface.embed.torch_backend import TorchEmbedder  # lazy: --help speed (torch)
    from siamface.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from siamface.model.zoo import get_pretrained, pretrained_checkpoint  # lazy: --help speed

    p = Path(args.model).expanduser()
    if not p.exists() and get_pretrained(args.model):
        if not args.out:
            raise SiamfaceError(
                f"{args.model} is a built-in model: give --out FILE.safetensors for the centred "
                "copy"
            )
        ckpt, out = pretrained_checkpoint(args.model), Path(args.out).expanduser()
    else:
        src = checkpoint_path(args.model)
        ckpt, out = load_checkpoint(src), Path(args.out).expanduser() if args.out else src
    net = ckpt.build("cpu")
    was = net.cfg.centred
    net.set_centre(None)  # measure from the plain model: a centred input is re-centred
    plain = Checkpoint(
        net.cfg, ckpt.preprocessing, net.state_dict(), ckpt.threshold, None, ckpt.info
    )

    def write(centre: np.ndarray, threshold: dict, provenance: dict) -> None:
        net.set_centre(torch.as_tensor(centre, dtype=torch.float32))
        info = {**ckpt.info, "centring": provenance}
        save_checkpoint(
            Checkpoint(net.cfg, ckpt.preprocessing, net.state_dict(), threshold, None, info), out
        )

    return Target(
        TorchEmbedder(args.model, device=args.device, checkpoint=plain),
        out,
        was,
        write,
        ["the pair head (a probability from the plain score)"] if ckpt.pair_head else [],
    )


def card_target(args: argparse.Namespace, path: Path) -> Target:
    """A third-party ONNX file run through its model card: the centre goes into the card."""
    from siamface.embed.card import card_beside, read_card, write_card  # lazy: --help speed
    from siamface.embed.onnx_backend import (  # lazy: --help speed (onnxruntime)
        CardOnnxEmbedder,
        has_siamface_metadata,
    )

    card_path = Path(args.card).expanduser() if args.card else card_beside(path)
    if card_path is None:
        if has_siamface_metadata(path):
            raise SiamfaceError(
                f"{path} is a siamface export: centre the .safetensors checkpoint it came from "
                "and export again"
            )
        raise SiamfaceError(f"{path} has no model card: write FILE.card.yaml beside it or --card")
    card = read_card(card_path)
    out = Path(args.out).expanduser() if args.out else card_path

    def write(centre: np.ndarray, threshold: dict, provenance: dict) -> None:
        how = (
            f"siamface centre on {provenance['data']}, {threshold['calibrated']} (TAR "
            f"{threshold['tar']:.4f}, FAR {threshold['far']:.2e}, held-out halves)"
        )
        write_card(
            replace(
                card,
                centre=tuple(round(float(v), 7) for v in centre),
                threshold=float(threshold["value"]),
                threshold_source=how,
            ),
            out,
        )

    plain = CardOnnxEmbedder(path, replace(card, centre=None))
    return Target(plain, out, card.centre is not None, write)


def open_target(args: argparse.Namespace) -> Target:
    """The model to centre, or a one-line error for what centre cannot rewrite."""
    from siamface.embed.fusion import is_fusion_file  # lazy: --help speed

    model = args.model
    p = Path(model).expanduser()
    if ":tta=" in model or ("+" in model and not p.exists()) or is_fusion_file(p):
        raise SiamfaceError(
            f"{model}: centre rewrites one model; a fusion centres its members itself "
            "(siamface fuse, on by default)"
        )
    if not p.exists() and model == "dlib":
        raise SiamfaceError(
            "dlib runs outside PyTorch and ONNX and cannot be rewritten; centring does not help "
            "it on the sample data anyway (its embeddings sit in a narrow cone): docs/models.md"
        )
    if p.suffix == ".onnx" and p.is_file():
        return card_target(args, p)
    if args.card:
        raise SiamfaceError("--card goes with a third-party .onnx --model")
    return torch_target(args)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from siamface.decide.threshold import Threshold  # lazy: --help speed
    from siamface.embed.centring import held_out_scores, unit  # lazy: --help speed
    from siamface.scores import evaluate as ev  # lazy: --help speed
    from siamface.scores.metrics import (  # lazy: --help speed (sklearn)
        DEFAULT_FARS,
        far_key,
        verification_metrics,
    )

    if args.out:
        check_output_file(Path(args.out).expanduser(), "output")  # before the embedding work
    target = open_target(args)
    seen = target.plain
    if args.condition:
        from siamface.scores.compare import ConditionedEmbedder  # lazy: --help speed
        from siamface.tensors.conditions import parse_condition  # lazy: --help speed

        seen = ConditionedEmbedder(seen, parse_condition(args.condition, args.seed))
    ids = ev.read_identity_list(args.identities) if args.identities else None
    images = ev.collect_images(args.data, ids)
    emb, kept, errors = ev.embed_all(
        seen, images.paths, args.batch_size, args.workers, not args.no_progress
    )
    labels = [images.labels[i] for i in kept]
    held = held_out_scores(emb, labels, args.seed)
    if held is None or not held.same:
        raise SiamfaceError(
            f"{len(set(labels))} people with readable faces: centre needs at least 4 people, "
            "some with two or more photos, to measure on people the mean never saw"
        )
    fars = tuple(sorted(set(DEFAULT_FARS) | {args.far}, reverse=True))
    metrics = {w: verification_metrics(*held.pooled(w), fars) for w in ("plain", "centred")}
    centre = unit(emb).mean(axis=0)
    source = ", ".join(str(r) for r in images.roots)
    if images.identity_filter:
        source += f" ({images.identity_filter})"
    key = "tar_at_far_" + far_key(args.far).replace("e-0", "e-")  # as evaluate names it
    measured = {
        "model": args.model,
        "data": source,
        "condition": args.condition,
        "identities": len(set(labels)),
        "images": len(kept),
        "unreadable": len(errors),
        "mean_norm": round(float(np.linalg.norm(centre)), 4),
        "held_out": {
            w: {"auc": round(held.auc(w), 5), key: metrics[w].tar_at_far.get(far_key(args.far))}
            for w in ("plain", "centred")
        },
        "kept": held.kept,
        "was_centred": target.was_centred,
    }
    if not held.kept and not args.force:
        measured["written"] = None
        _report(args, measured, None, target)
        return EXIT_NOT_KEPT
    scores, same = held.pooled("centred")
    thr = Threshold.at_far(metrics["centred"], args.far, f"siamface centre on {source}")
    rec = thr.with_fields(
        far=round(float(np.mean(scores[~same] >= thr.value)), 6),
        n_genuine=int(same.sum()),
        calibrated=datetime.date.today().isoformat(),
        note="measured on held-out halves of these people, each centred on the other half's mean",
    ).to_record()
    target.write(centre, rec, {k: v for k, v in measured.items() if k != "was_centred"})
    measured["written"] = str(target.out)
    measured["threshold"] = rec
    measured["previous_threshold"] = target.plain.threshold
    _report(args, measured, rec, target)
    return 0


def _report(args: argparse.Namespace, m: dict, rec: dict | None, target: Target) -> None:
    if args.json:
        print(json.dumps(m))
        return
    h = m["held_out"]
    key = next(k for k in h["plain"] if k != "auc")
    print(
        f"{m['images']} faces of {m['identities']} people"
        + (f" under {m['condition']}" if m["condition"] else "")
        + f"; their mean face has norm {m['mean_norm']:.3f}"
    )
    print(
        f"held-out people (each half centred on the other half's mean): AUC "
        f"{h['plain']['auc']:.4f} -> {h['centred']['auc']:.4f}, "
        f"TAR@FAR={key.removeprefix('tar_at_far_')} "
        f"{_pct(h['plain'][key])} -> {_pct(h['centred'][key])}"
    )
    if m["unreadable"]:
        print(f"note: {m['unreadable']} image(s) without a readable face were left out")
    if m["written"] is None:
        print(
            "centring did not help these people: nothing written (--force writes it anyway; "
            "see docs/finetune.md on when it helps)"
        )
        return
    if not m["kept"]:
        print("note: centring did not help these people; written because of --force")
    if m["was_centred"]:
        print("note: the model was centred already; its old centre is replaced")
    print(
        f"threshold {rec['value']:.4f} at FAR {rec['target_far']:g} ({rec['method']}; measured "
        f"TAR {rec['tar']:.4f}, FAR {rec['far']:.2e} on the held-out scores)"
    )
    old = (target.plain.threshold or {}).get("value")
    if old is not None:
        print(f"previous threshold {old:.4f}: measured for the model before this centring")
    for what in target.dropped:
        print(f"note: dropped {what}")
    print(f"written to {m['written']}")


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"
