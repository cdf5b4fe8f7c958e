"""The torch Dataset that serves training images, from RAM or streamed from disk.

Decoded pixels kept in memory (when they fit the cache limit) keep the training loop from
re-decoding JPEGs on a machine where every cycle spent in a loader worker is a cycle taken from
the backward pass; above the limit, images are decoded from disk by the loader workers. Which
files are readable is decided before training by :mod:`siamface.folders.scan_index`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from siamface.folders.images import load_rgb, resize_uint8
from siamface.tensors.transforms import hwc_to_chw

#: Optional custom decoder: path -> HWC uint8 of the target size (e.g. detect + align).
#: Must be picklable (a module-level function or functools.partial of one).
PathDecoder = Callable[[str], np.ndarray]


class FaceImageDataset(Dataset):
    """(uint8 CHW image, integer label) pairs from in-memory pixels or from disk.

    ``transform`` runs per image on uint8 tensors (augmentation); normalisation to float
    happens per batch in the training loop, which is cheaper than per image.

    An item key may be an index or ``(index, seed)``. With a seed, the augmentation draws its
    randomness from a generator seeded with it (the process's own RNG is left untouched), so an
    image's augmentation depends only on its seed: not on which loader worker decodes it, how
    many images were skipped before it on a resume, or how many processes share the epoch.
    That is what makes a resumed or data-parallel run replay the same augmented batches.
    """

    def __init__(
        self,
        labels: Sequence[int],
        size: int,
        pixels: torch.Tensor | None = None,
        paths: Sequence[Path] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        decoder: PathDecoder | None = None,
        rows: Sequence[int] | None = None,
    ) -> None:
        if pixels is None and paths is None:
            raise ValueError("need pixels or paths")
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.size = size
        self.pixels = pixels
        # Row of each item in ``pixels`` (a shared tensor of more images than this set holds,
        # so that the training and validation sets need no copies of their rows).
        self.rows = torch.as_tensor(list(rows), dtype=torch.long) if rows is not None else None
        self.paths = list(paths) if paths is not None else None
        self.transform = transform
        self.decoder = decoder
        # Loss terms with per-image targets (distillation) need each image's index.
        self.with_index = False
        # Images [n_labeled:] have no identity (label -1): distillation-only faces.
        self.n_labeled = len(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, i: int) -> torch.Tensor:
        """The un-augmented uint8 CHW image ``i``."""
        if self.pixels is not None:
            return self.pixels[int(self.rows[i]) if self.rows is not None else i]
        path = str(self.paths[i])
        arr = self.decoder(path) if self.decoder else resize_uint8(load_rgb(path), self.size)
        return hwc_to_chw(arr)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        i, seed = key if isinstance(key, tuple) else (key, None)
        img = self.raw(i)
        if self.transform is not None:
            if seed is None:
                img = self.transform(img)
            else:
                # torchvision's transforms draw from the global torch RNG: fork it, seed it.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    img = self.transform(img)
        if self.with_index:
            return img, self.labels[i], torch.tensor(i)
        return img, self.labels[i]
