"""Checkpoint -> self-describing ``.onnx`` file, proven equal to PyTorch before it is written.

Design choices, and why:

* **uint8 input, normalisation inside the graph.** Callers (this package's onnxruntime
  backend, but also C#, JS or mobile code) only have to resize RGB faces to the input size;
  they cannot get mean/std wrong, and the input tensor is 4x smaller than float32.
* **Dynamic batch.** One file serves single requests and the REST service's micro-batches.
* **Metadata inside the file** (``metadata_props``): a JSON record under ``"siamface"``
  with everything :class:`~siamface.embed.onnx_backend.OnnxEmbedder` needs (embedding and
  input size, mean/std, alignment, decision threshold, source fingerprint, version), plus the
  same values as flat keys for people inspecting the file in Netron or ``onnx``.
* **Parity check before the file appears.** The export runs in a temporary file next to the
  destination; the ONNX model and the PyTorch checkpoint embed the same sample faces, and the
  file is only moved into place when the embeddings agree within ``tolerance`` and every
  same/different decision on the sample pairs is identical. The fingerprint recorded is the
  checkpoint's, so galleries enrolled with either format stay compatible.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from siamface.decide.threshold import Threshold
from siamface.embed.load import create_embedder
from siamface.embed.onnx_backend import FORMAT, FORMAT_VERSION, METADATA_KEY
from siamface.errors import SiamfaceError
from siamface.fileio import atomic_write, check_output_file
from siamface.folders.images import ImageLoadError, is_image_path, load_rgb
from siamface.model.checkpoint import Checkpoint
from siamface.model.zoo import resolve_checkpoint
from siamface.tensors.transforms import Preprocessing, normalize_batch
from siamface.version import __version__

DEFAULT_OPSET = 18
EXPORTERS = ("auto", "dynamo", "torchscript")
INPUT_NAME, OUTPUT_NAME = "pixels", "embeddings"
MAX_SAMPLE_IMAGES = 64


class UInt8EmbeddingNet(nn.Module):
    """uint8 NCHW RGB -> unit embeddings: the checkpoint's network with its normalisation
    folded in (same arithmetic as :func:`siamface.tensors.transforms.normalize_batch`)."""

    def __init__(self, net: nn.Module, pre: Preprocessing) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(pre.std).view(1, 3, 1, 1) * 255.0)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net((pixels.float() - self.mean) / self.std)


@dataclass
class ExportReport:
    """What ``siamface export`` did; printed for people and as ``--json`` for machines."""

    path: str
    exporter: str
    opset: int
    size_mb: float
    fingerprint: str
    embedding_size: int
    image_size: int
    threshold: float | None
    seconds: float
    parity: dict

    def to_dict(self) -> dict:
        return asdict(self)


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
    samples: Sequence[str | Path] | None = None,
    tolerance: float = 1e-4,
) -> ExportReport:
    """Export ``checkpoint`` to ``out`` (written atomically, only if the parity check passes).

    ``samples``: image files or folders for the parity check (default: synthetic faces).
    """
    if exporter not in EXPORTERS:
        raise SiamfaceError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if opset < 17:
        raise SiamfaceError(f"opset {opset} is too old; use 17 or newer")
    out = Path(out).expanduser()
    if out.suffix != ".onnx":
        raise SiamfaceError(f"output file must end in .onnx: {out}")
    check_output_file(out, "ONNX file")  # a folder, read-only, a full disk: refused now
    t0 = time.perf_counter()
    ckpt = resolve_checkpoint(checkpoint)
    pre = ckpt.preprocessing
    faces, sample_source = _sample_faces(samples, ckpt)
    result: dict = {}

    def write(tmp: Path) -> None:
        result["exporter"] = _export_graph(ckpt, tmp, opset, exporter)
        _add_metadata(tmp, ckpt, Path(checkpoint), result["exporter"], opset)
        result["parity"] = parity_check(ckpt, tmp, faces, tolerance)
        result["parity"]["samples"] = sample_source

    atomic_write(out, write)
    out.chmod(0o644)  # mkstemp makes 0600; a model file is meant to be read by services
    thr = (ckpt.threshold or {}).get("value")
    return ExportReport(
        path=str(out),
        exporter=result["exporter"],
        opset=opset,
        size_mb=round(out.stat().st_size / 2**20, 2),
        fingerprint=ckpt.fingerprint,
        embedding_size=ckpt.model_cfg.embedding_size,
        image_size=pre.image_size,
        threshold=None if thr is None else float(thr),
        seconds=round(time.perf_counter() - t0, 2),
        parity=result["parity"],
    )


def _export_graph(ckpt: Checkpoint, path: Path, opset: int, exporter: str) -> str:
    """Write the bare graph; returns the exporter that worked ("dynamo" or "torchscript")."""
    size = ckpt.preprocessing.image_size
    model = UInt8EmbeddingNet(ckpt.build("cpu"), ckpt.preprocessing).eval()
    example = (torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8),)
    tried = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    failures = []
    for name in tried:
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                _run_exporter(name, model, example, path, opset)
            return name
        except OSError:
            raise  # the output cannot be written (full disk...): no other exporter can either
        except Exception as err:  # noqa: BLE001 - exporters fail in many ways; try the next
            failures.append(f"{name}: {type(err).__name__}: {str(err).strip()[:500]}")
    raise SiamfaceError(
        f"ONNX export of {ckpt.model_cfg.backbone} failed:\n  " + "\n  ".join(failures)
    )


def _run_exporter(name: str, model: nn.Module, example: tuple, path: Path, opset: int) -> None:
    import warnings

    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "dynamo":
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(
                model,
                example,
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"pixels": {0: batch}},
                external_data=False,
                optimize=True,
                verbose=False,
            )
        else:
            torch.onnx.export(
                model,
                example,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )


def onnx_metadata(ckpt: Checkpoint, source: Path, exporter: str, opset: int) -> dict:
    """The record stored under ``"siamface"`` in the file (read by OnnxEmbedder)."""
    pair_head = None
    if ckpt.pair_head:
        pair_head = {k: float(v) for k, v in ckpt.pair_head.items()}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "siamface_version": __version__,
        "fingerprint": ckpt.fingerprint,
        "source_checkpoint": source.name,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "exporter": exporter,
        "opset": opset,
        "model": ckpt.model_cfg.to_dict(),
        "embedding_size": ckpt.model_cfg.embedding_size,
        "preprocessing": ckpt.preprocessing.to_dict(),
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "layout": "NCHW",
            "channels": "RGB",
            "range": [0, 255],
            "normalisation": "inside the graph: (x - mean*255) / (std*255)",
        },
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "l2_normalised": True},
        "similarity": "cosine (dot product of the unit embeddings)",
        "threshold": ckpt.threshold,
        "pair_head": pair_head,
        "info": ckpt.info,
    }


def _add_metadata(path: Path, ckpt: Checkpoint, source: Path, exporter: str, opset: int) -> None:
    import onnx

    model = onnx.load(str(path))
    meta = onnx_metadata(ckpt, source, exporter, opset)
    pre = ckpt.preprocessing
    flat = {
        METADATA_KEY: json.dumps(meta),
        "embedding_size": str(meta["embedding_size"]),
        "image_size": str(pre.image_size),
        "mean": json.dumps(list(pre.mean)),
        "std": json.dumps(list(pre.std)),
        "aligned": json.dumps(pre.aligned),
        "align": json.dumps(pre.align),
        "threshold": json.dumps((ckpt.threshold or {}).get("value")),
        "fingerprint": meta["fingerprint"],
        "siamface_version": __version__,
    }
    del model.metadata_props[:]
    for k, v in flat.items():
        model.metadata_props.add(key=k, value=v)
    model.doc_string = (
        "siamface face-embedding model: uint8 RGB faces (N x 3 x H x W) -> L2-normalised "
        "embeddings; compare with cosine similarity against the stored threshold."
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


# -- parity ---------------------------------------------------------------------------


def parity_check(
    ckpt: Checkpoint, onnx_path: Path, faces: np.ndarray, tolerance: float = 1e-4
) -> dict:
    """Embed ``faces`` (uint8 NCHW) with PyTorch and with onnxruntime; raise if they differ.

    Compares embeddings (max abs difference, batched and one at a time, which also exercises
    the dynamic batch axis) and the same/different decision of every pair, at the stored
    threshold and at the median PyTorch score (so both outcomes occur even when the stored
    threshold puts every synthetic pair on one side).
    """

    net = ckpt.build("cpu")
    with torch.inference_mode():
        ref = net(normalize_batch(torch.from_numpy(faces), ckpt.preprocessing)).numpy()
    ort_model = create_embedder(onnx_path, backend="onnx", providers=["CPUExecutionProvider"])
    got = ort_model.embed_batch(faces)
    single = np.concatenate([ort_model.embed_batch(faces[i : i + 1]) for i in range(3)])
    diff = float(np.abs(got - ref).max())
    diff_single = float(np.abs(single - ref[:3]).max())

    iu = np.triu_indices(len(faces), k=1)
    s_ref, s_got = (ref @ ref.T)[iu], (got @ got.T)[iu]
    thresholds = {"median_score": float(np.median(s_ref))}
    stored = Threshold.parse(ckpt.threshold)
    if stored is not None:
        thresholds["stored"] = stored.value
    decisions = {}
    mismatched = 0
    for name, thr in thresholds.items():
        a, b = s_ref >= thr, s_got >= thr
        bad = int((a != b).sum())
        mismatched += bad
        decisions[name] = {"threshold": round(thr, 6), "accepted": int(a.sum()), "differ": bad}
    report = {
        "images": len(faces),
        "pairs": len(s_ref),
        "max_abs_diff": diff,
        "max_abs_diff_batch1": diff_single,
        "max_score_diff": float(np.abs(s_ref - s_got).max()),
        "tolerance": tolerance,
        "decisions": decisions,
        "decisions_identical": mismatched == 0,
        "passed": max(diff, diff_single) <= tolerance and mismatched == 0,
    }
    if not report["passed"]:
        raise SiamfaceError(
            "ONNX parity check failed, nothing written: max |embedding diff| "
            f"{max(diff, diff_single):.2e} (tolerance {tolerance:g}), {mismatched} pair "
            f"decisions differ. Details: {json.dumps(report)}"
        )
    return report


def _sample_faces(samples: Sequence[str | Path] | None, ckpt: Checkpoint) -> tuple[np.ndarray, str]:
    """uint8 NCHW faces for the parity check: the user's images, or synthetic ones."""
    pre = ckpt.preprocessing
    if not samples:
        return synthetic_faces(pre.image_size), "synthetic (16 random smooth images x 2 variants)"
    files: list[Path] = []
    for s in samples:
        p = Path(s).expanduser()
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and is_image_path(f))
        elif p.is_file():
            files.append(p)
        else:
            raise SiamfaceError(f"parity sample not found: {p}")
    files = _spread(files, MAX_SAMPLE_IMAGES)
    faces = []
    if pre.aligned:
        from siamface.faces.align import align_face_image as face_fn  # lazy: guarded
    else:
        from siamface.folders.images import resize_uint8  # lazy: guarded

        def face_fn(img, pre):
            return resize_uint8(img, pre.image_size)

    for f in files:
        try:
            faces.append(face_fn(load_rgb(f), pre).transpose(2, 0, 1))
        except ImageLoadError:
            continue  # unreadable or faceless samples are simply not used
    if len(faces) < 4:
        raise SiamfaceError(
            f"need at least 4 readable face images for the parity check, found {len(faces)} "
            f"in {', '.join(str(s) for s in samples)}"
        )
    return np.ascontiguousarray(np.stack(faces)), f"{len(faces)} images from the given samples"


def _spread(files: list[Path], n: int) -> list[Path]:
    """At most ``n`` files spread evenly over the sorted list (so several identities appear)."""
    if len(files) <= n:
        return files
    idx = np.linspace(0, len(files) - 1, n).round().astype(int)
    return [files[i] for i in idx]


def synthetic_faces(size: int, n_base: int = 16, variants: int = 2, seed: int = 0) -> np.ndarray:
    """Deterministic face-sized test images: smooth random colour fields, each with noisy
    variants, so the pair set holds both near-duplicates and unrelated images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_base):
        coarse = (rng.random((6, 6, 3)) * 255).astype(np.uint8)
        base = np.asarray(
            Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16
        )
        for v in range(variants):
            noise = rng.normal(0, 6 * v, base.shape) if v else 0
            out.append(np.clip(base + noise, 0, 255).astype(np.uint8).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out))
