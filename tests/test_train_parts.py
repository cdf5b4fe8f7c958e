"""Each loss, miner and optimizer preset does real optimisation steps on a tiny model,
through the training loop's own step (``Run.step``, a ``TrainStep``) on a run assembled by the
public ``build_run`` from image folders: what is tested is what ``siamface train`` runs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE
from PIL import Image

from siamface.train.config import LOSSES, MARGIN_SOFTMAX_LOSSES, MINERS, OPTIMIZERS, make_config
from siamface.train.run import Run, build_run
from siamface.train.state import Progress

BASE = [
    f"backbone={TINY_BACKBONE}",
    "pretrained=none",
    "image_size=32",
    "embedding_size=16",
    "batch_size=16",
    "val_identities=0",
    "num_workers=0",
    "precision=fp32",
    "augment=none",
]


@pytest.fixture(scope="module")
def colour_folders(tmp_path_factory):
    """8 identities x 4 images; each identity has its own colour, so they are separable."""
    root = tmp_path_factory.mktemp("colours") / "ids"
    rng = np.random.default_rng(0)
    for k in range(8):
        d = root / f"id{k}"
        d.mkdir(parents=True)
        base = rng.integers(0, 255, 3)
        for j in range(4):
            noise = rng.integers(-20, 20, (32, 32, 3))
            arr = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{j}.png")
    return root


def _trainer(colour_folders, tmp_path, overrides) -> tuple[Run, Progress]:
    cfg = make_config(None, BASE + overrides)
    state = Progress()
    run = build_run(
        cfg, [colour_folders], tmp_path / "run", state, progress=False, log=lambda s: None
    )
    return run, state


def _batch(t: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch as the training loop draws it (the sampler's order)."""
    order = list(iter(t.sampler))[: t.cfg.batch_size]
    x = torch.stack([t.data.train[i][0] for i in order])
    return x, t.data.train.labels[order]


def _run_steps(t: Run, steps: int = 4):
    x, y = _batch(t)
    before = [p.detach().clone() for p in t.model.parameters()]
    t.model.train()
    t.opt.train_mode()
    losses = [t.step(x, y).loss for _ in range(steps)]
    t.opt.epoch_schedule(0.3)
    t.opt.eval_mode()
    changed = sum(not torch.equal(a, b) for a, b in zip(before, t.model.parameters(), strict=True))
    return losses, changed


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains(loss, colour_folders, tmp_path):
    miner = "none" if loss in MARGIN_SOFTMAX_LOSSES else "batch_hard"
    t, state = _trainer(colour_folders, tmp_path, [f"loss={loss}", f"miner={miner}", "lr=1e-3"])
    losses, changed = _run_steps(t)
    assert all(np.isfinite(losses))
    assert changed > 0
    assert min(losses[1:]) < losses[0] or losses[0] == 0.0
    if loss == "bce":  # the pair head is trained too (and saved in checkpoints)
        assert t.checkpoint(None, 1, state).pair_head is not None


@pytest.mark.parametrize("miner", MINERS)
def test_every_miner_with_triplet(miner, colour_folders, tmp_path):
    t, _ = _trainer(colour_folders, tmp_path, [f"miner={miner}", "lr=1e-3"])
    losses, changed = _run_steps(t, steps=2)
    assert changed > 0 or losses[0] == 0.0


@pytest.mark.parametrize("preset", OPTIMIZERS)
def test_every_optimizer_preset_steps_and_schedules(preset, colour_folders, tmp_path):
    t, state = _trainer(colour_folders, tmp_path, [f"optimizer={preset}", "lr=1e-3", "step_size=1"])
    # Half-way through the run: the cosine presets read their progress from the run's state
    # (global_step over the period's steps), not from a call into the loop.
    state.global_step = t.steps_per_epoch * t.cfg.epochs // 2
    losses, changed = _run_steps(t)
    assert changed > 0
    lr = t.opt.lr()
    if preset in ("adam_cosine", "adamw_cosine"):
        # half-way down the cosine from 1e-3 to 1e-6
        assert lr == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5, rel=1e-6)
    elif preset == "sgd_step":
        assert lr == pytest.approx(1e-4)  # one epoch_schedule with step_size=1, gamma=0.1
    elif preset == "ranger_exponential":
        assert lr == pytest.approx(1e-3 * 0.95)


@pytest.mark.parametrize("preset", OPTIMIZERS)
def test_optimizer_state_round_trip_continues_identically(preset, colour_folders, tmp_path):
    """What a resume relies on: the saved optimizer + schedule state, loaded back, makes the
    next step exactly the step the uninterrupted optimizer takes (moments, step counts,
    lookahead buffers and schedules included)."""
    t, _ = _trainer(colour_folders, tmp_path, [f"optimizer={preset}", "lr=1e-2", "step_size=1"])
    x, y = _batch(t)
    t.model.train()
    t.opt.train_mode()
    for _ in range(3):
        t.step(x, y)
    weights = copy.deepcopy(t.model.state_dict())
    loss_state = copy.deepcopy(t.objective.state_dict())
    saved = copy.deepcopy(t.opt.state_dict())
    t.step(x, y)
    straight = [p.detach().clone() for p in t.model.parameters()]
    lr_straight = t.opt.lr()
    # A perturbed optimizer state must not survive the load (else the check below is moot).
    for group in t.opt.optimizer.param_groups:
        group["lr"] = 123.0
    t.model.load_state_dict(weights)
    t.objective.load_state_dict(loss_state)
    t.opt.load_state_dict(copy.deepcopy(saved))
    t.step(x, y)
    assert t.opt.lr() == lr_straight
    for a, b in zip(straight, t.model.parameters(), strict=True):
        assert torch.equal(a, b.detach())


def test_schedule_free_switches_weights_between_train_and_eval(colour_folders, tmp_path):
    t, _ = _trainer(colour_folders, tmp_path, ["optimizer=schedule_free", "lr=1e-2"])
    x, y = _batch(t)
    t.model.train()
    t.opt.train_mode()
    for _ in range(3):
        t.step(x, y)
    w_train = next(t.model.parameters()).detach().clone()
    t.opt.eval_mode()
    assert not torch.equal(w_train, next(t.model.parameters()))
