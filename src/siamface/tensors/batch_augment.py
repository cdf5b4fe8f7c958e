"""The training augmentation applied to a whole batch on the device, each image its own draw.

On a GPU, augmenting image by image in loader workers leaves the GPU waiting for the CPU.
torchvision's v2 transforms applied to a batch draw *one* set of parameters for all its
images, so here each image's flip, rotation, resized crop and colour jitter come from its own
seed (the same per-image seeds the loader path uses) and are applied in a few batched
operations: one affine resampling (``affine_grid`` + ``grid_sample``) for the geometry and
per-image factors for brightness, contrast, saturation and hue.

The ranges are those of :func:`siamface.tensors.transforms.train_augmentation`; the results are
close to, not bit-identical with, the per-image path (one resampling instead of two, hue turned
in YIQ space instead of HSV).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: strength -> (max rotation in degrees, max hue shift as a fraction of a turn)
STRENGTHS = {"default": (10.0, 0.05), "article": (15.0, 0.1)}
SCALE = (0.8, 1.0)  # area fraction of the resized crop
RATIO = (0.75, 1.33)
JITTER = 0.2  # brightness, contrast, saturation factors in [1 - JITTER, 1 + JITTER]


def _draw(seeds: torch.Tensor, rot: float, hue: float) -> torch.Tensor:
    """(N, 8) parameters per image: flip, angle, crop w, crop h, cx, cy, b/c/s/h packed."""
    rows = []
    for s in seeds.tolist():
        g = torch.Generator().manual_seed(int(s) & 0x7FFF_FFFF_FFFF_FFFF)
        u = torch.rand(10, generator=g, dtype=torch.float64)
        area = SCALE[0] + (SCALE[1] - SCALE[0]) * u[2]
        log_r = math.log(RATIO[0]) + (math.log(RATIO[1]) - math.log(RATIO[0])) * u[3]
        ratio = math.exp(float(log_r))
        w = min(1.0, math.sqrt(area * ratio))
        h = min(1.0, math.sqrt(area / ratio))
        rows.append(
            [
                1.0 if u[0] < 0.5 else 0.0,
                math.radians(-rot + 2 * rot * float(u[1])),
                w,
                h,
                (1 - w) * (2 * float(u[4]) - 1),  # crop centre in [-1, 1] coordinates
                (1 - h) * (2 * float(u[5]) - 1),
                1 - JITTER + 2 * JITTER * float(u[6]),
                1 - JITTER + 2 * JITTER * float(u[7]),
                1 - JITTER + 2 * JITTER * float(u[8]),
                (-hue + 2 * hue * float(u[9])) * 2 * math.pi,
            ]
        )
    return torch.tensor(rows, dtype=torch.float32)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


class BatchAugment:
    """Callable ``(uint8 NCHW on the device, per-image seeds) -> augmented uint8 NCHW``."""

    def __init__(self, strength: str = "default") -> None:
        self.enabled = strength in STRENGTHS
        self.rot, self.hue = STRENGTHS.get(strength, (0.0, 0.0))

    def __call__(self, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        p = _draw(seeds, self.rot, self.hue).to(x.device)
        n = x.shape[0]
        flip, ang, w, h, cx, cy = (p[:, i] for i in range(6))
        bright, contrast, sat, hue = (p[:, i].view(n, 1, 1, 1) for i in range(6, 10))
        # Output pixel -> input pixel: crop window, then rotation about the centre, then flip.
        cos, sin = torch.cos(ang), torch.sin(ang)
        sx = w * torch.where(flip > 0, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 1] = cos * sx, -sin * h
        theta[:, 1, 0], theta[:, 1, 1] = sin * sx, cos * h
        theta[:, 0, 2] = cos * cx - sin * cy
        theta[:, 1, 2] = sin * cx + cos * cy
        img = x.float() / 255.0
        grid = F.affine_grid(theta, list(img.shape), align_corners=False)
        img = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        img = (img * bright).clamp(0, 1)
        mean = _gray(img).mean(dim=(2, 3), keepdim=True)
        img = ((img - mean) * contrast + mean).clamp(0, 1)
        g = _gray(img)
        img = ((img - g) * sat + g).clamp(0, 1)
        img = self._hue(img, hue)
        return (img * 255.0).round().clamp(0, 255).to(torch.uint8)

    @staticmethod
    def _hue(img: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        """Turn the chroma plane of YIQ by ``angle`` (per image)."""
        r, g, b = img[:, 0:1], img[:, 1:2], img[:, 2:3]
        y = 0.299 * r + 0.587 * g + 0.114 * b
        i = 0.596 * r - 0.274 * g - 0.322 * b
        q = 0.211 * r - 0.523 * g + 0.312 * b
        c, s = torch.cos(angle), torch.sin(angle)
        i, q = i * c - q * s, i * s + q * c
        out = torch.cat(
            [y + 0.956 * i + 0.621 * q, y - 0.272 * i - 0.647 * q, y - 1.106 * i + 1.703 * q], 1
        )
        return out.clamp(0, 1)
