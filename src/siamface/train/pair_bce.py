"""The article's third loss: a same-person probability trained with binary cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from siamface.model.network import PairHead


class PairBCELoss(nn.Module):
    """Binary cross-entropy on same/different pairs through a :class:`PairHead`.

    The network predicts the probability that two faces are the same person. Pairs come from
    the miner when one is set, otherwise all pairs in the batch; positives and negatives are
    weighted equally because a batch holds far more negatives.
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
