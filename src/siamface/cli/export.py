"""``siamface export``: a checkpoint in, a self-describing, parity-checked ``.onnx`` file out."""

from __future__ import annotations

import argparse
import json

EPILOG = """\
The .onnx file takes uint8 RGB faces (N x 3 x S x S, any N) and returns L2-normalised
embeddings; normalisation happens inside the graph. Input size, mean/std, alignment, the
decision threshold and the source checkpoint's fingerprint are stored in the file's metadata,
so 'siamface verify/embed/identify/serve --model model.onnx' run it with onnxruntime (no torch
needed; see docs/ship.md).

Before the file is written, PyTorch and onnxruntime embed the same sample images: the export
fails (and writes nothing) unless the embeddings agree within --tolerance and every
same/different decision on the sample pairs is identical.

examples:
  siamface export --model runs/pins --out pins.onnx
  siamface export --model runs/pins/best.safetensors --out pins.onnx --samples faces/alice faces/bob
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (dynamic batch, metadata, parity check)",
        description="Export a trained checkpoint to an ONNX file for onnxruntime.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="checkpoint (.safetensors) or run folder")
    p.add_argument("--out", required=True, help="output file, e.g. model.onnx")
    p.add_argument(
        "--samples",
        nargs="+",
        metavar="PATH",
        help="face images or folders for the parity check (default: synthetic images)",
    )
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17; default 18)")
    p.add_argument(
        "--exporter",
        choices=["auto", "dynamo", "torchscript"],
        default="auto",
        help="torch.onnx exporter; auto tries dynamo, then the TorchScript exporter",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest allowed |embedding difference| PyTorch vs ONNX (default 1e-4)",
    )
    p.add_argument("--json", action="store_true", help="print the export report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from siamface.export.onnx_export import export_onnx  # lazy: --help speed (torch, torchvision)

    report = export_onnx(
        args.model,
        args.out,
        opset=args.opset,
        exporter=args.exporter,
        samples=args.samples,
        tolerance=args.tolerance,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    r, par = report, report.parity
    s = r.image_size
    print(
        f"exported {args.model} -> {r.path} ({r.size_mb} MB, {r.exporter} exporter, "
        f"opset {r.opset}, {r.seconds} s)"
    )
    print(
        f"  input: uint8 RGB N x 3 x {s} x {s} (normalised inside the graph); "
        f"output: N x {r.embedding_size} unit vectors"
    )
    thr = "none stored" if r.threshold is None else f"{r.threshold:.4f}"
    print(f"  threshold: {thr}; fingerprint: {r.fingerprint}")
    print(
        f"parity vs PyTorch on {par['images']} images ({par['samples']}), {par['pairs']} pairs: "
        f"max |embedding diff| {max(par['max_abs_diff'], par['max_abs_diff_batch1']):.1e} "
        f"(tolerance {par['tolerance']:g})"
    )
    for name, d in par["decisions"].items():
        label = "stored threshold" if name == "stored" else "median score"
        print(
            f"  decisions at the {label} ({d['threshold']:.4f}): {d['accepted']}/{par['pairs']} "
            f"pairs accepted, {d['differ']} differ"
        )
    return 0
