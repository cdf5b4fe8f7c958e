"""Images -> tensors: the preprocessing contract stored in every checkpoint, and augmentation.

Training and inference must resize and normalise identically, so the parameters live in one
:class:`Preprocessing` record that is saved with the weights and read back by every command.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily so ONNX-only (torch-free) inference can use this
    import torch
    from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Allowed network input sizes (pixels per side). The upper bound is a safety limit as much
#: as a sanity one: every image is resized to this size before embedding, so a model file
#: declaring 100000 would make a plain ``verify`` allocate tens of gigabytes.
MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 1024


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB face image becomes the network's input tensor.

    ``aligned`` records whether the model was trained on 5-point-aligned face crops; commands
    that take raw photos use it to decide whether to detect and align first.
    """

    image_size: int = 112
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    aligned: bool = False
    align: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(
            image_size=int(d["image_size"]),
            mean=tuple(d.get("mean", IMAGENET_MEAN)),
            std=tuple(d.get("std", IMAGENET_STD)),
            aligned=bool(d.get("aligned", False)),
            align=dict(d.get("align", {})),
        )


def hwc_to_chw(arr: np.ndarray) -> torch.Tensor:
    """HWC uint8 numpy array -> CHW uint8 tensor without copying twice."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def normalize_batch(batch_uint8: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """Batched uint8 NCHW -> normalised float NCHW (done once per batch, not per image)."""
    import torch

    mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return (batch_uint8.float() - mean) / std


def train_augmentation(size: int, strength: str = "default") -> v2.Transform:
    """Per-image augmentation on uint8 CHW tensors (output stays uint8, same size).

    The article's set (flip, +-15 deg rotation, resized crop 0.8-1.0, colour jitter) is kept
    as ``"article"``; ``"default"`` is milder on rotation and hue, which hurt on tight face
    crops where the rotation corners eat into the face. ``"none"`` disables augmentation.

    The image goes through the transforms as a PIL image: torchvision's v2 transforms run the
    same random draws with PIL's C kernels then, which took 45 % less CPU than its tensor
    kernels for this set (0.31 vs 0.56 s per 32 images at 224 px on one core; hue alone was
    0.15 s on tensors). On a small CPU machine the loader worker shares the cores with the
    model, so that time comes straight off the training step.
    """
    from torchvision.transforms import v2

    if strength == "none":
        return v2.Identity()
    rot, hue = (15, 0.1) if strength == "article" else (10, 0.05)
    return v2.Compose(
        [
            v2.ToPILImage(),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomRotation(degrees=rot),
            v2.RandomResizedCrop(size=(size, size), scale=(0.8, 1.0), ratio=(0.75, 1.33)),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=hue),
            v2.PILToTensor(),
        ]
    )
