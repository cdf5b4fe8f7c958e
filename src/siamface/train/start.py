"""The starting model of a fine-tuning run (config key ``init``), and what is derived from it.

Fine-tuning starts from a whole face model (``init=sface``, a siamface checkpoint or a run
directory): its architecture, embedding size, input size, normalisation and alignment are the
run's, because changing any of them would throw away what the model knows. What the run keeps
of the start beyond the weights:

* its metrics on the validation identities (epoch 0), which every later epoch must not fall
  below to become ``best`` (``select_rule=not_worse``);
* its embedding of every training image (un-augmented), the anchor of the ``keep_close`` term
  and the initial class centres of a margin-softmax loss (``centre_init=class_mean``), so the
  new classification head starts where the model already puts each person instead of at
  random directions that would first drag the embeddings around.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from siamface.embed.tensors import embed_tensors
from siamface.errors import ConfigError
from siamface.model.checkpoint import Checkpoint
from siamface.model.zoo import resolve_checkpoint
from siamface.tensors.dataset import FaceImageDataset
from siamface.tensors.transforms import Preprocessing
from siamface.train.config import TrainConfig

#: Config keys the starting model decides; setting them to something else is an error.
DERIVED_KEYS = ("model.backbone", "model.embedding_size", "model.image_size")


@dataclass
class StartingModel:
    """A resolved ``init``: the checkpoint and how to name it in reports."""

    spec: str
    checkpoint: Checkpoint

    @classmethod
    def resolve(cls, spec: str) -> StartingModel:
        return cls(spec, resolve_checkpoint(spec))

    @property
    def name(self) -> str:
        if Path(self.spec).expanduser().exists():
            return str(Path(self.spec).expanduser().resolve())
        return self.spec

    @property
    def preprocessing(self) -> Preprocessing:
        return self.checkpoint.preprocessing

    def derived(self) -> dict[str, Any]:
        """The config values this model imposes."""
        return {
            "model.backbone": self.checkpoint.model_cfg.backbone,
            "model.embedding_size": self.checkpoint.model_cfg.embedding_size,
            "model.image_size": self.checkpoint.preprocessing.image_size,
        }

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` with the model's own values; a conflicting explicit value is refused."""
        derived = self.derived()
        for key in DERIVED_KEYS:
            if cfg.was_set(key) and cfg.get(key) != derived[key]:
                raise ConfigError(
                    f"{key}={cfg.get(key)} conflicts with init={self.spec}, whose "
                    f"{key} is {derived[key]}; leave {key} unset when fine-tuning (or set "
                    "finetune.init=null to train that architecture from its backbone weights)"
                )
        return cfg.with_values(derived)

    def info(self) -> dict[str, Any]:
        """Provenance stored in every checkpoint of the run (model cards show it)."""
        out = {"name": self.name, "fingerprint": self.checkpoint.fingerprint}
        desc = self.checkpoint.info.get("description")
        if desc:
            out["description"] = desc
        return out


def embed_dataset(
    model: nn.Module,
    dataset: FaceImageDataset,
    pre: Preprocessing,
    device: torch.device,
    batch_size: int = 128,
    channels_last: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Embeddings (N, D) of every un-augmented image of ``dataset``, in dataset order."""

    def load(a: int, b: int) -> torch.Tensor:
        if dataset.pixels is not None:
            rows = dataset.rows[a:b] if dataset.rows is not None else slice(a, b)
            return dataset.pixels[rows]
        return torch.stack([dataset.raw(i) for i in range(a, b)])

    return embed_tensors(
        model,
        load,
        pre,
        count=len(dataset),
        batch_size=batch_size,
        device=device,
        channels_last=channels_last,
        inference=False,  # the anchors of the keep-close term meet autograd later
        progress=progress,
        desc="starting model",
    )


def class_means(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, D) unit vectors: each class's mean embedding, normalised."""
    sums = torch.zeros(num_classes, embeddings.shape[1], dtype=embeddings.dtype)
    sums.index_add_(0, labels.long(), embeddings)
    return torch.nn.functional.normalize(sums, dim=1)


def init_class_centres(loss_fn: nn.Module, centres: torch.Tensor) -> bool:
    """Put ``centres`` (num_classes, D) into a margin-softmax loss's centres: siamface's
    partial-FC loss (``weight``, num_classes x D) or a pml loss's ``W`` (D x num_classes).
    Returns False when the loss has no such matrix."""
    if hasattr(loss_fn, "set_centres"):
        return bool(loss_fn.set_centres(centres))
    w = getattr(loss_fn, "W", None)
    if not isinstance(w, torch.Tensor) or tuple(w.shape) != (centres.shape[1], centres.shape[0]):
        return False
    with torch.no_grad():
        w.copy_(centres.T.to(w.device, w.dtype))
    return True


def compare_with_start(best: dict[str, Any], start: dict[str, Any]) -> dict[str, Any]:
    """Per-metric start/best/delta, and one sentence saying whether fine-tuning beat it."""
    keys = {
        "val_auc": True,
        "val_eer": False,
        "val_tar_at_far_1e-3": True,
        "val_accuracy": True,
    }
    rows: dict[str, Any] = {}
    better, worse = [], []
    for k, higher in keys.items():
        a, b = start.get(k), best.get(k)
        if a is None or b is None:
            continue
        delta = float(b) - float(a)
        rows[k.removeprefix("val_")] = {"start": a, "best": b, "delta": delta}
        gain = delta if higher else -delta
        if gain > 0:
            better.append(f"{k.removeprefix('val_')} {delta:+.4f}")
        elif gain < 0:
            worse.append(f"{k.removeprefix('val_')} {delta:+.4f}")
    if best.get("epoch") == start.get("epoch"):
        verdict = (
            "fine-tuning did not beat the starting model on the validation identities; "
            "best.safetensors is the starting model"
        )
    else:
        verdict = f"fine-tuning beat the starting model (epoch {best.get('epoch')}): " + (
            ", ".join(better) or "no metric changed"
        )
        if worse:
            verdict += "; worse: " + ", ".join(worse)
    improved = best.get("epoch") != start.get("epoch")
    return {"metrics": rows, "improved": improved, "verdict": verdict}


def not_worse(candidate: dict[str, Any], start: dict[str, Any]) -> bool:
    """True when no validation metric of ``candidate`` is worse than the start's."""
    for k, higher in (
        ("val_auc", True),
        ("val_eer", False),
        ("val_tar_at_far_1e-3", True),
        ("val_accuracy", True),
    ):
        a, b = start.get(k), candidate.get(k)
        if a is None or b is None:
            continue
        if (b < a) if higher else (b > a):
            return False
    return True
