"""The Siamese embedding network: one shared backbone + embedding head + L2 normalisation.

The backbone is any timm model (pooled features, topped with a linear head) or a registered
face architecture that brings its own head (``sface``; see :mod:`siamface.model.registry`).

"Siamese" means both images of a pair go through the same weights; in practice that is one
network applied to a batch, with the pair/triplet structure living in the loss. The output is
L2-normalised so cosine similarity is a plain dot product everywhere downstream (pair scoring,
thresholds, the gallery index, ONNX).

A network may also be *centred* (``ModelConfig.centred``): the mean unit embedding of the
training faces (the buffer ``centre``) is subtracted and the result normalised again. Every face
a model embeds shares a component along that mean, larger for poor faces (small, blurred,
compressed: they crowd towards the average face), so impostor pairs of poor faces score high;
removing it spreads them apart, which is what the low false-accept end of the ROC needs (SFace
on the sample data's unseen people: TAR@FAR=1e-3 86.1 % -> 89.3 %, docs/finetune.md). Being part
of ``forward``, the centre travels with the checkpoint and the ONNX export.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import timm
import torch
import torch.nn.functional as F
from torch import nn

from siamface.errors import SiamfaceError
from siamface.model.registry import architecture_names, get_architecture


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the architecture without the user re-typing it."""

    backbone: str = "tf_efficientnet_lite0"
    embedding_size: int = 512
    drop_rate: float = 0.0
    centred: bool = False  # holds a ``centre`` buffer (the training faces' mean embedding)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(
            backbone=str(d["backbone"]),
            embedding_size=int(d["embedding_size"]),
            drop_rate=float(d.get("drop_rate", 0.0)),
            centred=bool(d.get("centred", False)),
        )


def check_backbone_name(name: str) -> None:
    """Refuse unknown model names early, with close matches as hints."""
    if get_architecture(name) is not None:
        return
    if name in timm.list_models() or timm.is_model(name):
        return
    base = name.split(".")[0]
    if timm.is_model(base):
        return
    hints = timm.list_models(f"*{base.split('_')[0]}*")[:8]
    hint = f" Similar names: {', '.join(hints)}" if hints else ""
    raise SiamfaceError(
        f"unknown backbone {name!r}: neither a timm model nor one of siamface's face "
        f"architectures ({', '.join(architecture_names())}).{hint}"
    )


class EmbeddingNet(nn.Module):
    """Backbone features -> ``embedding_size``-d unit vectors.

    Every architecture has the same two parts, ``backbone`` (the trunk) and ``head`` (features
    to embedding), so freezing policies and per-part learning rates mean the same thing for a
    timm ImageNet backbone and for a face model.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        check_backbone_name(cfg.backbone)
        self.cfg = cfg
        if cfg.centred:
            self.register_buffer("centre", torch.zeros(cfg.embedding_size))
        arch = get_architecture(cfg.backbone)
        if arch is not None:
            self.backbone, self.head = arch(cfg.embedding_size)
            return
        # pretrained weights are loaded separately (see model.pretrained) so that hub access,
        # local files and offline packages all go through one checked path.
        self.backbone = timm.create_model(
            cfg.backbone, pretrained=False, num_classes=0, drop_rate=cfg.drop_rate
        )
        self.head = nn.Linear(self.backbone.num_features, cfg.embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(self.head(self.backbone(x)))

    def finish(self, z: torch.Tensor) -> torch.Tensor:
        """Head output -> the embedding: unit length, and centred when the model is."""
        z = F.normalize(z, dim=1)
        if self.cfg.centred:
            z = F.normalize(z - self.centre, dim=1)
        return z

    def set_centre(self, centre: torch.Tensor | None) -> None:
        """Make the network centred on ``centre`` (a D vector), or plain again with None."""
        if centre is None:
            if self.cfg.centred:
                del self.centre
                self.cfg = replace(self.cfg, centred=False)
            return
        c = torch.as_tensor(centre, dtype=torch.float32).reshape(-1)
        if c.numel() != self.cfg.embedding_size:
            raise SiamfaceError(
                f"centre has {c.numel()} values, the embedding {self.cfg.embedding_size}"
            )
        ref = next(self.parameters(), None)
        c = c.to(ref.device) if ref is not None else c
        if self.cfg.centred:
            self.centre.copy_(c)
        else:
            self.register_buffer("centre", c.clone())
            self.cfg = replace(self.cfg, centred=True)


class PairHead(nn.Module):
    """Same-person probability from the cosine similarity of two embeddings.

    ``p = sigmoid(scale * (cos - bias))``: a learned, monotone calibration of the cosine.
    Because it is monotone, a threshold on ``p`` is a threshold on the cosine, so every
    scoring path (evaluation, gallery, ONNX) can keep using cosine similarity while BCE
    training and ``verify`` still get a probability, as the article describes.
    """

    def __init__(self, scale: float = 10.0, bias: float = 0.5) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def logits(self, cos: torch.Tensor) -> torch.Tensor:
        return self.scale * (cos - self.bias)

    def forward(self, cos: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(cos))


def build_model(cfg: ModelConfig) -> EmbeddingNet:
    """Create the network (random init); load weights with :mod:`siamface.model.pretrained`."""
    try:
        return EmbeddingNet(cfg)
    except SiamfaceError:
        raise
    except (RuntimeError, ValueError, TypeError) as err:
        raise SiamfaceError(f"cannot build backbone {cfg.backbone!r}: {err}") from err


def backbone_default_norm(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std the backbone's pretrained weights expect (timm's pretrained config)."""
    arch = get_architecture(name)
    if arch is not None:
        return arch.mean, arch.std
    try:
        cfg = timm.get_pretrained_cfg(name.split(".")[0] if "." not in name else name)
    except Exception:  # noqa: BLE001 - unknown tags just fall back to ImageNet stats
        cfg = None
    if cfg is None:
        return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return tuple(cfg.mean), tuple(cfg.std)
