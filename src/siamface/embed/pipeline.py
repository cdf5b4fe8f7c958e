"""Image files -> embeddings: the one file pipeline, whatever the model.

The article embedded one image at a time (batch size 1), which leaves most of the machine
idle. Here files are decoded (and their faces found and aligned) in parallel while the model
runs on whole batches, so embedding speed approaches the model's own batched throughput.

Decoding runs in DataLoader worker processes for models that run in PyTorch (their loaders are
picklable, and processes sidestep the GIL for the Python parts of alignment), or in a thread
pool for torch-free models (onnxruntime, dlib: PIL and the runtimes release the GIL, and the
ONNX-only install has no torch). Either way the batching, the per-file error report and the
result contract are the code below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from siamface.faces.align import aligned_loader
from siamface.folders.images import ImageLoadError, load_rgb, resize_uint8
from siamface.system import usable_cpus
from siamface.tensors.transforms import Preprocessing

#: A function turning an image path into an HWC uint8 face crop of the model's input size.
FaceLoader = Callable[[Path], np.ndarray]
#: One decoded batch: (files in it, their good faces as uint8 NCHW or None, {index: reason}).
Decoded = tuple[int, np.ndarray | None, dict[int, str]]


def plain_loader(pre: Preprocessing) -> FaceLoader:
    """Decode + resize, no detection: for models trained on already-cropped faces."""

    def load(path: Path) -> np.ndarray:
        return resize_uint8(load_rgb(path), pre.image_size)

    return load


def default_loader(pre: Preprocessing, ambiguous: str = "pick") -> FaceLoader:
    """The loader a checkpoint asks for: aligned models detect and align each image first
    (``ambiguous``: see :func:`siamface.faces.align.align_face`)."""
    if pre.aligned:
        return aligned_loader(pre, ambiguous)
    return plain_loader(pre)


def embed_files(
    embed_batch: Callable[[np.ndarray], np.ndarray],
    paths: Sequence[Path],
    pre: Preprocessing,
    batch_size: int = 64,
    workers: int | None = None,
    loader: FaceLoader | None = None,
    progress: bool = True,
    *,
    threads: bool = False,
    empty_dim: int = 0,
) -> tuple[np.ndarray, dict[int, str]]:
    """Decode files with ``loader`` in parallel and embed them in batches with
    ``embed_batch`` (uint8 NCHW numpy -> (N, D) float32). ``threads``: decode in a thread pool
    (torch-free) instead of DataLoader processes.

    Unreadable files (and, for aligned models, images without a face) are skipped and
    reported: rows of the result correspond to ``[i for i in range(len(paths)) if i not in
    errors]``; with no readable file the result is ``(0, empty_dim)``.
    """
    paths = [Path(p) for p in paths]
    loader = loader or default_loader(pre)
    if threads:
        batches = _thread_batches(paths, loader, batch_size, workers or min(4, usable_cpus()))
    else:
        from siamface.embed.workers import process_batches  # lazy: torch (not in ONNX installs)

        if workers is None:
            workers = max(1, min(4, usable_cpus() - 1))
        batches = process_batches(paths, loader, pre.image_size, batch_size, workers)
    errors: dict[int, str] = {}
    out = []
    bar = _progress_bar(len(paths), progress)
    for n, faces, errs in batches:
        errors.update(errs)
        if faces is not None:
            out.append(embed_batch(faces))
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    emb = np.concatenate(out) if out else np.zeros((0, empty_dim), dtype=np.float32)
    return emb, errors


def _thread_batches(
    paths: list[Path], loader: FaceLoader, batch_size: int, workers: int
) -> Iterator[Decoded]:
    """Batches decoded by a thread pool, the next one decoding while this one is embedded."""

    def load(p: Path) -> np.ndarray | str:
        try:
            return loader(p).transpose(2, 0, 1)
        except ImageLoadError as err:
            return str(err) or "unreadable image"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:

        def submit(start: int) -> list[Future]:
            return [pool.submit(load, p) for p in paths[start : start + batch_size]]

        pending = submit(0) if paths else []
        for start in range(0, len(paths), batch_size):
            current = pending
            nxt = start + batch_size
            pending = submit(nxt) if nxt < len(paths) else []
            faces, errors = [], {}
            for k, fut in enumerate(current):
                res = fut.result()
                if isinstance(res, str):
                    errors[start + k] = res
                else:
                    faces.append(res)
            yield len(current), (np.stack(faces) if faces else None), errors


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm  # lazy: optional in the minimal (ONNX-only) install
    except ImportError:
        return None
    return tqdm(total=total, desc="embedding", unit="img")
