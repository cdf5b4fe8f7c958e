"""Loss and miner registries on top of pytorch-metric-learning.

Each loss takes ``(embeddings, labels, indices_tuple=None)`` like a pml loss, so the training
loop never branches on the loss type. Embeddings are L2-normalised, so every distance here is
cosine-based (the article's TripletMarginLoss uses ``CosineSimilarity``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances, losses, miners
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from siamface.model.network import PairHead
from siamface.train.config import TrainConfig


class PairBCELoss(nn.Module):
    """Binary cross-entropy on same/different pairs through a :class:`PairHead`.

    The article's third loss: the network predicts the probability that two faces are the
    same person. Pairs come from the miner when one is set, otherwise all pairs in the batch;
    positives and negatives are weighted equally because a batch holds far more negatives.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pair_head = PairHead()

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple=None
    ) -> torch.Tensor:
        if indices_tuple is None:
            a1, p, a2, n = lmu.get_all_pairs_indices(labels)
        else:
            a1, p, a2, n = lmu.convert_to_pairs(indices_tuple, labels)
        terms = []
        if len(a1):
            cos = (embeddings[a1] * embeddings[p]).sum(1)
            logits = self.pair_head.logits(cos)
            terms.append(F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits)))
        if len(a2):
            cos = (embeddings[a2] * embeddings[n]).sum(1)
            logits = self.pair_head.logits(cos)
            terms.append(F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits)))
        if not terms:
            return embeddings.sum() * 0.0
        return torch.stack(terms).mean()


def build_loss(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The configured loss; margin-softmax losses hold one centre per training identity."""
    cos = distances.CosineSimilarity()
    if cfg.loss == "triplet":
        return losses.TripletMarginLoss(margin=cfg.margin, distance=cos, swap=False)
    if cfg.loss == "contrastive":
        # On cosine similarity: pull positives above 1 - margin... i.e. towards 1, push
        # negatives below ``margin`` (pml semantics for similarity-based distances).
        return losses.ContrastiveLoss(pos_margin=1.0, neg_margin=cfg.margin, distance=cos)
    if cfg.loss == "multi_similarity":
        return losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5)
    if cfg.loss == "bce":
        return PairBCELoss()
    if cfg.loss == "arcface":
        return losses.ArcFaceLoss(
            num_classes, cfg.embedding_size, margin=cfg.arc_margin, scale=cfg.softmax_scale
        )
    if cfg.loss == "cosface":
        return losses.CosFaceLoss(
            num_classes, cfg.embedding_size, margin=cfg.cos_margin, scale=cfg.softmax_scale
        )
    raise ValueError(cfg.loss)  # unreachable: config validation lists the choices


def build_miner(cfg: TrainConfig) -> miners.BaseMiner | None:
    """Hard-example miner picking the informative pairs/triplets of each batch."""
    cos = distances.CosineSimilarity()
    if cfg.miner == "none":
        return None
    if cfg.miner == "batch_hard":
        return miners.BatchHardMiner(distance=cos)
    if cfg.miner == "semi_hard":
        return miners.TripletMarginMiner(
            margin=cfg.margin, distance=cos, type_of_triplets="semihard"
        )
    if cfg.miner == "multi_similarity":
        return miners.MultiSimilarityMiner(epsilon=0.1, distance=cos)
    raise ValueError(cfg.miner)
