"""Model checkpoints of a run: what goes into best.safetensors and last.safetensors.

A checkpoint carries its own architecture, preprocessing, the decision threshold calibrated
on the validation identities and the run's provenance, so every other command can use it
without the training config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from siamface.decide.threshold import Threshold
from siamface.model.checkpoint import Checkpoint, save_checkpoint
from siamface.model.network import ModelConfig
from siamface.scores.metrics import VerificationMetrics
from siamface.tensors.transforms import Preprocessing
from siamface.train.rundir import writing
from siamface.version import __version__

BEST = "best.safetensors"
LAST = "last.safetensors"


def build_checkpoint(
    model: nn.Module,
    model_cfg: ModelConfig,
    pre: Preprocessing,
    metrics: VerificationMetrics | None,
    calib_far: float,
    loss_fn: nn.Module,
    info: dict[str, Any],
) -> Checkpoint:
    """The model as it is now, with the threshold for ``calib_far`` from ``metrics``."""
    thr = (
        Threshold.at_far(metrics, calib_far, "validation identities").to_record()
        if metrics
        else None
    )
    pair_head = None
    if hasattr(loss_fn, "pair_head"):
        pair_head = {k: v.detach().cpu() for k, v in loss_fn.pair_head.state_dict().items()}
    # The network's own config when it has one: a centred network (siamface.train.centre)
    # holds a buffer the run's config does not declare.
    return Checkpoint(
        model_cfg=getattr(model, "cfg", model_cfg),
        preprocessing=pre,
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        threshold=thr,
        pair_head=pair_head,
        info={"siamface_version": __version__, **info},
    )


def save_epoch_checkpoints(ckpt: Checkpoint, run_dir: Path, best: bool) -> None:
    """Always ``last``; ``best`` too when this epoch is the best so far."""

    for name, wanted in ((BEST, best), (LAST, True)):
        if wanted:
            with writing(run_dir / name, "a checkpoint"):
                save_checkpoint(ckpt, run_dir / name)
