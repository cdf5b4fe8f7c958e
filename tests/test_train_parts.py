"""Each loss, miner and optimizer preset does real optimisation steps on a tiny model."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_BACKBONE

from siamface.model.network import ModelConfig, build_model
from siamface.train.config import LOSSES, MARGIN_SOFTMAX_LOSSES, MINERS, OPTIMIZERS, make_config
from siamface.train.losses import build_loss, build_miner
from siamface.train.optim import build_optimizer, param_groups


def _batch(n_ids=4, m=4, size=32):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n_ids * m, 3, size, size, generator=g)
    # make identities separable: add a per-identity colour offset
    y = torch.arange(n_ids).repeat_interleave(m)
    x[:, 0] += y.view(-1, 1, 1).float() * 0.3
    return x, y


def _run_steps(cfg, steps=4):
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=TINY_BACKBONE, embedding_size=16))
    loss_fn = build_loss(cfg, num_classes=4)
    miner = build_miner(cfg)
    bundle = build_optimizer(param_groups(model, loss_fn, cfg), cfg, lambda: 0.5)
    x, y = _batch()
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    bundle.train_mode()
    model.train()
    for _ in range(steps):
        emb = model(x)
        idx = miner(emb, y) if miner else None
        loss = loss_fn(emb, y, idx) if idx is not None else loss_fn(emb, y)
        bundle.optimizer.zero_grad()
        loss.backward()
        bundle.optimizer.step()
        bundle.step_schedule()
        losses.append(float(loss.detach()))
    bundle.epoch_schedule(0.3)
    bundle.eval_mode()
    changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    return losses, changed, bundle


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains(loss):
    miner = "none" if loss in MARGIN_SOFTMAX_LOSSES else "batch_hard"
    cfg = make_config(
        None, ["embedding_size=16", f"loss={loss}", f"miner={miner}", "lr=1e-3", "batch_size=16"]
    )
    losses, changed, _ = _run_steps(cfg)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert changed > 0
    assert min(losses[1:]) < losses[0] or losses[0] == 0.0


@pytest.mark.parametrize("miner", MINERS)
def test_every_miner_with_triplet(miner):
    cfg = make_config(None, ["embedding_size=16", f"miner={miner}", "lr=1e-3", "batch_size=16"])
    losses, changed, _ = _run_steps(cfg, steps=2)
    assert changed > 0 or losses[0] == 0.0


@pytest.mark.parametrize("preset", OPTIMIZERS)
def test_every_optimizer_preset_steps_and_schedules(preset):
    cfg = make_config(
        None,
        ["embedding_size=16", f"optimizer={preset}", "lr=1e-3", "batch_size=16", "step_size=1"],
    )
    losses, changed, bundle = _run_steps(cfg)
    assert changed > 0
    lr = bundle.lr()
    if preset in ("adam_cosine", "adamw_cosine"):
        # progress() is fixed at 0.5: half-way down the cosine from 1e-3 to 1e-6
        assert lr == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5, rel=1e-6)
    elif preset == "sgd_step":
        assert lr == pytest.approx(1e-4)  # one epoch_schedule with step_size=1, gamma=0.1
    elif preset == "ranger_exponential":
        assert lr == pytest.approx(1e-3 * 0.95)
    state = bundle.state_dict()
    assert "optimizer" in state


def test_schedule_free_switches_weights_between_train_and_eval():
    cfg = make_config(
        None, ["embedding_size=16", "optimizer=schedule_free", "lr=1e-2", "batch_size=16"]
    )
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=TINY_BACKBONE, embedding_size=16))
    loss_fn = build_loss(cfg, 4)
    bundle = build_optimizer(param_groups(model, loss_fn, cfg), cfg, lambda: 0.0)
    bundle.train_mode()
    x, y = _batch()
    for _ in range(3):
        loss = loss_fn(model(x), y)
        bundle.optimizer.zero_grad()
        loss.backward()
        bundle.optimizer.step()
    w_train = next(model.parameters()).detach().clone()
    bundle.eval_mode()
    assert not torch.equal(w_train, next(model.parameters()))
