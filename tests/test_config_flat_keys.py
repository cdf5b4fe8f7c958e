"""The flat keys of the previous release keep working for one release, each with one line."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import TINY_BACKBONE
from pydantic import ValidationError

from siamface.cli.main import main
from siamface.train.config import TrainConfig, make_config
from siamface.train.config.flat import FLAT_KEYS, forget_warnings


@pytest.fixture(autouse=True)
def fresh_warnings():
    forget_warnings()
    yield
    forget_warnings()


@pytest.mark.parametrize(
    "old,new",
    [
        (["lr=3e-4", "epochs=7"], ["optim.lr=3e-4", "run.epochs=7"]),
        (
            ["loss=arcface", "miner=none", "arc_margin=20", "softmax_scale=64"],
            ["loss.name=arcface", "loss.miner=none", "loss.margin=20", "loss.scale=64"],
        ),
        (
            ["loss=cosface", "miner=none", "cos_margin=0.3", "arc_margin=20"],  # arc: ignored
            ["loss.name=cosface", "loss.miner=none", "loss.margin=0.3"],
        ),
        (
            ["optimizer=ranger_exponential", "exp_gamma=0.9"],
            ["optim.name=ranger_exponential", "optim.gamma=0.9"],
        ),
        (
            ["optimizer=sgd_step", "gamma=0.5", "momentum=0.8"],
            ["optim.name=sgd_step", "optim.gamma=0.5", "optim.momentum=0.8"],
        ),
        (
            ["teacher=sface,dlib", "distill_embedding=2"],
            ["distill.teacher=[sface, dlib]", "distill.embedding=2"],
        ),
        (
            ["init=sface", "trainable=4", "bn=frozen"],
            ["finetune.init=sface", "finetune.trainable=4", "finetune.bn=frozen"],
        ),
    ],
)
def test_old_and_new_keys_give_the_same_config(old, new):
    assert make_config(None, old) == make_config(None, new)


def test_old_yaml_file_equals_the_nested_one(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("lr: 0.001\nloss: arcface\nminer: none\narc_margin: 20\nbatch_size: 64\n")
    nested = tmp_path / "nested.yaml"
    nested.write_text(
        "optim: {lr: 0.001}\nloss: {name: arcface, miner: none, margin: 20}\n"
        "data: {batch_size: 64}\n"
    )
    assert make_config(flat) == make_config(nested)


def test_one_deprecation_line_per_key(capsys):
    make_config(None, ["lr=3e-4", "arc_margin=20"])
    make_config(None, ["lr=1e-3"])
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "config: 'lr' is deprecated, use 'optim.lr'",
        "config: 'arc_margin' is deprecated, use 'loss.margin' (with loss.name=arcface)",
    ]
    make_config(None, ["optim.lr=3e-4"])
    assert capsys.readouterr().err == ""  # the new keys say nothing


def test_old_names_stay_readable_attributes():
    cfg = make_config(None, ["optim.name=sgd_step", "optim.gamma=0.5", "distill.teacher=[a, b]"])
    assert (cfg.lr, cfg.optimizer, cfg.gamma, cfg.momentum) == (1e-4, "sgd_step", 0.5, 0.9)
    assert cfg.exp_gamma == 0.95 and cfg.eps == 1e-8  # keys sgd_step does not take: defaults
    assert cfg.teacher == "a,b" and cfg.loss == "triplet" and cfg.margin == 0.1
    assert all(hasattr(cfg, old) for old in FLAT_KEYS)
    with pytest.raises(ValidationError, match="frozen"):
        cfg.lr = 1.0  # read-only: the value recorded is the value used


def test_resumed_run_with_an_old_flat_saved_config(capsys):
    """A run.json written by the previous release: every flat key, read with one line."""
    cfg = make_config("finetune", ["time_budget_min=20"])
    saved = {old: getattr(cfg, old) for old in FLAT_KEYS}  # the old flat run.json config
    capsys.readouterr()
    again = make_config(base=saved, overrides=["epochs=40"])
    assert again == make_config("finetune", ["run.time_budget_min=20", "run.epochs=40"])
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("config: the run's saved config uses the old flat keys")
    assert err[1:] == ["config: 'epochs' is deprecated, use 'run.epochs'"]


def test_cli_refusal_with_an_old_key_names_the_new_one(tmp_path, capsys):
    rc = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "image_size=8"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.splitlines() == [
        "config: 'image_size' is deprecated, use 'model.image_size'",
        err.splitlines()[1],
    ]
    assert "model.image_size must be >= 32" in err.splitlines()[1]
    assert TrainConfig().model.image_size == 112


def test_cli_run_records_resolved_config_and_resumes_an_old_flat_one(pins_small, tmp_path, capsys):
    """A real run through the CLI: config.yaml holds nested keys with every auto decided; the
    same run saved the old (flat) way still resumes, with a nested budget override."""
    out = tmp_path / "run"
    tiny = [
        f"model.backbone={TINY_BACKBONE}",
        "model.pretrained=none",
        "model.image_size=32",
        "model.embedding_size=16",
        "data.batch_size=16",
        "data.val_identities=4",
        "machine.precision=fp32",
        "optim.lr=1e-3",
        "run.epochs=1",
    ]
    assert (
        main(["train", "--data", str(pins_small), "--out", str(out), "--no-progress", *tiny]) == 0
    )
    capsys.readouterr()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved == json.loads((out / "run.json").read_text())["config"]
    assert saved["loss"] == {"name": "triplet", "miner": "batch_hard", "margin": 0.1}
    assert saved["machine"]["device"] == "cpu" and saved["machine"]["num_workers"] >= 0
    assert saved["machine"]["augment_on"] == "loader" and saved["finetune"]["bn"] == "train"
    # The run as the previous release wrote it: flat keys, autos unresolved.
    meta = json.loads((out / "run.json").read_text())
    cfg = make_config(base=meta["config"])
    flat = {old: getattr(cfg, old) for old in FLAT_KEYS} | {"device": "auto", "bn": "auto"}
    (out / "run.json").write_text(json.dumps(meta | {"config": flat}))
    forget_warnings()
    argv = ["train", "--resume", str(out), "--no-progress", "run.epochs=2"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "config: the run's saved config uses the old flat keys" in err
    assert "deprecated, use 'run.epochs'" not in err  # the nested key was what the user wrote
    hist = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
