"""Which parts of the model train, epoch by epoch, and whether BatchNorm statistics move.

Fine-tuning a face model on a few hundred people must not undo what it learned from millions of
faces. Three knobs, each a config key:

* ``freeze_epochs``: the first epochs train only the embedding head and the loss's new class
  centres on a frozen backbone (a new classification head starts with large, noisy gradients
  that would otherwise flow into the trunk);
* ``trainable``: after that, ``all`` of the model, only the ``head``, or the head plus the
  backbone's last ``N`` stages (early layers see edges and textures that transfer as they are);
* ``bn``: BatchNorm statistics ``frozen`` (running mean/var kept; the default with ``init``,
  because batches of 8 people are a poor estimate of a population of faces) or ``train``.

Frozen parameters get ``requires_grad=False`` (the optimizer skips them: no update, no weight
decay), and their BatchNorm layers are kept in eval mode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from siamface.train.hooks import Hook

if TYPE_CHECKING:
    from siamface.train.hooks import RunView

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def backbone_stages(backbone: nn.Module) -> list[nn.Module]:
    """The backbone as an ordered list of stages, input side first.

    Top-level children with parameters, with sequential containers (timm's ``blocks``, SFace's
    separable blocks) opened one level: "the last 3 stages" then means the last three blocks,
    not the last three top-level attributes.
    """
    stages: list[nn.Module] = []
    for child in backbone.children():
        if not any(True for _ in child.parameters()):
            continue
        if isinstance(child, nn.Sequential | nn.ModuleList) and len(child) > 1:
            stages.extend(c for c in child if any(True for _ in c.parameters()))
        else:
            stages.append(child)
    return stages


def trainable_modules(model: nn.Module, policy: str, backbone_frozen: bool) -> list[nn.Module]:
    """The modules whose parameters train under ``policy`` (``all``, ``head``, or a count)."""
    backbone = model.backbone
    rest = [m for name, m in model.named_children() if name != "backbone"]
    if backbone_frozen or policy == "head":
        return rest
    if policy == "all":
        return [model]
    n = int(policy)
    return rest + backbone_stages(backbone)[-n:]


def apply_trainable(model: nn.Module, policy: str, backbone_frozen: bool, bn_frozen: bool) -> int:
    """Set ``requires_grad`` and BatchNorm modes; returns the number of trainable tensors.

    Call after ``model.train()``: it puts frozen parts' (or all, with ``bn_frozen``)
    BatchNorm layers back in eval mode.
    """
    model.requires_grad_(False)
    train = trainable_modules(model, policy, backbone_frozen)
    for m in train:
        m.requires_grad_(True)
    trained_ids = {id(p) for m in train for p in m.parameters()}
    for m in model.modules():
        if isinstance(m, _BN):
            own = list(m.parameters(recurse=False))
            frozen_here = bool(own) and not any(id(p) in trained_ids for p in own)
            if bn_frozen or frozen_here:
                m.eval()
    return len(trained_ids)


class FreezeSchedule(Hook):
    """Applies ``freeze_epochs`` / ``trainable`` / ``bn`` at the start of every epoch."""

    def __init__(self, freeze_epochs: int, policy: str, bn_frozen: bool) -> None:
        self.freeze_epochs = freeze_epochs
        self.policy = policy
        self.bn_frozen = bn_frozen
        self._last: tuple[bool, int] | None = None

    def backbone_frozen(self, epoch: int) -> bool:
        return epoch < self.freeze_epochs

    def on_epoch_start(self, view: RunView) -> None:
        frozen = self.backbone_frozen(view.state.epoch)
        n = apply_trainable(view.model, self.policy, frozen, self.bn_frozen)
        if self._last != (frozen, n):
            what = "backbone frozen (head + loss train)" if frozen else f"trainable={self.policy}"
            bn = ", BatchNorm statistics frozen" if self.bn_frozen else ""
            view.log(f"epoch {view.state.epoch + 1}: {what}, {n} tensors train{bn}")
            self._last = (frozen, n)
