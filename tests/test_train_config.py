"""Configuration: defaults, YAML + overrides, and refusal of bad values before any work."""

from __future__ import annotations

import pytest
import yaml

from siamface.errors import ConfigError
from siamface.train.config import TrainConfig, field_help, make_config, write_default_yaml


def test_default_yaml_round_trips_to_defaults(tmp_path):
    path = tmp_path / "default.yaml"
    write_default_yaml(path)
    text = path.read_text()
    # Every key is written, at its default (a key left out would still round-trip, falling
    # back to the default, so the file's own content is checked), with its help as comment.
    assert yaml.safe_load(text) == TrainConfig().to_dict()
    lines = {ln.split(":", 1)[0]: ln for ln in text.splitlines() if ln and ln[0] != "#"}
    for name in TrainConfig.model_fields:
        assert field_help(name).split("(")[0].strip() in lines[name], name
    assert make_config(path) == TrainConfig()


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.001\nloss: arcface\nminer: none\n")
    cfg = make_config(path, ["lr=3e-4", "epochs=7", "channels_last=false", "t_max=null"])
    assert (cfg.lr, cfg.loss, cfg.epochs, cfg.channels_last, cfg.t_max) == (
        3e-4,
        "arcface",
        7,
        False,
        None,
    )


@pytest.mark.parametrize(
    "override,message",
    [
        ("lr=-1", "lr must be > 0"),
        ("lr=abc", "lr must be float"),
        ("batch_size=30", "multiple of m_per_class"),
        ("batch_size=4", "two identities"),
        ("epochs=2.5", "epochs must be int"),
        ("loss=hinge", "loss must be one of"),
        ("optimizer=adam", "optimizer must be one of"),
        ("lossx=triplet", "did you mean 'loss'"),
        ("loss=arcface", "takes no miner"),
        ("pretrained=/no/such/file.pth", "file not found"),
        ("image_size=8", "image_size must be >= 32"),
        ("calib_far=2", "calib_far"),
        ("val_identities=2.5", "whole number"),
        ("novalue", "expected key=value"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(override, message):
    with pytest.raises(ConfigError, match=message):
        make_config(None, [override])


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        make_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        make_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        make_config(broken)
