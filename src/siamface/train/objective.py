"""What a training step minimises: a weighted sum of loss terms over one batch.

The metric-learning loss of the config (triplet, ArcFace, ...) is one term. Further terms
plug in without touching the loop: a distillation term that compares the model's embeddings
with a reference model's embeddings of the same images, a regulariser on the class centres.
Each term sees the whole :class:`Batch` (inputs as the model saw them, labels, embeddings)
and returns a scalar; the objective adds them with their weights and reports each part, so
TensorBoard shows ``train/loss_<term>`` next to the total.

With several processes a term either works on this process's part of the batch (the default:
DDP's gradient averaging then makes it the mean over the global batch) or, like the metric
loss, gathers the embeddings of the whole global batch; such a term sets ``backward_scale`` to
the world size, the factor that turns "gradient reaches only my own embeddings" into the
one-process gradient (as pytorch-metric-learning's DistributedLossWrapper does). Parameters of
terms live outside DDP; :meth:`Objective.finish_gradients` averages their gradients.
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
        #: Gradient factor under data parallelism (world size for terms over gathered data).
        self.backward_scale = 1.0

    def compute(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def set_world(self, world_size: int, rank: int = 0) -> None:
        """Called once when training runs in ``world_size`` processes."""


class MetricLossTerm(LossTerm):
    """The configured pml-style loss, on the miner's pairs/triplets when a miner is set."""

    def __init__(self, loss_fn: nn.Module, miner: Any | None, name: str = "metric") -> None:
        super().__init__(name)
        self.loss_fn = loss_fn
        self.miner = miner

    def set_world(self, world_size: int, rank: int = 0) -> None:
        self.world_size = world_size
        if world_size > 1 and hasattr(self.loss_fn, "shard"):
            self.loss_fn.shard(world_size, rank)  # class centres split across processes
        if world_size > 1 and not getattr(self.loss_fn, "gathers_itself", False):
            self.backward_scale = float(world_size)

    def compute(self, batch: Batch) -> torch.Tensor:
        emb, y = batch.embeddings, batch.labels
        if self.backward_scale != 1.0:
            # Whole global batch: the local rows keep their gradient, the others are copies.
            # (Gathered before dropping unlabeled rows: every process sends the same shape.)
            from pytorch_metric_learning.utils.distributed import gather

            emb, y, _ = gather(emb, y)
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
        self.world_size, self.rank = 1, 0

    def set_world(self, world_size: int, rank: int = 0) -> None:
        """Train in ``world_size`` processes (call before building the optimizer)."""
        self.world_size, self.rank = world_size, rank
        for term in self.terms:
            term.set_world(world_size, rank)

    @property
    def metric(self) -> MetricLossTerm:
        return self.terms[0]

    def add(self, term: LossTerm) -> None:
        """Add a term (e.g. distillation) after the objective was built."""
        term.set_world(self.world_size, self.rank)
        self.terms.append(term)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, float, dict[str, float]]:
        """(tensor to back-propagate, the objective's value, each term's value)."""
        total: torch.Tensor | None = None
        value_sum = 0.0
        parts: dict[str, float] = {}
        for term in self.terms:
            value = term.compute(batch)
            parts[term.name] = float(value.detach())
            value_sum += term.weight * parts[term.name]
            weighted = value * term.weight if term.weight != 1.0 else value
            if term.backward_scale != 1.0:
                weighted = weighted * term.backward_scale
            total = weighted if total is None else total + weighted
        assert total is not None
        return total, value_sum, parts

    def finish_gradients(self) -> None:
        """Average the gradients of the terms' own parameters over processes (DDP does this
        for the model only). Parameters marked ``sharded`` hold a different part on each
        process and are only rescaled."""
        if self.world_size <= 1:
            return
        import torch.distributed as dist

        for term in self.terms:
            for p in term.parameters():
                if p.grad is None:
                    continue
                if getattr(p, "sharded", False):
                    p.grad.div_(term.backward_scale)
                else:
                    dist.all_reduce(p.grad)
                    p.grad.div_(self.world_size * term.backward_scale)
