"""Configuration: defaults, YAML + overrides, and refusal of bad values before any work."""

from __future__ import annotations

import pytest
import yaml

from siamface.cli.main import main
from siamface.cli.train_config import default_yaml, field_help
from siamface.errors import ConfigError
from siamface.train.config import SECTIONS, TrainConfig, make_config, preset_names
from siamface.train.config.load import read_yaml
from siamface.train.config.resolve import MachineFacts, resolve_autos


def test_default_yaml_round_trips_to_defaults(tmp_path):
    path = tmp_path / "default.yaml"
    path.write_text(default_yaml())
    text = path.read_text()
    # Every key is written, at its default, with its help as comment.
    assert yaml.safe_load(text) == TrainConfig().to_dict()
    for key, section in SECTIONS.items():
        block = text.split(f"\n{key}:\n", 1)[1].split("\n\n", 1)[0]
        for name, info in section.model_fields.items():
            line = next(ln for ln in block.splitlines() if ln.startswith(f"  {name}:"))
            assert field_help(f"{key}.{name}", info).split("(")[0].strip() in line, name
    assert make_config(path) == TrainConfig()


def test_yaml_sections_then_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.001\nloss:\n  name: arcface\n  miner: none\n")
    cfg = make_config(
        path, ["optim.lr=3e-4", "run.epochs=7", "machine.channels_last=false", "optim.t_max=null"]
    )
    assert (cfg.optim.lr, cfg.objective.name, cfg.run.epochs) == (3e-4, "arcface", 7)
    assert (cfg.machine.channels_last, cfg.optim.t_max) == (False, None)


def test_each_loss_owns_its_margin():
    arc = make_config(None, ["loss.name=arcface", "loss.miner=none", "loss.margin=20"])
    assert arc.objective.margin == 20 and arc.objective.scale == 30
    with pytest.raises(ConfigError, match=r"loss.margin must be <= 1 \(allowed range \[0, 1\]\)"):
        make_config(None, ["loss.name=cosface", "loss.miner=none", "loss.margin=20"])
    with pytest.raises(ConfigError, match="'loss.scale' is not a setting of loss 'triplet'"):
        make_config(None, ["loss.scale=64"])
    # Choosing another loss over a preset drops the preset's settings of the old one.
    assert make_config("finetune").objective.margin == 0.35  # cosface
    assert make_config("finetune", ["loss.name=arcface"]).objective.margin == 28.6


def test_lists_are_lists():
    cfg = make_config(None, ["distill.teacher=[sface, dlib]"])
    assert cfg.distill.teacher == ["sface", "dlib"] and cfg.teachers() == ["sface", "dlib"]
    assert make_config(None, ["distill.teacher=sface,dlib"]) == cfg


@pytest.mark.parametrize("name", preset_names())
def test_presets_hold_only_what_differs_from_the_defaults(name):
    raw, _ = read_yaml(name)
    cfg = make_config(name)
    for section, values in raw.items():
        assert isinstance(values, dict), f"{name}: {section} is not a section"
        schema = SECTIONS[section]
        for key in values:
            fields = schema.model_fields
            if key not in fields:  # a setting of the chosen loss / optimizer: its default
                fields = schema.params_of(cfg.section(section).name).model_fields
            path = f"{section}.{key}"
            assert cfg.get(path) != fields[key].default, f"{name}: {path} is the default"


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("optim.lr=abc", "optim.lr must be float"),
        ("data.batch_size=30", r"multiple of m_per_class \(data.m_per_class=4\)"),
        ("data.batch_size=4", "two identities"),
        ("run.epochs=2.5", "run.epochs must be int"),
        ("loss.name=hinge", "loss.name must be one of"),
        ("optim.name=adam", "optim.name must be one of"),
        ("lossx=triplet", "did you mean 'loss'"),
        ("run.epoch=3", "did you mean 'run.epochs'"),
        ("optim.lrr=1", "did you mean 'optim.lr'"),
        ("loss.name=arcface", "takes no miner"),
        ("model.pretrained=/no/such/file.pth", "file not found"),
        ("model.image_size=8", "model.image_size must be >= 32"),
        ("run.calib_far=2", "run.calib_far"),
        ("data.val_identities=2.5", "data.val_identities >= 1 is a count"),
        ("data.align=maybe", "data.align must be one of auto, true, false"),
        ("model=3", "model must be a mapping"),
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
    broken.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        make_config(broken)


def test_every_auto_is_resolved_once():
    gpu = MachineFacts(device="cuda", precision="bf16", workers=7)
    cfg = resolve_autos(make_config(None, ["finetune.init=sface"]), gpu)
    dumped = cfg.to_dict()
    assert "auto" not in [dumped[s][k] for s in ("machine", "finetune", "run") for k in dumped[s]]
    assert (cfg.machine.device, cfg.machine.precision, cfg.machine.augment_on) == (
        "cuda",
        "bf16",
        "device",
    )
    assert (cfg.finetune.bn, cfg.finetune.centre_init, cfg.run.select_rule) == (
        "frozen",
        "class_mean",
        "not_worse",
    )
    assert cfg.machine.num_workers == 7
    cpu = resolve_autos(make_config(None, ["machine.device=cpu"]), gpu)
    assert (cpu.machine.precision, cpu.machine.augment_on, cpu.finetune.bn) == (
        "fp32",
        "loader",
        "train",
    )
    assert resolve_autos(cpu, gpu) == cpu  # nothing left to decide
    # Derived answers do not change by resolving.
    plain = make_config(None, ["finetune.init=sface"])
    assert (plain.bn_frozen, plain.not_worse, plain.class_mean_centres) == (
        cfg.bn_frozen,
        cfg.not_worse,
        cfg.class_mean_centres,
    )


def test_train_help_and_print_config(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "loss.margin = 28.6  [arcface]" in out and "optim.momentum = 0.9  [sgd_step]" in out
    assert "lr -> optim.lr" in out
    assert main(["train", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == TrainConfig().to_dict()
