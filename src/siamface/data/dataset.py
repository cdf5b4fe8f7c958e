"""Decoded face images held in memory, and the torch Dataset that serves them.

Decoding every file once, up front, does two jobs: it finds corrupt, truncated and non-image
files before training starts (so they are listed, never a crash mid-epoch), and it keeps the
training loop from re-decoding JPEGs on a 2-core machine where every cycle spent in a loader
worker is a cycle taken from the backward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from siamface.data.images import ImageLoadError, load_rgb
from siamface.data.transforms import hwc_to_chw, resize_uint8
from siamface.system import usable_cpus

#: Above this many bytes of decoded pixels, images are decoded from disk on demand instead.
DEFAULT_CACHE_LIMIT_BYTES = 6 * 1024**3


@dataclass
class DecodedImages:
    """Result of :func:`decode_images`: pixels for good files, reasons for bad ones."""

    ok: list[int]
    errors: dict[int, str]
    pixels: torch.Tensor | None  # (len(ok), 3, S, S) uint8 in ``ok`` order, or None


#: Optional custom decoder: path -> HWC uint8 of the target size (e.g. detect + align).
#: Must be picklable (a module-level function or functools.partial of one).
PathDecoder = Callable[[str], np.ndarray]


def _decode_one(
    args: tuple[str, int, bool, PathDecoder | None],
) -> tuple[np.ndarray | None, str | None]:
    path, size, keep, decoder = args
    try:
        arr = decoder(path) if decoder else resize_uint8(load_rgb(path), size)
    except ImageLoadError as err:
        return None, str(err)
    return (arr if keep else None), None


def decode_images(
    paths: Sequence[Path],
    size: int,
    workers: int | None = None,
    cache_limit_bytes: int = DEFAULT_CACHE_LIMIT_BYTES,
    desc: str = "decoding images",
    progress: bool = True,
    decoder: PathDecoder | None = None,
) -> DecodedImages:
    """Decode and resize every path (in parallel), keeping pixels when they fit in memory."""
    keep = len(paths) * 3 * size * size <= cache_limit_bytes
    workers = workers or usable_cpus()
    jobs = [(str(p), size, keep, decoder) for p in paths]
    ok: list[int] = []
    errors: dict[int, str] = {}
    arrays: list[np.ndarray] = []
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress, leave=False)
    if workers > 1 and len(jobs) > 64:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_decode_one, jobs, chunksize=32)
            for i, (arr, err) in enumerate(results):
                bar.update()
                _collect(i, arr, err, ok, errors, arrays, keep)
    else:
        for i, job in enumerate(jobs):
            arr, err = _decode_one(job)
            bar.update()
            _collect(i, arr, err, ok, errors, arrays, keep)
    bar.close()
    pixels = None
    if keep:
        pixels = (
            torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
            if arrays
            else torch.empty(0, 3, size, size, dtype=torch.uint8)
        )
    return DecodedImages(ok=ok, errors=errors, pixels=pixels)


def _collect(i, arr, err, ok, errors, arrays, keep) -> None:
    if err is not None:
        errors[i] = err
        return
    ok.append(i)
    if keep:
        arrays.append(arr)


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
    ) -> None:
        if pixels is None and paths is None:
            raise ValueError("need pixels or paths")
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.size = size
        self.pixels = pixels
        self.paths = list(paths) if paths is not None else None
        self.transform = transform
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, i: int) -> torch.Tensor:
        """The un-augmented uint8 CHW image ``i``."""
        if self.pixels is not None:
            return self.pixels[i]
        path = str(self.paths[i])
        arr = self.decoder(path) if self.decoder else resize_uint8(load_rgb(path), self.size)
        return hwc_to_chw(arr)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
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
        return img, self.labels[i]
