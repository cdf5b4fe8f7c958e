"""Margin softmax (ArcFace / CosFace) with sampled, sharded class centres ("partial FC").

A margin-softmax loss keeps one centre per training identity. At 85k identities the
centres, their gradient and two Adam moments are 4 x 85k x 512 floats, and every step scores
every embedding against every centre (a batch x classes logit matrix). Partial FC (An et al.,
2021) bounds both:

* **sampling**: each step scores the centres of the batch's own identities plus a random
  subset of the others, ``class_sample_rate`` of them in all, so the logits are
  batch x (rate x classes); unsampled centres get no gradient this step;
* **sharding**: with N processes each holds ``classes / N`` centres (and their optimizer
  state). Embeddings of the global batch are gathered, each process scores them against its
  own centres, and the softmax normaliser and target logit are summed across processes, so
  the loss is that of one softmax over all (sampled) classes.

With ``class_sample_rate=1`` in one process this is exactly pytorch-metric-learning's
``ArcFaceLoss`` / ``CosFaceLoss`` (same margins, same initial centres; tested). The saved
state is always the whole matrix (gathered on save, re-sliced on load), so a run can resume
with another number of processes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; gradient times ``k`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: float) -> torch.Tensor:  # type: ignore[override]
        ctx.k = k
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return g * ctx.k, None


def shard_bounds(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """Classes ``[lo, hi)`` held by ``rank``: contiguous blocks of ceil(C / N)."""
    per = math.ceil(num_classes / world_size)
    lo = min(num_classes, rank * per)
    return lo, min(num_classes, lo + per)


class PartialFCLoss(nn.Module):
    """ArcFace or CosFace over sampled, sharded centres; a pml-style ``(emb, labels)`` loss."""

    #: The objective must not gather for this loss: it gathers (with gradients) itself.
    gathers_itself = True

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        kind: str = "arcface",
        margin: float = 28.6,
        scale: float = 30.0,
        sample_rate: float = 1.0,
        seed: int = 0,
        init: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("arcface", "cosface"):
            raise ValueError(kind)
        self.kind = kind
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.margin = math.radians(margin) if kind == "arcface" else float(margin)
        self.scale = float(scale)
        self.sample_rate = float(sample_rate)
        self.seed = int(seed)
        self.world_size, self.rank = 1, 0
        self.lo, self.hi = 0, num_classes
        w = init.detach().clone() if init is not None else torch.randn(num_classes, embedding_size)
        self.weight = nn.Parameter(w)  # (classes held here, D)
        self.weight.sharded = True  # type: ignore[attr-defined]
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_pml(cls, loss: nn.Module, kind: str, sample_rate: float, seed: int) -> PartialFCLoss:
        """Take over a pml ArcFaceLoss / CosFaceLoss: same margin, scale and initial centres."""
        margin = math.degrees(loss.margin) if kind == "arcface" else loss.margin
        return cls(
            loss.num_classes,
            loss.W.shape[0],
            kind,
            margin,
            loss.scale,
            sample_rate,
            seed,
            init=loss.W.detach().t(),
        )

    # ------------------------------------------------------------------ sharding
    def shard(self, world_size: int, rank: int) -> None:
        """Keep only this process's block of centres (call before building the optimizer)."""
        self.world_size, self.rank = world_size, rank
        self.lo, self.hi = shard_bounds(self.num_classes, world_size, rank)
        with torch.no_grad():
            self.weight = nn.Parameter(self.weight[self.lo : self.hi].clone())
        self.weight.sharded = True  # type: ignore[attr-defined]

    def set_centres(self, centres: torch.Tensor) -> bool:
        """Start the centres at given values (num_classes, D), e.g. each identity's mean
        embedding under a starting model. Returns False if the shape does not fit."""
        if tuple(centres.shape) != (self.num_classes, self.embedding_size):
            return False
        with torch.no_grad():
            self.weight.copy_(self.local_rows(centres).to(self.weight.device, self.weight.dtype))
        return True

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """The whole (classes, ...) tensor from every process's block (collective)."""
        if self.world_size == 1:
            return t
        import torch.distributed as dist

        per = math.ceil(self.num_classes / self.world_size)
        padded = torch.zeros(per, *t.shape[1:], dtype=t.dtype, device=t.device)
        padded[: len(t)] = t
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous())
        rows = [shard_bounds(self.num_classes, self.world_size, r) for r in range(self.world_size)]
        return torch.cat([p[: hi - lo] for p, (lo, hi) in zip(parts, rows, strict=True)])

    def local_rows(self, full: torch.Tensor) -> torch.Tensor:
        return full[self.lo : self.hi]

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001
        # Always the whole matrix: a resume may run with another number of processes.
        destination[prefix + "weight"] = self.gather_rows(self.weight.detach()).cpu()
        destination[prefix + "steps"] = self.steps.detach().clone()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        full = state_dict.get(prefix + "weight")
        if full is not None and full.shape[0] == self.num_classes:
            state_dict = dict(state_dict)
            state_dict[prefix + "weight"] = self.local_rows(full)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ loss
    def _sampled(self, labels: torch.Tensor) -> torch.Tensor:
        """Indices (within this block) of the centres scored this step, sorted."""
        n_local = self.hi - self.lo
        mine = labels[(labels >= self.lo) & (labels < self.hi)] - self.lo
        positives = torch.unique(mine)
        if self.sample_rate >= 1.0:
            return torch.arange(n_local, device=labels.device)
        want = max(len(positives), math.ceil(self.sample_rate * n_local))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.steps) * 101 + self.rank)
        score = torch.rand(n_local, generator=g).to(labels.device)
        score[positives] = 2.0  # positives first, then a random choice of the others
        return torch.topk(score, want).indices.sort().values

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple=None
    ) -> torch.Tensor:
        if self.world_size > 1:
            import torch.distributed as dist
            from torch.distributed.nn.functional import all_gather, all_reduce

            emb = torch.cat(all_gather(embeddings))
            gathered = [torch.empty_like(labels) for _ in range(self.world_size)]
            dist.all_gather(gathered, labels.contiguous())
            labels = torch.cat(gathered)
        idx = self._sampled(labels)
        self.steps += 1
        w = self.weight
        if self.world_size > 1:
            # Every process computes the same loss, so the summed normaliser's backward
            # hands this block world_size times its gradient.
            w = _ScaleGrad.apply(w, 1.0 / self.world_size)
        else:
            emb = embeddings
        cos = F.normalize(emb.float(), dim=1) @ F.normalize(w[idx].float(), dim=1).t()
        # Column of each row's own class among the sampled ones (-1: held elsewhere).
        col_of = torch.full((self.hi - self.lo,), -1, dtype=torch.long, device=cos.device)
        col_of[idx] = torch.arange(len(idx), device=cos.device)
        here = (labels >= self.lo) & (labels < self.hi)
        cols = torch.where(here, col_of[(labels - self.lo).clamp(0, self.hi - self.lo - 1)], -1)
        rows = torch.nonzero(cols >= 0).squeeze(1)
        target_cos = cos[rows, cols[rows]]
        logits = cos.clone()
        logits[rows, cols[rows]] = self._with_margin(target_cos)
        logits = logits * self.scale
        target = torch.zeros(len(labels), dtype=logits.dtype, device=logits.device)
        target = target.index_put((rows,), logits[rows, cols[rows]])
        top = logits.detach().max(dim=1).values
        if self.world_size > 1:
            dist.all_reduce(top, op=dist.ReduceOp.MAX)
        sum_exp = torch.exp(logits - top.unsqueeze(1)).sum(dim=1)
        if self.world_size > 1:
            sum_exp = all_reduce(sum_exp)
            target = all_reduce(target)
        return (torch.log(sum_exp) + top - target).mean()

    def _with_margin(self, c: torch.Tensor) -> torch.Tensor:
        if self.kind == "cosface":
            return c - self.margin
        angles = torch.acos(torch.clamp(c, -1, 1))
        m = self.margin
        # pml's choice beyond pi - m, which keeps the loss monotone in the angle
        return torch.where(
            angles <= math.pi - m, torch.cos(angles + m), torch.cos(angles) - m * math.sin(m)
        )


def _param_index(optimizer: torch.optim.Optimizer, p: nn.Parameter) -> int | None:
    k = 0
    for group in optimizer.param_groups:
        for q in group["params"]:
            if q is p:
                return k
            k += 1
    return None


def reshard_optimizer_state(
    opt_state: dict, optimizer: torch.optim.Optimizer, module: nn.Module, gather: bool
) -> dict:
    """The optimizer state of the sharded centres as whole matrices (``gather``, for saving)
    or as this process's block of the whole matrices (for loading)."""
    for m in module.modules():
        if not isinstance(m, PartialFCLoss) or m.world_size == 1:
            continue
        k = _param_index(optimizer, m.weight)
        entry = opt_state.get("state", {}).get(k)
        if entry is None:
            continue
        for name, t in list(entry.items()):
            if not torch.is_tensor(t) or t.dim() == 0:
                continue
            if gather and t.shape == m.weight.shape:
                entry[name] = m.gather_rows(t).cpu()
            elif not gather and t.shape[0] == m.num_classes:
                entry[name] = m.local_rows(t)
    return opt_state
