"""Validation on held-out identities: embed their images, score pairs, summarise the ROC.

People in the validation split are never trained on, so the metrics estimate how the model
separates faces it has never seen (the article validated on images of its training people).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from siamface.embed.pipeline import embed_files, plain_loader
from siamface.embed.tensors import batch_embedder, embed_tensors
from siamface.model.checkpoint import Checkpoint
from siamface.scores.metrics import DEFAULT_FARS, VerificationMetrics
from siamface.scores.pairs import score_all_pairs
from siamface.tensors.transforms import Preprocessing, normalize_batch
from siamface.train.data import RunData

#: Impostor pairs scored per validation (all genuine pairs are always kept); above it a seeded
#: sample of this many. Scoring runs in row blocks (bounded memory whatever the set size).
VAL_MAX_IMPOSTORS = 2_000_000
HIGHER_IS_BETTER = {"auc": True, "eer": False, "tar_at_far_1e-3": True, "accuracy": True}


def metric_record(m: VerificationMetrics, ckpt: Checkpoint) -> dict[str, Any]:
    """An epoch's validation numbers as history.json records them."""
    return {
        "val_auc": m.auc,
        "val_eer": m.eer,
        "val_tar_at_far_1e-3": m.tar_at_far.get("1e-03"),
        "val_accuracy": m.best_accuracy,
        "val_threshold": ckpt.threshold["value"] if ckpt.threshold else None,
    }


def metric_value(m: VerificationMetrics, name: str) -> float:
    """The number ``select_metric`` picks the best checkpoint by."""
    if name == "auc":
        return m.auc
    if name == "eer":
        return m.eer
    if name == "accuracy":
        return m.best_accuracy
    v = m.tar_at_far.get("1e-03")
    return -1.0 if v is None else v


def is_better(value: float, best: float | None, name: str) -> bool:
    """Does ``value`` of metric ``name`` beat ``best`` (None: nothing to beat yet)?"""
    if best is None:
        return True
    return value > best if HIGHER_IS_BETTER[name] else value < best


class Validator:
    """Scores a model on the run's validation identities."""

    def __init__(
        self,
        data: RunData,
        pre: Preprocessing,
        device: torch.device,
        channels_last: bool,
        calib_far: float,
        batch_size: int = 128,
    ) -> None:
        self.data = data
        self.pre = pre
        self.device = device
        self.channels_last = channels_last
        self.fars = tuple(sorted(set(DEFAULT_FARS) | {calib_far}, reverse=True))
        self.batch_size = batch_size

    @property
    def enabled(self) -> bool:
        return bool(self.data.val_identities)

    def embed(self, model: nn.Module) -> np.ndarray:
        d = self.data
        if d.val_pixels is not None:
            return embed_tensors(
                model,
                d.val_pixels,
                self.pre,
                batch_size=self.batch_size,
                device=self.device,
                channels_last=self.channels_last,
            ).numpy()
        emb, _ = embed_files(
            batch_embedder(model, self.pre, self.device, self.channels_last),
            d.val_paths,
            self.pre,
            self.batch_size,
            loader=plain_loader(self.pre),
            progress=False,
        )
        return emb

    def run(
        self, model: nn.Module, embeddings: torch.Tensor | np.ndarray | None = None
    ) -> VerificationMetrics | None:
        """Metrics of ``model`` (in eval mode) on all validation pairs, or None without any.
        ``embeddings``: the validation images' embeddings when the caller computed them
        already (from cached frozen-layer features)."""
        if not self.enabled:
            return None
        emb = self.embed(model) if embeddings is None else embeddings
        pairs = score_all_pairs(
            emb,
            self.data.val_labels,
            max_impostors=VAL_MAX_IMPOSTORS,
            sample_size=VAL_MAX_IMPOSTORS,
        )
        try:
            return pairs.metrics(self.fars)
        except ValueError:
            return None


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    data: RunData,
    pre: Preprocessing,
    device: torch.device,
    batch_size: int,
    seed: int,
    channels_last: bool,
    autocast_dtype: torch.dtype | None,
    batches: int = 20,
) -> None:
    """Re-estimate BatchNorm statistics on training images (un-augmented).

    Schedule-free evaluates at averaged weights, whose BatchNorm statistics must be
    re-estimated before validating or saving.
    """
    model.train()
    n = len(data.train)
    g = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        idx = torch.randint(0, n, (batch_size,), generator=g)
        x = torch.stack([data.train.raw(int(i)) for i in idx])
        x = normalize_batch(x, pre).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            device.type,
            dtype=autocast_dtype or torch.bfloat16,
            enabled=autocast_dtype is not None,
        ):
            model(x)
