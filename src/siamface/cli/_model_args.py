"""Arguments and helpers shared by the model-using commands (evaluate, verify, embed,
calibrate), so they spell the same things the same way."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from siamface.decide.threshold import Threshold
from siamface.embed.load import create_embedder

if TYPE_CHECKING:
    from siamface.decide.threshold import Threshold

#: What ``--model`` accepts, shared by every command that takes a model.
MODEL_HELP = (
    "checkpoint (.safetensors), training run directory, exported .onnx, a third-party "
    "face-recognition .onnx with its model card (FILE.card.yaml beside it, or --card), a fusion "
    "file (siamface fuse), or a built-in face model: sface (OpenCV Zoo SFace, installed with "
    "siamface), dlib (pip install 'siamface[dlib]'); join models with + for a fusion "
    "(sface+dlib) and append :tta=flip for flip averaging (sface:tta=flip)"
)
CARD_HELP = (
    "model card (YAML/JSON: colour order, mean/std, alignment, licence) of a third-party "
    ".onnx given as --model, when it is not beside the file as FILE.card.yaml"
)


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--card", metavar="FILE", help=CARD_HELP)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")


def add_embed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch")
    p.add_argument(
        "--workers", type=int, default=None, help="image-decoding processes (default: auto)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def positive_int(text: str) -> int:
    try:
        v = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def threshold_value(text: str) -> Threshold:
    """``--threshold T``: a threshold given for this run, a cosine similarity in [-1, 1] (the
    rule the server, the API and ``gallery set`` apply too; 'nan' and 5 are refused)."""

    try:
        return Threshold.given(text)
    except Exception as err:  # noqa: BLE001 - argparse wants ArgumentTypeError
        raise argparse.ArgumentTypeError(str(err)) from None


def rate(text: str) -> float:
    """A false-accept rate strictly between 0 and 1 (e.g. 1e-3)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate like 1e-3, got {text!r}") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"a rate must be between 0 and 1, got {text!r}")
    return v


def open_model_arg(args: argparse.Namespace):

    return create_embedder(args.model, device=args.device, card=getattr(args, "card", None))
