"""The guard set of a fine-tune: people from *another* domain the adapted model must not forget.

Adapting a face model to CCTV faces or masks is worth little if it gets worse on the photos it
already handled well elsewhere. ``guard=DIR`` names identity folders from such a domain (other
people, other cameras); the verdict compares the candidate with the start on them, like the
clean test faces: a metric significantly worse there by more than ``guard_margin`` keeps the
start. The folder is read only at the verdict, through the starting model's own loader
(detection and alignment as it expects), so guard photos never train or choose anything.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from siamface.embed.pipeline import default_loader
from siamface.errors import SiamfaceError
from siamface.folders.images import ImageLoadError
from siamface.scores.evaluate import collect_images
from siamface.tensors.transforms import Preprocessing


@dataclass
class GuardSet:
    """Aligned uint8 crops of the guard people and their integer labels."""

    pixels: torch.Tensor  # N x 3 x H x W uint8
    labels: np.ndarray  # (N,) int64
    identities: int
    unreadable: int


def load_guard(folder: str | Path, pre: Preprocessing) -> GuardSet:
    """Read every image of ``folder`` (identity folders) as the model sees it. Raises
    :class:`SiamfaceError` when fewer than two identities with two faces each remain (no
    genuine and impostor pairs to compare on)."""
    imgs = collect_images([folder])
    load = default_loader(pre)
    crops: list[np.ndarray] = []
    names: list[str] = []
    bad = 0
    for path, name in zip(imgs.paths, imgs.labels, strict=True):
        try:
            crops.append(load(path))
        except ImageLoadError:
            bad += 1
            continue
        names.append(name)
    usable = sorted(n for n, c in Counter(names).items() if c >= 2)
    if len(usable) < 2:
        raise SiamfaceError(
            f"guard {folder}: {len(usable)} identities with two readable faces; "
            "a guard needs at least 2 people with 2 photos each"
        )
    index = {n: k for k, n in enumerate(usable)}
    keep = [k for k, n in enumerate(names) if n in index]
    pix = torch.from_numpy(np.stack([crops[k] for k in keep])).permute(0, 3, 1, 2).contiguous()
    lab = np.array([index[names[k]] for k in keep], dtype=np.int64)
    return GuardSet(pix, lab, len(usable), bad)
