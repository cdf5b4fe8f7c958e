"""L2-SP: a penalty on the distance of the trained weights to the starting model's weights.

Fine-tuning a face model on a few hundred people can drift far from the weights that generalise
to millions of unseen faces. L2-SP (Li, Grandvalet and Davoine, 2018, "Explicit Inductive Bias
for Transfer Learning with Convolutional Networks") replaces weight decay towards zero with
decay towards the *starting point*: ``l2sp * sum ||w - w_start||^2`` over the parameters that
train, so every update that moves away from the start must pay for itself in the other terms.
It complements ``keep_close`` (which anchors outputs on the training images) by anchoring the
weights themselves, wherever the training images do not reach.

The anchor is the starting checkpoint's tensors, not the model's weights when the term is built,
so a resumed run keeps the same anchor.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from siamface.train.objective import Batch, LossTerm


class L2SPTerm(LossTerm):
    """``sum ||w - w_start||^2`` over the model's parameters that train this step.

    The model and the anchors are kept as plain attributes (not submodules or buffers): the
    objective's parameters and state must not include the model a second time."""

    def __init__(self, model: nn.Module, start: Mapping[str, torch.Tensor], weight: float) -> None:
        super().__init__("l2sp", weight)
        params = dict(model.named_parameters())
        missing = sorted(set(params) - set(start))
        if missing:
            raise ValueError(f"l2sp: the starting weights have no {missing[0]!r}")
        self._pairs: list[tuple[nn.Parameter, torch.Tensor]] = [
            (p, start[name].detach().to(p.device, p.dtype)) for name, p in params.items()
        ]

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - nn.Module's signature
        """Moving the objective to a device moves the anchors with it."""
        self._pairs = [(p, fn(a)) for p, a in self._pairs]
        return super()._apply(fn, recurse)

    def compute(self, batch: Batch) -> torch.Tensor:
        total = batch.embeddings.new_zeros(())
        for p, anchor in self._pairs:
            if p.requires_grad:
                total = total + (p - anchor).pow(2).sum()
        return total
