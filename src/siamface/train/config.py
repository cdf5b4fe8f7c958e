"""Training configuration: every knob of the article's script, named and checked up front.

The article kept its settings as module constants; here each is a key with the same meaning
(``embedding_size``, ``batch_size``, ``m_per_class`` = the article's ``sampler_m``, ``lr``,
``weight_decay``, ``eps``, ``t_max``, ``eta_min``, ``epochs``, ``margin``) plus the choices the
article discusses in prose (backbone, loss, miner, optimizer preset). Values come from the
defaults, then a YAML file, then ``key=value`` overrides; all are validated before any work,
so a typo costs a second, not an hour.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from siamface.errors import ConfigError

LOSSES = ("triplet", "contrastive", "bce", "multi_similarity", "arcface", "cosface")
MARGIN_SOFTMAX_LOSSES = ("arcface", "cosface")
MINERS = ("none", "batch_hard", "semi_hard", "multi_similarity")
OPTIMIZERS = (
    "adam_cosine",
    "adamw_cosine",
    "adamw_plateau",
    "sgd_step",
    "ranger_exponential",
    "schedule_free",
)
AUGMENT = ("default", "article", "none")
SELECT_METRICS = ("auc", "eer", "tar_at_far_1e-3", "accuracy")
PRECISIONS = ("auto", "fp32", "bf16")


def _opt(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse's name
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """All training settings; each field's ``help`` is what ``siamface train --help`` shows."""

    # --- model ---
    backbone: str = _opt("tf_efficientnet_lite0", "any timm model name, e.g. tf_efficientnetv2_b0")
    pretrained: str = _opt("auto", "auto | hub | none | /path/to/weights.(pth|safetensors)")
    embedding_size: int = _opt(512, "output embedding dimension (article: 512)")
    image_size: int = _opt(112, "square input size in pixels (article: 224)")
    # --- data ---
    val_identities: float = _opt(
        0.2, "held-out identities: fraction (<1) or count (>=1); 0 = no validation"
    )
    min_images_per_identity: int = _opt(2, "identities with fewer images are excluded")
    augment: str = _opt("default", "default | article | none")
    align: str = _opt(
        "auto",
        "auto | true | false: detect + align faces on the fly (auto = only when the data "
        "folder was written by 'siamface prepare', whose crops are already aligned)",
    )
    # --- sampling ---
    batch_size: int = _opt(32, "images per batch (article: 32)")
    m_per_class: int = _opt(4, "images per identity in a batch (article: sampler_m = 4)")
    # --- loss ---
    loss: str = _opt("triplet", " | ".join(LOSSES))
    margin: float = _opt(
        0.1, "triplet margin on cosine similarity (article: 0.1); contrastive negative margin"
    )
    miner: str = _opt("batch_hard", " | ".join(MINERS))
    arc_margin: float = _opt(28.6, "ArcFace angular margin in degrees (28.6 = 0.5 rad)")
    cos_margin: float = _opt(0.35, "CosFace additive cosine margin")
    softmax_scale: float = _opt(30.0, "logit scale for ArcFace / CosFace")
    head_lr_mult: float = _opt(10.0, "lr multiplier for loss parameters (class centres, pair head)")
    # --- optimisation ---
    optimizer: str = _opt("adamw_cosine", " | ".join(OPTIMIZERS))
    lr: float = _opt(1e-4, "learning rate (article: 1e-4)")
    weight_decay: float = _opt(1e-5, "weight decay (article: 1e-5)")
    eps: float = _opt(1e-8, "Adam-family epsilon (article: 1e-8)")
    momentum: float = _opt(0.9, "SGD momentum (sgd_step)")
    t_max: float | None = _opt(None, "cosine period in epochs (article: 50); null = whole run")
    eta_min: float = _opt(1e-6, "cosine floor (article: 1e-6)")
    warmup_steps: int = _opt(0, "linear warm-up steps (cosine presets, schedule_free)")
    step_size: int = _opt(10, "StepLR period in epochs (sgd_step)")
    gamma: float = _opt(0.1, "StepLR factor (sgd_step)")
    exp_gamma: float = _opt(0.95, "ExponentialLR per-epoch factor (ranger_exponential)")
    plateau_patience: int = _opt(2, "ReduceLROnPlateau patience in epochs (adamw_plateau)")
    plateau_factor: float = _opt(0.5, "ReduceLROnPlateau factor (adamw_plateau)")
    epochs: int = _opt(20, "maximum epochs (article: 100); an epoch sees each image once")
    time_budget_min: float | None = _opt(None, "wall-clock budget in minutes; null = none")
    # --- validation / checkpoints ---
    select_metric: str = _opt("auc", "picks best.safetensors: " + " | ".join(SELECT_METRICS))
    calib_far: float = _opt(1e-3, "target false-accept rate of the stored decision threshold")
    save_every_min: float = _opt(10.0, "also save resumable state this often within an epoch")
    # --- machine ---
    seed: int = _opt(0, "random seed (split, sampling, initialisation)")
    num_workers: int = _opt(-1, "data loader workers; -1 = auto")
    precision: str = _opt("auto", "auto | fp32 | bf16 autocast (auto: bf16 on CUDA, fp32 on CPU)")
    channels_last: bool = _opt(True, "NHWC memory layout: faster convolutions on CPU and GPU")
    device: str = _opt("auto", "auto | cpu | cuda")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_types() -> dict[str, Any]:
    return {f.name: f.type for f in fields(TrainConfig)}


def _coerce(key: str, value: Any, type_str: str) -> Any:
    """Convert a YAML/CLI value to the field's type, or raise a readable ConfigError."""
    optional = "None" in type_str
    empty = ("null", "~") if type_str == "str" else ("null", "none", "~")
    if value is None or (isinstance(value, str) and value.lower() in empty):
        if optional:
            return None
        if key == "pretrained":
            return "none"
        raise ConfigError(f"{key} may not be empty")
    base = type_str.replace(" | None", "")
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1", "on"):
                return True
            if str(value).lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if key == "pretrained" and isinstance(value, bool):
            return "auto" if value else "none"
        if isinstance(value, bool):  # YAML reads `align: true` as a bool
            return "true" if value else "false"
        return str(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{key} must be {base}, got {value!r}") from err


def _check(cfg: TrainConfig) -> None:
    def positive(name: str, allow_zero: bool = False) -> None:
        v = getattr(cfg, name)
        if v is not None and (v < 0 or (v == 0 and not allow_zero)):
            raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {v}")

    for name, choices in (
        ("loss", LOSSES),
        ("miner", MINERS),
        ("optimizer", OPTIMIZERS),
        ("augment", AUGMENT),
        ("select_metric", SELECT_METRICS),
        ("precision", PRECISIONS),
        ("device", ("auto", "cpu", "cuda")),
        ("align", ("auto", "true", "false")),
    ):
        if getattr(cfg, name) not in choices:
            raise ConfigError(
                f"{name} must be one of {', '.join(choices)}; got {getattr(cfg, name)!r}"
            )
    for name in ("embedding_size", "image_size", "batch_size", "m_per_class", "lr", "epochs"):
        positive(name)
    for name in ("weight_decay", "eps", "eta_min", "warmup_steps", "margin", "val_identities"):
        positive(name, allow_zero=True)
    for name in ("t_max", "time_budget_min", "step_size", "save_every_min", "softmax_scale"):
        positive(name)
    if cfg.image_size < 32:
        raise ConfigError(f"image_size must be >= 32, got {cfg.image_size}")
    if cfg.batch_size % cfg.m_per_class:
        raise ConfigError(
            f"batch_size ({cfg.batch_size}) must be a multiple of m_per_class "
            f"({cfg.m_per_class}) for M-per-class sampling"
        )
    if cfg.batch_size // cfg.m_per_class < 2:
        raise ConfigError("batch_size / m_per_class must be >= 2: a batch needs two identities")
    if not 0 < cfg.calib_far < 1:
        raise ConfigError(f"calib_far must be in (0, 1), got {cfg.calib_far}")
    if not 0 < cfg.gamma <= 1 or not 0 < cfg.exp_gamma <= 1 or not 0 < cfg.plateau_factor < 1:
        raise ConfigError("gamma and exp_gamma must be in (0, 1], plateau_factor in (0, 1)")
    if cfg.loss in MARGIN_SOFTMAX_LOSSES and cfg.miner != "none":
        raise ConfigError(
            f"loss={cfg.loss} is a classification (margin-softmax) loss and takes no miner; "
            "set miner=none"
        )
    if cfg.val_identities >= 1 and not float(cfg.val_identities).is_integer():
        raise ConfigError("val_identities >= 1 is a count and must be a whole number")
    if cfg.min_images_per_identity < 2:
        raise ConfigError("min_images_per_identity must be >= 2 (a positive pair needs two)")
    if cfg.pretrained not in ("auto", "hub", "none"):
        p = Path(cfg.pretrained).expanduser()
        if not p.is_file():
            raise ConfigError(
                f"pretrained must be auto, hub, none or an existing weight file; "
                f"file not found: {p}"
            )


def make_config(
    yaml_path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults <- ``base`` (e.g. a resumed run) <- YAML file <- ``key=value`` overrides."""
    types = _field_types()
    values: dict[str, Any] = dict(base or {})
    if yaml_path is not None:
        p = Path(yaml_path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {p} is not valid YAML: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must be a mapping of key: value")
        values.update(loaded)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            values[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            values[key.strip()] = raw
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in types:
            close = difflib.get_close_matches(key, list(types), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}")
        out[key] = _coerce(key, value, str(types[key]))
    cfg = TrainConfig(**out)
    _check(cfg)
    return cfg


#: Section headings in --help and the default YAML, keyed by each section's first field.
SECTIONS = {
    "backbone": "MODEL",
    "val_identities": "DATA",
    "batch_size": "SAMPLING",
    "loss": "LOSS",
    "optimizer": "OPTIMISATION",
    "select_metric": "VALIDATION / CHECKPOINTS",
    "seed": "MACHINE",
}


def config_help() -> str:
    """Every key with its default and help text, grouped by section, for ``--help``."""
    lines: list[str] = []
    for f in fields(TrainConfig):
        if f.name in SECTIONS:
            lines += ["", SECTIONS[f.name]]
        lines.append(f"  {f.name} = {_yaml_value(f.default)}  {f.metadata.get('help', '')}")
    return "\n".join(lines)


def _yaml_value(v: Any) -> str:
    if isinstance(v, float) and "e" in repr(v) and "." not in repr(v).split("e")[0]:
        return repr(v).replace("e", ".0e")  # YAML 1.1 reads 1e-05 as a string, 1.0e-05 not
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def write_default_yaml(path: Path) -> None:
    """Write a commented YAML file with every key at its default."""
    out = ["# siamface train configuration: every key at its default (siamface train --help)."]
    for line in config_help().splitlines():
        if not line.strip():
            out.append("")
        elif not line.startswith("  "):
            out.append(f"# {line}")
        else:
            name, rest = line.strip().split(" = ", 1)
            value, _, comment = rest.partition("  ")
            out.append(f"{name}: {value}  # {comment.strip()}")
    path.write_text("\n".join(out) + "\n")
