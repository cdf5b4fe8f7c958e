"""Decoding image files in DataLoader worker processes, for the file pipeline
(:func:`siamface.embed.pipeline.embed_files`) of models that run in PyTorch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from siamface.embed.pipeline import Decoded, FaceLoader
from siamface.folders.images import ImageLoadError
from siamface.system import frozen_for_fork
from siamface.tensors.transforms import hwc_to_chw


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


def process_batches(
    paths: Sequence[Path], loader: FaceLoader, size: int, batch_size: int, workers: int
) -> Iterator[Decoded]:
    """Batches decoded by ``workers`` processes (none for a set that fits one batch: starting
    workers would cost more than decoding)."""
    ds = _PathDataset(paths, loader, size)
    n = workers if len(ds) > batch_size else 0
    dl = DataLoader(ds, batch_size=batch_size, num_workers=n, worker_init_fn=_one_thread)
    with frozen_for_fork(n > 0):  # the workers fork here (see frozen_for_fork: a hang otherwise)
        batches = iter(dl)
    for x, idx, err in batches:
        errors = {int(idx[k]): e for k, e in enumerate(err) if e}
        good = [k for k in range(len(err)) if not err[k]]
        yield len(idx), (x[good].numpy() if good else None), errors


def _one_thread(_: int) -> None:
    # Loader workers decode JPEGs; intra-op threads there would fight the model for cores.
    torch.set_num_threads(1)
