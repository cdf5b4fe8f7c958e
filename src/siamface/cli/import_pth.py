"""``siamface import``: the article's trained ``.pth`` files -> siamface checkpoints."""

from __future__ import annotations

import argparse
import json

from siamface.cli._model_args import positive_int
from siamface.errors import SiamfaceError
from siamface.fileio import check_output_file
from siamface.model.article import ARTICLE_BACKBONE, ARTICLE_IMAGE_SIZE, import_article_model
from siamface.tensors.transforms import IMAGENET_MEAN, IMAGENET_STD, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

EPILOG = """\
The article's training script saves torch.save(model.state_dict()) of a SiameseNetwork: a
timm backbone ('backbone.*', created with num_classes=0) and an nn.Linear ('embedder.*').
This writes the same weights as a self-describing siamface checkpoint (architecture, input
size, normalisation in its header; no pickle), refusing files whose tensors do not fit the
given backbone. The file has no decision threshold yet: calibrate one on people the model
never saw, then verify, evaluate, export or serve it.

examples:
  siamface import saved_models/model_epoch8_loss0.0010.pth --out article.safetensors
  siamface calibrate --model article.safetensors --data validation_faces/
  siamface verify --model article.safetensors a.png b.png
  siamface import my.pth --out m.safetensors --backbone tf_efficientnetv2_s --image-size 288
"""


def register(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser(
        "import",
        help="turn the article's .pth model files into siamface checkpoints",
        description="Convert a model trained with the article's script into a checkpoint.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pth", metavar="FILE.pth", help="state dict saved by the article's script")
    p.add_argument("--out", required=True, metavar="FILE", help="checkpoint to write")
    p.add_argument(
        "--backbone",
        default=ARTICLE_BACKBONE,
        help=f"timm model the file was trained with (article: {ARTICLE_BACKBONE})",
    )
    p.add_argument(
        "--image-size",
        type=positive_int,
        default=ARTICLE_IMAGE_SIZE,
        help=f"input size it was trained at (article: {ARTICLE_IMAGE_SIZE})",
    )
    p.add_argument(
        "--mean",
        type=float,
        nargs=3,
        metavar="M",
        help="normalisation mean (default: ImageNet, as the article)",
    )
    p.add_argument("--std", type=float, nargs=3, metavar="S", help="normalisation std")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import math
    from pathlib import Path

    from siamface.model.checkpoint import save_checkpoint  # lazy: --help speed (torch, torchvision)

    if not MIN_IMAGE_SIZE <= args.image_size <= MAX_IMAGE_SIZE:
        raise SiamfaceError(
            f"--image-size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {args.image_size}"
        )
    mean = tuple(args.mean) if args.mean else IMAGENET_MEAN
    std = tuple(args.std) if args.std else IMAGENET_STD
    if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise SiamfaceError("--mean must be finite and --std finite and > 0")
    out = Path(args.out).expanduser()
    if out.suffix != ".safetensors":
        out = out.with_name(out.name + ".safetensors")
    check_output_file(out, "checkpoint")
    ckpt = import_article_model(args.pth, args.backbone, args.image_size, mean, std)
    save_checkpoint(ckpt, out)
    summary = {
        "checkpoint": str(out),
        "source": str(args.pth),
        "backbone": ckpt.model_cfg.backbone,
        "embedding_size": ckpt.model_cfg.embedding_size,
        "image_size": ckpt.preprocessing.image_size,
        "fingerprint": ckpt.fingerprint,
        "threshold": None,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"imported {args.pth} -> {out} ({ckpt.model_cfg.backbone}, "
            f"{ckpt.model_cfg.embedding_size}-d, {ckpt.preprocessing.image_size} px, "
            f"fingerprint {ckpt.fingerprint})"
        )
        print(f"no decision threshold yet: siamface calibrate --model {out} --data VALIDATION_DIR")
    return 0
