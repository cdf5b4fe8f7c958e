"""The batch loss, on top of pytorch-metric-learning: which loss, and which pairs or triplets of
the batch it looks at (the miner). Both are registries; reading this file tells what one step
minimises.

Each loss takes ``(embeddings, labels, indices_tuple=None)`` like a pml loss, so the training
loop never branches on the loss type. Embeddings are L2-normalised, so every distance here is
cosine-based (the article's TripletMarginLoss uses ``CosineSimilarity``).

Adding a loss is one decorated builder ``(cfg, num_classes) -> nn.Module``; the config key
``loss.name``, its ``--help`` text and validation pick it up from :data:`LOSS_REGISTRY`. A loss
declares its own settings as a :class:`~siamface.train.params.Params` model (``params=``), so
``loss.margin`` means the margin of the loss that is chosen (degrees for ArcFace, cosine for
CosFace and triplet); the builder reads them from ``cfg.objective``. Losses that hold one centre
per identity (margin-softmax) are registered with ``classifier=True``: they take no miner and
their centres learn at ``lr * head_lr_mult``. torch and pml are imported inside the
builders so that ``siamface --help`` stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from siamface.registry import Registry
from siamface.train.params import NoParams, Params, param

if TYPE_CHECKING:
    from torch import nn

    from siamface.train.config import TrainConfig

LossBuilder = Callable[["TrainConfig", int], "nn.Module"]

#: Every training loss by name (config key ``loss``).
LOSS_REGISTRY: Registry[LossBuilder] = Registry("loss")
register_loss = LOSS_REGISTRY.register


class TripletParams(Params):
    margin: float = param(0.1, "margin on cosine similarity (article: 0.1)", ge=0, le=2)


class ContrastiveParams(Params):
    margin: float = param(0.1, "negatives are pushed below this cosine similarity", ge=0, le=2)


class _SoftmaxParams(Params):
    scale: float = param(30.0, "logit scale", gt=0, le=1024)
    class_sample_rate: float = param(
        1.0,
        "fraction of class centres scored per step (partial FC; the batch's own classes "
        "always are); centres are sharded across processes",
        gt=0,
        le=1,
    )


class ArcFaceParams(_SoftmaxParams):
    margin: float = param(28.6, "angular margin in degrees (28.6 = 0.5 rad)", ge=0, le=90)


class CosFaceParams(_SoftmaxParams):
    margin: float = param(0.35, "additive cosine margin", ge=0, le=1)


def _cosine():
    from pytorch_metric_learning import distances

    return distances.CosineSimilarity()


@register_loss(
    "triplet", help="triplet margin on cosine similarity (the article's loss)", params=TripletParams
)
def triplet(cfg: TrainConfig, num_classes: int) -> nn.Module:
    from pytorch_metric_learning import losses

    return losses.TripletMarginLoss(margin=cfg.objective.margin, distance=_cosine(), swap=False)


@register_loss(
    "contrastive",
    help="pull positives towards 1, push negatives below margin",
    params=ContrastiveParams,
)
def contrastive(cfg: TrainConfig, num_classes: int) -> nn.Module:
    from pytorch_metric_learning import losses

    # pml semantics for similarity-based distances: positives towards pos_margin=1,
    # negatives below neg_margin.
    return losses.ContrastiveLoss(
        pos_margin=1.0, neg_margin=cfg.objective.margin, distance=_cosine()
    )


@register_loss(
    "bce",
    help="same-person probability through a pair head (the article's BCE)",
    params=NoParams,
)
def bce(cfg: TrainConfig, num_classes: int) -> nn.Module:
    from siamface.train.pair_bce import PairBCELoss  # lazy: torch, torchvision

    return PairBCELoss()


@register_loss(
    "multi_similarity", help="multi-similarity loss (Wang et al., 2019)", params=NoParams
)
def multi_similarity(cfg: TrainConfig, num_classes: int) -> nn.Module:
    from pytorch_metric_learning import losses

    return losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5)


@register_loss(
    "arcface", help="additive angular margin softmax", classifier=True, params=ArcFaceParams
)
def arcface(cfg: TrainConfig, num_classes: int) -> nn.Module:
    from pytorch_metric_learning import losses

    from siamface.train.partial_fc import PartialFCLoss  # lazy: torch, numpy

    p = cfg.objective
    pml = losses.ArcFaceLoss(num_classes, cfg.model.embedding_size, margin=p.margin, scale=p.scale)
    # The same loss, with centres that can be sampled (class_sample_rate) and sharded.
    return PartialFCLoss.from_pml(pml, "arcface", p.class_sample_rate, cfg.run.seed)


@register_loss(
    "cosface", help="additive cosine margin softmax", classifier=True, params=CosFaceParams
)
def cosface(cfg: TrainConfig, num_classes: int) -> nn.Module:
    from pytorch_metric_learning import losses

    from siamface.train.partial_fc import PartialFCLoss  # lazy: torch, numpy

    p = cfg.objective
    pml = losses.CosFaceLoss(num_classes, cfg.model.embedding_size, margin=p.margin, scale=p.scale)
    return PartialFCLoss.from_pml(pml, "cosface", p.class_sample_rate, cfg.run.seed)


def build_loss(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The configured loss; classifier losses hold one centre per training identity."""
    return LOSS_REGISTRY.build(cfg.objective.name, cfg, num_classes)


def is_classifier(name: str) -> bool:
    """Does loss ``name`` learn one centre per identity (and so take no miner)?"""
    return bool(LOSS_REGISTRY.get(name).facts.get("classifier"))


def loss_params(name: str) -> type[Params]:
    """The settings loss ``name`` declares (none when it was registered without ``params=``)."""
    return LOSS_REGISTRY.get(name).facts.get("params", NoParams)


# --- miners: which pairs or triplets of a batch the loss looks at -------------------------
# A builder ``(cfg) -> pml miner | None`` per name; ``none`` lets the loss use every pair or
# triplet of the batch (the article's setting).

MinerBuilder = Callable[["TrainConfig"], Any]

#: Every hard-example miner by name (config key ``miner``).
MINER_REGISTRY: Registry[MinerBuilder] = Registry("miner")
register_miner = MINER_REGISTRY.register


def _cosine():
    from pytorch_metric_learning import distances

    return distances.CosineSimilarity()


@register_miner("none", help="every pair / triplet of the batch")
def no_miner(cfg: TrainConfig) -> None:
    return None


@register_miner("batch_hard", help="hardest positive and negative per anchor")
def batch_hard(cfg: TrainConfig) -> Any:
    from pytorch_metric_learning import miners

    return miners.BatchHardMiner(distance=_cosine())


@register_miner("semi_hard", help="negatives farther than the positive but within the margin")
def semi_hard(cfg: TrainConfig) -> Any:
    from pytorch_metric_learning import miners

    return miners.TripletMarginMiner(
        margin=cfg.margin, distance=_cosine(), type_of_triplets="semihard"
    )


@register_miner("multi_similarity", help="pairs violating the multi-similarity criterion")
def multi_similarity_miner(cfg: TrainConfig) -> Any:
    from pytorch_metric_learning import miners

    return miners.MultiSimilarityMiner(epsilon=0.1, distance=_cosine())


def build_miner(cfg: TrainConfig) -> Any:
    """Hard-example miner picking the informative pairs/triplets of each batch, or None."""
    return MINER_REGISTRY.build(cfg.objective.miner, cfg)
