"""Registries, the pydantic config schema, shipped presets and training's extension seams."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import SHARED_DATA, TINY_TRAIN
from safetensors.torch import load_file

from siamface.cli.main import main
from siamface.cli.train_config import config_help
from siamface.errors import ConfigError
from siamface.train.config import make_config, preset_names
from siamface.train.hooks import Hook
from siamface.train.job import train
from siamface.train.losses import LOSS_REGISTRY, build_loss, register_loss
from siamface.train.objective import LossTerm
from siamface.train.run import build_run
from siamface.train.state import Progress

FAST = TINY_TRAIN


@pytest.fixture
def extra_loss():
    """A loss registered for one test only: the registry is the single list of choices."""

    @register_loss("test_only_l2", help="pull embeddings to the origin (test)")
    def build(cfg, num_classes):
        from torch import nn

        class L2(nn.Module):
            def forward(self, emb, labels, indices=None):
                return (emb**2).sum(1).mean()

        return L2()

    yield "test_only_l2"
    LOSS_REGISTRY.unregister("test_only_l2")


def test_a_registered_loss_is_a_valid_choice_and_listed_in_help(extra_loss):
    cfg = make_config(None, [f"loss.name={extra_loss}"])
    assert cfg.objective.name == extra_loss
    assert extra_loss in config_help()
    emb = torch.nn.functional.normalize(torch.rand(4, 8), dim=1)
    assert float(build_loss(cfg, 2)(emb, torch.tensor([0, 0, 1, 1])).detach()) == pytest.approx(1)


def test_an_unregistered_loss_is_refused_with_a_hint():
    with pytest.raises(ConfigError, match="did you mean 'triplet'"):
        make_config(None, ["loss.name=triplett"])
    assert "test_only_l2" not in config_help()


@pytest.mark.parametrize(
    "override,allowed",
    [
        ("model.image_size=100000", "[32, 1024]"),
        ("machine.num_workers=1000", "[-1, 64]"),
        ("data.batch_size=1000000", "[2, 65536]"),
        ("model.embedding_size=1", "[2, 8192]"),
        ("run.epochs=0", "[1, 1000000]"),
        ("optim.lr=100", "(0, 10]"),
        ("run.seed=-5", "[0, 4294967295]"),
        ("data.m_per_class=5000", "[1, 1024]"),
        ("optim.momentum=2", "[0, 1]"),  # an optimizer's own setting (under sgd_step)
    ],
)
def test_absurd_values_are_refused_with_the_allowed_range(override, allowed):
    key = override.split("=")[0]
    entry = ["optim.name=sgd_step"] if key == "optim.momentum" else []
    with pytest.raises(ConfigError, match=rf"^{key} must be .*allowed range {re.escape(allowed)}"):
        make_config(None, [*entry, override])


def test_non_finite_numbers_are_refused():
    with pytest.raises(ConfigError, match="optim.lr must be a finite number"):
        make_config(None, ["optim.lr=.nan"])


def test_cli_refuses_absurd_image_size_before_reading_data(tmp_path, capsys):
    rc = main(
        ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]
        + ["model.image_size=100000"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "model.image_size must be <= 1024" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", ["article", "cpu-laptop", "gpu-large"])
def test_presets_ship_in_the_package_and_validate(name):
    assert name in preset_names()
    cfg = make_config(name, ["run.epochs=3"])
    assert cfg.run.epochs == 3  # overrides apply on top of a preset


def test_article_preset_matches_the_articles_script_constants():
    article = sorted((SHARED_DATA.parent / "seeds").glob("001_*.txt"))
    if not article:
        pytest.skip("the article text is not available")
    text = article[0].read_text(encoding="utf-8")

    def const(name: str) -> float:
        return float(re.search(rf"^{name} = ([0-9.e-]+)", text, re.M).group(1))

    cfg = make_config("article")
    m, d, o = cfg.model, cfg.data, cfg.optim
    assert m.embedding_size == const("embedding_size")
    assert d.batch_size == const("batch_size")
    assert d.m_per_class == const("sampler_m")
    assert o.lr == const("lr") and o.weight_decay == const("weight_decay")
    assert o.eps == const("eps") and o.eta_min == const("eta_min")
    assert o.t_max == const("T_max") and cfg.run.epochs == const("num_epochs")
    assert cfg.objective.margin == const("margin")
    assert f"transforms.Resize(({m.image_size}, {m.image_size}))" in text
    assert f"create_model('{m.backbone}" in text
    loss = cfg.objective
    assert (loss.name, loss.miner, d.augment) == ("triplet", "none", "article")


def test_unknown_config_name_lists_the_presets(tmp_path):
    with pytest.raises(ConfigError, match="presets: adapt-cctv, adapt-mask, article") as err:
        make_config(str(tmp_path / "nothing.yaml"))
    assert all(name in str(err.value) for name in preset_names())


# ---------------------------------------------------------------- extension seams
class CountingTerm(LossTerm):
    """A second loss term: pulls embeddings towards a fixed reference, as distillation would."""

    def __init__(self) -> None:
        super().__init__("reference", weight=0.5)
        self.calls = 0

    def compute(self, batch):
        self.calls += 1
        ref = torch.nn.functional.normalize(torch.ones_like(batch.embeddings), dim=1)
        return (1 - (batch.embeddings * ref).sum(1)).mean()


class FreezeBackbone(Hook):
    """Freeze schedule: backbone frozen in epoch 1; plus a validation before training."""

    def __init__(self) -> None:
        self.before = None
        self.groups: list[str] = []

    def on_train_start(self, view):
        self.groups = [g["name"] for g in view.opt.optimizer.param_groups]
        self.before, _ = view.evaluate()

    def on_epoch_start(self, view):
        for p in view.model.backbone.parameters():
            p.requires_grad_(view.state.epoch >= 1)


def test_extra_loss_term_freeze_callback_and_validation_before_training(pins_small, tmp_path):
    term, cb = CountingTerm(), FreezeBackbone()

    torch.manual_seed(0)
    init = build_run(
        make_config(None, FAST), [pins_small], tmp_path / "init", Progress(), progress=False
    )
    start = {k: v.clone() for k, v in init.model.state_dict().items()}
    init.reporter.close()
    summary = train(
        make_config(None, [*FAST, "epochs=1"]),
        [pins_small],
        tmp_path / "run",
        progress=False,
        log=lambda s: None,
        hooks=[cb],
        terms=[term],
    )
    assert term.calls == summary["steps"] > 0
    assert cb.groups == ["backbone", "head"]
    assert cb.before is not None and 0 <= cb.before.auc <= 1
    saved = load_file(str(tmp_path / "run" / "last.safetensors"))
    after = {k.removeprefix("model."): v for k, v in saved.items() if k.startswith("model.")}
    # BatchNorm running statistics move without gradients; every parameter must not.
    frozen = [k for k, _ in init.model.backbone.named_parameters(prefix="backbone")]
    assert frozen and all(torch.equal(after[k], start[k]) for k in frozen)
    assert not torch.equal(after["head.weight"], start["head.weight"])
