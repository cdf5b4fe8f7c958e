"""Tensors -> embeddings, in batches, with parallel decoding.

The article embedded one image at a time (batch size 1), which leaves most of the machine
idle. Here images are decoded by DataLoader workers while the model runs on whole batches, in
inference mode, channels-last, so embedding speed approaches the backbone's own batched
throughput.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from siamface.folders.images import ImageLoadError, load_rgb, resize_uint8
from siamface.system import usable_cpus
from siamface.tensors.transforms import Preprocessing, hwc_to_chw, normalize_batch

#: A function turning an image path into an HWC uint8 face crop of the model's input size.
FaceLoader = Callable[[Path], np.ndarray]


def plain_loader(pre: Preprocessing) -> FaceLoader:
    """Decode + resize, no detection: for models trained on already-cropped faces."""

    def load(path: Path) -> np.ndarray:
        return resize_uint8(load_rgb(path), pre.image_size)

    return load


def default_loader(pre: Preprocessing, ambiguous: str = "pick") -> FaceLoader:
    """The loader a checkpoint asks for: aligned models detect and align each image first
    (``ambiguous``: see :func:`siamface.faces.align.align_face`)."""
    if pre.aligned:
        from siamface.faces.align import aligned_loader  # noqa: PLC0415 - optional layer

        return aligned_loader(pre, ambiguous)
    return plain_loader(pre)


class _PathDataset(Dataset):
    def __init__(self, paths: Sequence[Path], loader: FaceLoader, size: int) -> None:
        self.paths, self.loader, self.size = list(paths), loader, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return hwc_to_chw(self.loader(self.paths[i])), i, ""
        except ImageLoadError as err:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), i, str(err) or "bad"


def _infer(model: nn.Module, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return model(x).float()


@torch.inference_mode()
def embed_uint8(
    model: nn.Module,
    pixels: torch.Tensor,
    pre: Preprocessing,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    channels_last: bool = True,
) -> np.ndarray:
    """Embed an in-memory uint8 NCHW stack (e.g. a validation set) -> (N, D) float32."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(pixels), batch_size):
        x = normalize_batch(pixels[start : start + batch_size], pre).to(device)
        out.append(_infer(model, x, channels_last).cpu())
    model.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy()


def embed_files(
    embed_batch: Callable[[np.ndarray], np.ndarray],
    paths: Sequence[Path],
    pre: Preprocessing,
    batch_size: int = 64,
    workers: int | None = None,
    loader: FaceLoader | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, dict[int, str]]:
    """Decode files in loader workers and embed them in batches with ``embed_batch``
    (uint8 NCHW numpy -> (N, D) float32). Backend-neutral: PyTorch or onnxruntime.

    Unreadable files (and, for aligned models, images without a face) are skipped and
    reported: rows of the result correspond to ``[i for i in range(len(paths)) if i not in
    errors]``.
    """
    loader = loader or default_loader(pre)
    if workers is None:
        workers = max(1, min(4, usable_cpus() - 1))
    ds = _PathDataset(paths, loader, pre.image_size)
    dl = DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=workers if len(ds) > batch_size else 0,
        worker_init_fn=_one_thread,
    )
    errors: dict[int, str] = {}
    out = []
    with tqdm(total=len(ds), desc="embedding", unit="img", disable=not progress) as bar:
        for x, idx, err in dl:
            for k, e in enumerate(err):
                if e:
                    errors[int(idx[k])] = e
            good = [k for k in range(len(err)) if not err[k]]
            if good:
                out.append(embed_batch(x[good].numpy()))
            bar.update(len(idx))
    emb = np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
    return emb, errors


@torch.inference_mode()
def embed_paths(
    model: nn.Module,
    paths: Sequence[Path],
    pre: Preprocessing,
    batch_size: int = 64,
    workers: int | None = None,
    device: str | torch.device = "cpu",
    loader: FaceLoader | None = None,
    progress: bool = True,
    channels_last: bool = True,
) -> tuple[np.ndarray, dict[int, str]]:
    """Embed image files; returns (embeddings of the readable ones in order, {index: error}).

    Unreadable files are skipped and reported, never fatal: rows of the result correspond to
    ``[i for i in range(len(paths)) if i not in errors]``.
    """
    model.eval()

    def batch_fn(pixels: np.ndarray) -> np.ndarray:
        x = normalize_batch(torch.from_numpy(pixels), pre).to(device)
        return _infer(model, x, channels_last).cpu().numpy()

    with torch.inference_mode():
        return embed_files(batch_fn, paths, pre, batch_size, workers, loader, progress)


def _one_thread(_: int) -> None:
    # Loader workers decode JPEGs; intra-op threads there would fight the model for cores.
    torch.set_num_threads(1)
