"""What a training step minimises: a weighted sum of loss terms over one batch.

The metric-learning loss of the config (triplet, ArcFace, ...) is one term. Further terms
plug in without touching the loop: a distillation term that compares the model's embeddings
with a reference model's embeddings of the same images, a regulariser on the class centres.
Each term sees the whole :class:`Batch` (inputs as the model saw them, labels, embeddings)
and returns a scalar; the objective adds them with their weights and reports each part, so
TensorBoard shows ``train/loss_<term>`` next to the total.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class Batch:
    """One training batch on the device, as every loss term sees it."""

    inputs: torch.Tensor  # normalised float NCHW, as fed to the model
    labels: torch.Tensor  # (N,) training-identity indices
    embeddings: torch.Tensor  # (N, D) float32, L2-normalised model output
    extras: dict[str, Any] = field(default_factory=dict)  # room for terms to share work


class LossTerm(nn.Module):
    """One additive part of the objective. Subclasses override :meth:`compute`.

    A term that holds parameters (class centres) registers them as usual; they reach the
    optimizer through the objective's ``parameters()``.
    """

    def __init__(self, name: str, weight: float = 1.0) -> None:
        super().__init__()
        self.name = name
        self.weight = float(weight)

    def compute(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError


class MetricLossTerm(LossTerm):
    """The configured pml-style loss, on the miner's pairs/triplets when a miner is set."""

    def __init__(self, loss_fn: nn.Module, miner: Any | None, name: str = "metric") -> None:
        super().__init__(name)
        self.loss_fn = loss_fn
        self.miner = miner

    def compute(self, batch: Batch) -> torch.Tensor:
        emb, y = batch.embeddings, batch.labels
        if bool((y < 0).any()):  # unlabeled faces (distillation only) carry label -1
            emb, y = emb[y >= 0], y[y >= 0]
        indices = self.miner(emb, y) if self.miner is not None else None
        return self.loss_fn(emb, y, indices) if indices is not None else self.loss_fn(emb, y)


class Objective(nn.Module):
    """Weighted sum of :class:`LossTerm` s; the first term is the run's metric loss."""

    def __init__(self, terms: list[LossTerm]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("an objective needs at least one term")
        self.terms = nn.ModuleList(terms)

    @property
    def metric(self) -> MetricLossTerm:
        return self.terms[0]

    def add(self, term: LossTerm) -> None:
        """Add a term (e.g. distillation) after the objective was built."""
        self.terms.append(term)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        total: torch.Tensor | None = None
        parts: dict[str, float] = {}
        for term in self.terms:
            value = term.compute(batch)
            parts[term.name] = float(value.detach())
            weighted = value * term.weight if term.weight != 1.0 else value
            total = weighted if total is None else total + weighted
        assert total is not None
        return total, parts
