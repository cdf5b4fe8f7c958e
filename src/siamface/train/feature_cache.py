"""Frozen-prefix feature caching: when the first layers do not train, compute them once.

On a CPU, fine-tuning time goes into the forward pass through the early, high-resolution
layers; with those layers frozen (``freeze_epochs``, ``trainable=head`` or ``trainable=N``),
BatchNorm frozen, and no augmentation (``augment=none``), their output for an image is the
same in every epoch. So it is computed once per image, kept in memory (float16), and each
step runs only the layers that train: head epochs take seconds instead of minutes.

The boundary is where training starts: after the whole backbone (head-only phases), or after
the frozen stages of a backbone whose forward pass is its stages in order (``sequential``,
e.g. ``sface``). Results are identical to running the whole model up to float16 rounding of the
cached features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from siamface.embed.tensors import embed_tensors
from siamface.train.freeze import FreezeSchedule, backbone_stages
from siamface.train.step import TrainStep

if TYPE_CHECKING:
    from siamface.tensors.dataset import FaceImageDataset
    from siamface.tensors.transforms import Preprocessing
    from siamface.train.config import TrainConfig


def frozen_prefix(model: nn.Module, policy: str, backbone_frozen: bool) -> int | None:
    """How many backbone stages are frozen and cacheable: ``len(stages)`` means the whole
    backbone; None when nothing can be cached (the whole backbone trains, or its forward is
    not its stages in order)."""
    stages = backbone_stages(model.backbone)
    if backbone_frozen or policy == "head":
        return len(stages)
    if policy == "all" or not getattr(model.backbone, "sequential", False):
        return None
    k = len(stages) - int(policy)
    return k if k > 0 else None


def cache_possible(cfg: TrainConfig) -> bool:
    """Features are reusable only if the frozen layers see the same input every epoch."""
    return cfg.data.augment == "none" and cfg.bn_frozen


class PrefixFeatureCache:
    """Per-image outputs of the first ``k`` backbone stages, filled on first use."""

    def __init__(self, model: nn.Module, k: int, n_images: int) -> None:
        self.model = model
        self.k = k
        self.stages = backbone_stages(model.backbone)
        self.whole = k == len(self.stages)
        self.store: torch.Tensor | None = None
        self.filled = torch.zeros(n_images, dtype=torch.bool)

    @torch.no_grad()
    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        if self.whole:
            return self.model.backbone(x)
        for stage in self.stages[: self.k]:
            x = stage(x)
        return x

    def suffix(self, f: torch.Tensor) -> torch.Tensor:
        if not self.whole:
            for stage in self.stages[self.k :]:
                f = stage(f)
        return self.model.finish(self.model.head(f))

    def fill_all(
        self,
        load: Callable[[int, int], torch.Tensor],
        pre,
        device: torch.device,
        channels_last: bool,
        batch_size: int = 128,
        progress: bool = False,
    ) -> torch.Tensor:
        """Compute every image's prefix features (eval mode) and return the whole model's
        embeddings of the images, so the starting model's embeddings come out of the same
        forward pass that fills the cache. ``load(a, b)``: uint8 NCHW images a..b-1."""
        return embed_tensors(
            self.model,
            load,
            pre,
            count=len(self.filled),
            batch_size=batch_size,
            device=device,
            channels_last=channels_last,
            forward=lambda x, index: self.suffix(self.features(x, index)),
            inference=False,  # the cache is written again by later training steps
            progress=progress,
            desc="frozen layers",
        )

    def features(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        idx = index.cpu().long()
        missing = ~self.filled[idx]
        if missing.any():
            was = [m.training for m in self.stages[: self.k]]
            for m in self.stages[: self.k]:
                m.eval()
            f = self.prefix(x[missing.to(x.device)]).to(torch.float16).cpu()
            for m, t in zip(self.stages[: self.k], was, strict=True):
                m.train(t)
            if self.store is None:
                self.store = torch.zeros((len(self.filled), *f.shape[1:]), dtype=torch.float16)
            self.store[idx[missing]] = f
            self.filled[idx[missing]] = True
        return self.store[idx].to(x.device, torch.float32)


class CachedPrefixStep(TrainStep):
    """A :class:`TrainStep` that runs only the trainable suffix on cached prefix features."""

    def __init__(self, base: TrainStep, cache: PrefixFeatureCache) -> None:
        super().__init__(
            base.model,
            base.objective,
            base.opt,
            base.device,
            base.pre,
            base.channels_last,
            base.autocast_dtype,
            grad_accum=base.grad_accum,
            augment=base.augment,
        )
        self.scaler = base.scaler  # one loss-scale history across both kinds of step
        self.cache = cache

    def forward_embeddings(self, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        if index is None:
            raise RuntimeError("feature caching needs dataset indices in the batch")
        feats = self.cache.features(x, index)
        with self.autocast():
            emb = self.cache.suffix(feats)
        return emb.float()


class FeatureCache:
    """The step of each epoch: on cached prefix features when the frozen layers allow it
    (:class:`~siamface.train.freeze.FreezeSchedule` decides the policy of each epoch), the
    run's plain step otherwise. The loop asks :meth:`step_for` at every epoch start and gets a
    step back; nothing is swapped behind its back.

    One cache serves the whole run when it can: the boundary of the ``trainable`` phase (the
    smaller prefix) also serves the frozen-backbone epochs before it, whose remaining frozen
    stages then run forward only. So each image goes through the early layers once per run.
    """

    def __init__(
        self,
        schedule: FreezeSchedule,
        model: nn.Module,
        n_images: int,
        log: Callable[[str], None] = print,
    ) -> None:
        self.schedule = schedule
        self.model = model
        later = frozen_prefix(model, schedule.policy, backbone_frozen=False)
        self.run_k = later  # None: the trainable phase trains the whole backbone
        self.n_images = n_images
        self.log = log
        self.cache: PrefixFeatureCache | None = None
        self.val_cache: PrefixFeatureCache | None = None

    def _cache_for(self, k: int) -> PrefixFeatureCache:
        if self.cache is None or self.cache.k != k:
            self.cache = PrefixFeatureCache(self.model, k, self.n_images)
        return self.cache

    def prefill(
        self,
        train: FaceImageDataset,
        pre: Preprocessing,
        device: torch.device,
        channels_last: bool,
        progress: bool = False,
    ) -> torch.Tensor | None:
        """Fill the run's cache while computing the starting model's embeddings; None when
        the run has no cacheable boundary from its first epoch on."""
        k = self.boundary(0)
        if k is None:
            return None
        cache = self._cache_for(k)
        self.log(self._describe(k))

        def load(a: int, b: int) -> torch.Tensor:
            if train.pixels is not None:
                # Item i is row ``rows[i]`` of the shared pixel store (which also holds the
                # validation images), not row i.
                return (
                    train.pixels[train.rows[a:b]] if train.rows is not None else train.pixels[a:b]
                )
            return torch.stack([train.raw(i) for i in range(a, b)])

        return cache.fill_all(load, pre, device, channels_last, progress=progress)

    def validation_embeddings(
        self,
        pixels: torch.Tensor | None,
        epoch: int,
        pre: Preprocessing,
        device: torch.device,
        channels_last: bool,
    ) -> np.ndarray | None:
        """The validation images' embeddings through the same frozen prefix, cached too: the
        prefix does not change during the run, so validation after the first epoch runs only
        the layers that train. None when this epoch has no cacheable boundary."""
        k = self.boundary(epoch)
        if k is None or pixels is None:
            return None
        if self.val_cache is None or self.val_cache.k != k:
            self.val_cache = PrefixFeatureCache(self.model, k, len(pixels))
        emb = self.val_cache.fill_all(lambda a, b: pixels[a:b], pre, device, channels_last)
        return emb.numpy()

    def _describe(self, k: int) -> str:
        n = len(backbone_stages(self.model.backbone))
        where = "the whole backbone" if k == n else f"the first {k} of {n} backbone stages"
        return f"caching the output of {where} (frozen, augment=none)"

    def boundary(self, epoch: int) -> int | None:
        frozen = self.schedule.backbone_frozen(epoch)
        if self.run_k is not None:
            return self.run_k
        return frozen_prefix(self.model, self.schedule.policy, frozen)

    def step_for(self, epoch: int, base: TrainStep) -> TrainStep:
        """The step to train ``epoch`` with: ``base``, or one on cached prefix features."""
        k = self.boundary(epoch)
        if k is None:
            self.cache = None  # this phase trains the prefix: its features change
            return base
        fresh = self.cache is None or self.cache.k != k
        cache = self._cache_for(k)
        if fresh:
            self.log(self._describe(k))
        return CachedPrefixStep(base, cache)
