"""The miner registry: which pairs or triplets of a batch the loss looks at.

A builder ``(cfg) -> pml miner | None`` per name; ``none`` lets the loss use every pair or
triplet of the batch (the article's setting).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from siamface.registry import Registry

if TYPE_CHECKING:
    from siamface.train.config import TrainConfig

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
def multi_similarity(cfg: TrainConfig) -> Any:
    from pytorch_metric_learning import miners

    return miners.MultiSimilarityMiner(epsilon=0.1, distance=_cosine())


def build_miner(cfg: TrainConfig) -> Any:
    """Hard-example miner picking the informative pairs/triplets of each batch, or None."""
    return MINER_REGISTRY.build(cfg.miner, cfg)
