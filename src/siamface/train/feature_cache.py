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

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from siamface.train.callbacks import Callback
from siamface.train.freeze import FreezeSchedule, backbone_stages
from siamface.train.step import TrainStep

if TYPE_CHECKING:
    from siamface.train.config import TrainConfig
    from siamface.train.loop import Trainer


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
    return cfg.augment == "none" and cfg.bn_frozen


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
        return F.normalize(self.model.head(f), dim=1)

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
        with torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.bfloat16,
            enabled=self.autocast_dtype is not None,
        ):
            emb = self.cache.suffix(feats)
        return emb.float()


class FeatureCacheSwitch(Callback):
    """Each epoch, run steps on cached prefix features when the frozen layers allow it
    (after :class:`~siamface.train.freeze.FreezeSchedule` has set this epoch's policy)."""

    def __init__(self, schedule: FreezeSchedule) -> None:
        self.schedule = schedule
        self.caches: dict[int, PrefixFeatureCache] = {}
        self.base: TrainStep | None = None

    def on_epoch_start(self, trainer: Trainer) -> None:
        if self.base is None:
            self.base = trainer.step_fn
        frozen = self.schedule.backbone_frozen(trainer.state.epoch)
        k = frozen_prefix(trainer.model, self.schedule.policy, frozen)
        if k is None:
            trainer.step_fn = self.base
            self.caches.clear()  # the next phase trains the prefix: its features change
            return
        if k not in self.caches:
            self.caches = {k: PrefixFeatureCache(trainer.model, k, len(trainer.data.train))}
            n = len(backbone_stages(trainer.model.backbone))
            where = "the whole backbone" if k == n else f"the first {k} of {n} backbone stages"
            trainer.log(f"caching the output of {where} (frozen, augment=none)")
        trainer.step_fn = CachedPrefixStep(self.base, self.caches[k])
