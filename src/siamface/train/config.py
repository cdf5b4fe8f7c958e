"""Training configuration: every knob of the article's script, named and checked up front.

The article kept its settings as module constants; here each is a key with the same meaning
(``embedding_size``, ``batch_size``, ``m_per_class`` = the article's ``sampler_m``, ``lr``,
``weight_decay``, ``eps``, ``t_max``, ``eta_min``, ``epochs``, ``margin``) plus the choices the
article discusses in prose (backbone, loss, miner, optimizer preset). Values come from the
defaults, then a YAML file or a preset shipped in the package (``--config article``), then
``key=value`` overrides; all are validated by a pydantic schema before any work, so a typo or an
absurd value (``image_size=100000``) costs a second and names the allowed range, not an hour
or an out-of-memory kill.

Choices are not spelled here: ``loss``, ``miner``, ``optimizer`` and ``pretrained`` read their
registries (:mod:`siamface.train.losses`, ``miners``, ``optim``, ``weights``), which also feed
``--help``. Kept free of torch imports: ``siamface --help`` renders :func:`config_help`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from siamface.errors import ConfigError, SiamfaceError
from siamface.train.losses import LOSS_REGISTRY, is_classifier
from siamface.train.miners import MINER_REGISTRY
from siamface.train.optim import OPTIMIZER_REGISTRY
from siamface.train.weights import named_sources

AUGMENT = ("default", "article", "none")
SELECT_METRICS = ("auc", "eer", "tar_at_far_1e-3", "accuracy")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUGMENT_ON = ("auto", "loader", "device")
DEVICES = ("auto", "cpu", "cuda")
ALIGN = ("auto", "true", "false")
BN_POLICIES = ("auto", "train", "frozen")
SELECT_RULES = ("auto", "best", "not_worse")
CENTRE_INITS = ("auto", "random", "class_mean")

#: Allowed values of each choice key, read at validation / help time (registries can grow).
CHOICES: dict[str, Callable[[], tuple[str, ...]]] = {
    "loss": LOSS_REGISTRY.names,
    "miner": MINER_REGISTRY.names,
    "optimizer": OPTIMIZER_REGISTRY.names,
    "augment": lambda: AUGMENT,
    "align": lambda: ALIGN,
    "select_metric": lambda: SELECT_METRICS,
    "precision": lambda: PRECISIONS,
    "augment_on": lambda: AUGMENT_ON,
    "device": lambda: DEVICES,
    "bn": lambda: BN_POLICIES,
    "select_rule": lambda: SELECT_RULES,
    "centre_init": lambda: CENTRE_INITS,
}

# Snapshots of the registries' names at import, for callers that want a plain tuple.
LOSSES = LOSS_REGISTRY.names()
MARGIN_SOFTMAX_LOSSES = LOSS_REGISTRY.where(classifier=True)
MINERS = MINER_REGISTRY.names()
OPTIMIZERS = OPTIMIZER_REGISTRY.names()


def _opt(default: Any, help: str, **limits: Any) -> Any:  # noqa: A002 - mirrors argparse's name
    """A config field: its default, its ``--help`` text (``{choices}`` is filled from the
    key's registry) and its allowed range as pydantic bounds (``ge``, ``gt``, ``le``, ``lt``)."""
    return Field(default=default, description=help, **limits)


class TrainConfig(BaseModel):
    """All training settings; each field's description is what ``siamface train --help`` shows."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # --- model ---
    backbone: str = _opt("tf_efficientnet_lite0", "any timm model name, e.g. tf_efficientnetv2_b0")
    pretrained: str = _opt("auto", "{choices} | /path/to/weights.(pth|safetensors)")
    embedding_size: int = _opt(512, "output embedding dimension (article: 512)", ge=2, le=8192)
    image_size: int = _opt(112, "square input size in pixels (article: 224)", ge=32, le=1024)
    # --- starting model / distillation ---
    init: str | None = _opt(
        None,
        "start from a whole face model: sface (built in), a checkpoint or a run directory; "
        "sets backbone, embedding_size, image_size and preprocessing; null = from backbone "
        "+ pretrained",
    )
    trainable: str = _opt(
        "all",
        "what trains after freeze_epochs: all | head | N (the head and the backbone's last N "
        "stages)",
    )
    freeze_epochs: int = _opt(
        0, "first epochs with the backbone frozen (only head and loss train)", ge=0, le=1_000_000
    )
    backbone_lr_mult: float = _opt(
        1.0, "lr multiplier for the backbone (fine-tuning: < 1)", gt=0, le=1000
    )
    bn: str = _opt(
        "auto", "{choices}: BatchNorm statistics update in training (auto: frozen with init)"
    )
    keep_close: float = _opt(
        0.0,
        "weight of a term keeping embeddings close to the starting model's (init), "
        "1 - cosine to its cached embedding of each image",
        ge=0,
        le=1000,
    )
    l2sp: float = _opt(
        0.0,
        "weight of L2-SP, sum of squared distances of the trained weights to the starting "
        "model's (init): decay towards the start instead of towards zero",
        ge=0,
    )
    teacher: str | None = _opt(
        None,
        "distil from: sface | dlib | a checkpoint | a .onnx model; comma-separated = an "
        "ensemble; teacher embeddings are computed once and cached",
    )
    unlabeled: str | None = _opt(
        None,
        "folders of face images without identities (comma-separated; any layout): they add "
        "to the distillation terms only (CLI: --unlabeled DIR)",
    )
    unlabeled_per_batch: int = _opt(
        16,
        "unlabeled images added to each batch when unlabeled folders are given",
        ge=1,
        le=65_536,
    )
    distill_embedding: float = _opt(
        1.0, "weight of the embedding distillation term (1 - cosine to the teacher)", ge=0, le=1000
    )
    distill_relational: float = _opt(
        1.0,
        "weight of the relational term (student vs teacher similarity matrix, MSE)",
        ge=0,
        le=1000,
    )
    centre_init: str = _opt(
        "auto",
        "{choices}: ArcFace/CosFace class centres start at each identity's mean embedding under "
        "the starting model (auto: class_mean with init)",
    )
    # --- data ---
    val_identities: float = _opt(
        0.2,
        "held-out identities: fraction (<1) or count (>=1); 0 = no validation",
        ge=0,
        le=10_000_000,
    )
    test_identities: float = _opt(
        0.0,
        "identities held out for the final verdict (never used to choose anything): fraction "
        "(<1) or count (>=1); with init, best.safetensors differs from the start only when "
        "the gain on select_metric is positive at the 95% lower bound on them; 0 = none",
        ge=0,
        le=10_000_000,
    )
    condition: str | None = _opt(
        None,
        "domain condition, e.g. lowres:14-44,jpeg:20-70 or a preset (cctv, masked, infrared): "
        "a share of training images (condition_rate) become degraded copies, and validation and "
        "test people are seen under it (see docs/finetune.md)",
    )
    condition_rate: float = _opt(
        0.5, "share of the training images that are degraded copies (with condition)", gt=0, lt=1
    )
    wise_ft: bool = _opt(
        False,
        "after training, mix the start's and the best epoch's weights (WiSE-FT); the mixing "
        "weight is chosen on the validation identities",
    )
    guard_margin: float = _opt(
        0.01,
        "with a condition, the clean test faces (and the guard people) may be significantly "
        "worse by at most this much (each metric, e.g. 0.01 = 1 point) before the verdict keeps "
        "the start",
        ge=0,
        le=1,
    )
    guard: str | None = _opt(
        None,
        "identity folders from another domain the adapted model must not get significantly "
        "worse on (by more than guard_margin), checked in the final verdict",
    )
    verdict_replicates: int = _opt(
        1000, "bootstrap replicates (over identities) of the final verdict", ge=50, le=100_000
    )
    min_images_per_identity: int = _opt(
        2, "identities with fewer images are excluded", ge=2, le=1_000_000
    )
    augment: str = _opt("default", "{choices}")
    augment_on: str = _opt(
        "auto",
        "{choices}: where augmentation runs (auto: per image in loader workers on CPU, per "
        "batch on the GPU with CUDA)",
    )
    align: str = _opt(
        "auto",
        "{choices}: detect + align faces on the fly (auto = only when the data "
        "folder was written by 'siamface prepare', whose crops are already aligned)",
    )
    cache_gb: float = _opt(
        2.0,
        "decoded pixels kept in RAM up to this many GiB (per machine); above it images are "
        "decoded from disk every epoch",
        ge=0,
        le=4096,
    )
    scan_cache: str = _opt(
        "auto",
        "scan index (size, mtime, decode check, hash per file) reused by later runs: auto "
        "(~/.cache/siamface or $SIAMFACE_CACHE) | none | a folder",
    )
    # --- sampling ---
    batch_size: int = _opt(32, "images per batch (article: 32)", ge=2, le=65_536)
    m_per_class: int = _opt(
        4, "images per identity in a batch (article: sampler_m = 4)", ge=1, le=1024
    )
    # --- loss ---
    loss: str = _opt("triplet", "{choices}")
    margin: float = _opt(
        0.1,
        "triplet margin on cosine similarity (article: 0.1); contrastive negative margin",
        ge=0,
        le=2,
    )
    miner: str = _opt("batch_hard", "{choices}")
    arc_margin: float = _opt(
        28.6, "ArcFace angular margin in degrees (28.6 = 0.5 rad)", ge=0, le=90
    )
    cos_margin: float = _opt(0.35, "CosFace additive cosine margin", ge=0, le=1)
    softmax_scale: float = _opt(30.0, "logit scale for ArcFace / CosFace", gt=0, le=1024)
    head_lr_mult: float = _opt(
        10.0, "lr multiplier for loss parameters (class centres, pair head)", ge=0, le=10_000
    )
    class_sample_rate: float = _opt(
        1.0,
        "ArcFace / CosFace: fraction of class centres scored per step (partial FC; the batch's "
        "own classes always are); centres are sharded across processes",
        gt=0,
        le=1,
    )
    # --- optimisation ---
    optimizer: str = _opt("adamw_cosine", "{choices}")
    lr: float = _opt(1e-4, "learning rate (article: 1e-4)", gt=0, le=10)
    weight_decay: float = _opt(1e-5, "weight decay (article: 1e-5)", ge=0, le=1)
    eps: float = _opt(1e-8, "Adam-family epsilon (article: 1e-8)", ge=0, le=1)
    momentum: float = _opt(0.9, "SGD momentum (sgd_step)", ge=0, le=1)
    t_max: float | None = _opt(
        None, "cosine period in epochs (article: 50); null = whole run", gt=0, le=1_000_000
    )
    eta_min: float = _opt(1e-6, "cosine floor (article: 1e-6)", ge=0, le=10)
    warmup_steps: int = _opt(
        0, "linear warm-up steps (cosine presets, schedule_free)", ge=0, le=100_000_000
    )
    step_size: int = _opt(10, "StepLR period in epochs (sgd_step)", ge=1, le=1_000_000)
    gamma: float = _opt(0.1, "StepLR factor (sgd_step)", gt=0, le=1)
    exp_gamma: float = _opt(0.95, "ExponentialLR per-epoch factor (ranger_exponential)", gt=0, le=1)
    plateau_patience: int = _opt(
        2, "ReduceLROnPlateau patience in epochs (adamw_plateau)", ge=0, le=1_000_000
    )
    plateau_factor: float = _opt(0.5, "ReduceLROnPlateau factor (adamw_plateau)", gt=0, lt=1)
    epochs: int = _opt(
        20, "maximum epochs (article: 100); an epoch sees each image once", ge=1, le=1_000_000
    )
    time_budget_min: float | None = _opt(
        None, "wall-clock budget in minutes; null = none", gt=0, le=10_000_000
    )
    # --- validation / checkpoints ---
    select_metric: str = _opt("auc", "picks best.safetensors: {choices}")
    select_rule: str = _opt(
        "auto",
        "{choices}: not_worse = an epoch becomes best only if no validation metric is worse "
        "than the starting model's (epoch 0); auto: not_worse with init",
    )
    calib_far: float = _opt(
        1e-3, "target false-accept rate of the stored decision threshold", gt=0, lt=1
    )
    save_every_min: float = _opt(
        10.0, "also save resumable state this often within an epoch", gt=0, le=1_000_000
    )
    val_max_images: int = _opt(
        20_000,
        "validate on at most this many images (whole identities, chosen by seed); 0 = all",
        ge=0,
        le=100_000_000,
    )
    # --- machine ---
    seed: int = _opt(0, "random seed (split, sampling, initialisation)", ge=0, le=2**32 - 1)
    num_workers: int = _opt(-1, "data loader workers; -1 = auto", ge=-1, le=64)
    precision: str = _opt(
        "auto",
        "{choices} autocast (auto: bf16 on CUDA GPUs that have it, else fp16 with loss "
        "scaling on CUDA; fp32 on CPU)",
    )
    channels_last: bool = _opt(True, "NHWC memory layout: faster convolutions on CPU and GPU")
    keep_heap: bool = _opt(
        True,
        "CPU (glibc): keep freed memory in the process while training, so each step reuses "
        "its activation buffers instead of faulting fresh pages in (measured ~15 percent faster)",
    )
    device: str = _opt("auto", "{choices}")
    grad_accum: int = _opt(
        1,
        "micro-batches per optimizer step: batch_size images per step in batch_size / "
        "grad_accum pieces (less memory; BatchNorm and mining see the pieces)",
        ge=1,
        le=1024,
    )
    nproc: int = _opt(
        1,
        "data-parallel processes on this machine (launches torchrun; one per GPU); "
        "batch_size stays the global batch",
        ge=1,
        le=256,
    )
    sync_bn: bool = _opt(
        True, "with several processes, BatchNorm statistics over the whole global batch"
    )
    compile: bool = _opt(False, "torch.compile the model (slower first steps; see README)")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @property
    def bn_frozen(self) -> bool:
        """BatchNorm statistics kept fixed: the default when fine-tuning, because a few
        identities per batch give statistics far noisier than the ones the model learned."""
        return self.bn == "frozen" or (self.bn == "auto" and self.init is not None)

    @property
    def not_worse(self) -> bool:
        return self.select_rule == "not_worse" or (
            self.select_rule == "auto" and self.init is not None
        )

    @property
    def class_mean_centres(self) -> bool:
        return self.centre_init == "class_mean" or (
            self.centre_init == "auto" and self.init is not None
        )

    def teachers(self) -> list[str]:
        return [t.strip() for t in (self.teacher or "").split(",") if t.strip()]

    def unlabeled_dirs(self) -> list[str]:
        return [t.strip() for t in (self.unlabeled or "").split(",") if t.strip()]

    # ---------------------------------------------------------------- validation
    @field_validator("*", mode="before")
    @classmethod
    def _normalise(cls, value: Any, info: Any) -> Any:
        """YAML and ``key=value`` give strings, bools and numbers loosely; make them the
        field's type or refuse them, as the previous hand-written parser did."""
        name = info.field_name
        ann = cls.model_fields[name].annotation
        args = get_args(ann)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), ann) if args else ann
        empty = ("null", "~") if base is str else ("null", "none", "~")
        if value is None or (isinstance(value, str) and value.strip().lower() in empty):
            if optional:
                return None
            if name == "pretrained":
                return "none"
            raise ValueError(f"{name} may not be empty")
        if base in (int, float) and isinstance(value, bool):
            raise ValueError(f"{name} must be {base.__name__}, got {value!r}")
        if base is str:
            if name == "pretrained" and isinstance(value, bool):
                return "auto" if value else "none"
            if isinstance(value, bool):  # YAML reads `align: true` as a bool
                return "true" if value else "false"
            if isinstance(value, int | float):
                return str(value)
        return value

    @field_validator(*CHOICES, mode="after")
    @classmethod
    def _one_of(cls, value: str, info: Any) -> str:
        choices = CHOICES[info.field_name]()
        if value not in choices:
            close = difflib.get_close_matches(value, list(choices), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"{info.field_name} must be one of {', '.join(choices)}; got {value!r}{hint}"
            )
        return value

    @field_validator("backbone", mode="after")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        import timm

        if timm.is_model(value) or timm.is_model(value.split(".")[0]):
            return value
        from siamface.model.network import check_backbone_name

        try:
            check_backbone_name(value)
        except SiamfaceError as err:
            raise ValueError(str(err)) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.batch_size % self.m_per_class:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of m_per_class "
                f"({self.m_per_class}) for M-per-class sampling"
            )
        if self.batch_size // self.m_per_class < 2:
            raise ValueError("batch_size / m_per_class must be >= 2: a batch needs two identities")
        if is_classifier(self.loss) and self.miner != "none":
            raise ValueError(
                f"loss={self.loss} is a classification (margin-softmax) loss and takes no miner; "
                "set miner=none"
            )
        if self.batch_size % (self.grad_accum * self.m_per_class):
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of grad_accum "
                f"({self.grad_accum}) x m_per_class ({self.m_per_class})"
            )
        for key in ("val_identities", "test_identities"):
            v = getattr(self, key)
            if v >= 1 and not float(v).is_integer():
                raise ValueError(f"{key} >= 1 is a count and must be a whole number")
        if self.condition:
            from siamface.data.conditions import parse_condition

            try:
                parse_condition(self.condition)
            except SiamfaceError as err:
                raise ValueError(str(err)) from None
        if self.guard and not Path(self.guard).expanduser().is_dir():
            raise ValueError(f"guard {self.guard!r} is not a folder of identity folders")
        if self.l2sp > 0 and not self.init:
            raise ValueError("l2sp pulls towards the starting weights: set init=... too")
        if self.unlabeled and not self.teacher:
            raise ValueError(
                "unlabeled images only train through distillation: set teacher=... too"
            )
        t = self.trainable
        if t not in ("all", "head") and not (t.isdigit() and int(t) >= 1):
            raise ValueError(
                f"trainable must be all, head or a positive number of backbone stages; got {t!r}"
            )
        if self.pretrained not in named_sources():
            p = Path(self.pretrained).expanduser()
            if not p.is_file():
                raise ValueError(
                    f"pretrained must be {', '.join(named_sources())} or an existing weight "
                    f"file; file not found: {p}"
                )
        return self


# ------------------------------------------------------------------------ errors
_TYPE_ERRORS = {
    "int_parsing": "int",
    "int_from_float": "int",
    "int_type": "int",
    "float_parsing": "float",
    "float_type": "float",
    "bool_parsing": "bool",
    "bool_type": "bool",
    "string_type": "str",
}
_BOUND_ERRORS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def allowed_range(name: str) -> str | None:
    """The interval a numeric key accepts, e.g. ``[32, 1024]`` or ``(0, 10]``."""
    lo = hi = None
    lo_open = hi_open = False
    for m in TrainConfig.model_fields[name].metadata:
        for attr, is_lo, is_open in (("ge", 1, 0), ("gt", 1, 1), ("le", 0, 0), ("lt", 0, 1)):
            v = getattr(m, attr, None)
            if v is not None:
                if is_lo:
                    lo, lo_open = v, bool(is_open)
                else:
                    hi, hi_open = v, bool(is_open)
    if lo is None and hi is None:
        return None
    left = "(" if lo_open or lo is None else "["
    right = ")" if hi_open or hi is None else "]"
    return f"{left}{_num(lo, '-inf')}, {_num(hi, 'inf')}{right}"


def _num(v: float | None, missing: str) -> str:
    if v is None:
        return missing
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _message(err: dict[str, Any]) -> str:
    """One pydantic error -> the one-line message a user sees."""
    loc = err.get("loc") or ()
    name = str(loc[0]) if loc else ""
    kind, value = err["type"], err.get("input")
    if kind in _TYPE_ERRORS:
        return f"{name} must be {_TYPE_ERRORS[kind]}, got {value!r}"
    if kind in _BOUND_ERRORS:
        attr, op = _BOUND_ERRORS[kind]
        bound, rng = _num(err["ctx"][attr], ""), allowed_range(name)
        return f"{name} must be {op} {bound} (allowed range {rng}), got {value!r}"
    if kind == "finite_number":
        return f"{name} must be a finite number (allowed range {allowed_range(name)}), got {value}"
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    return msg if not name or name in msg else f"{name}: {msg}"


def validate(values: dict[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig` from loose values or raise one readable ConfigError."""
    names = list(TrainConfig.model_fields)
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}")
    try:
        return TrainConfig(**values)
    except ValidationError as err:
        raise ConfigError("; ".join(_message(e) for e in err.errors())) from None


# ------------------------------------------------------------------------ presets
def preset_names() -> tuple[str, ...]:
    """Configuration presets shipped in the package (``siamface/configs/*.yaml``)."""
    folder = resources.files("siamface") / "configs"
    if not folder.is_dir():
        return ()
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")))


def preset_summary(name: str) -> str:
    """A preset's first comment line, for ``--help``."""
    text = (resources.files("siamface") / "configs" / f"{name}.yaml").read_text()
    first = text.splitlines()[0] if text else ""
    return first.lstrip("# ").strip()


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one mapping (YAML's own loader keeps the last one silently)."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses duplicate keys: ``lr: 0.1`` ... ``lr: 0.001`` further
    down is almost always an edit gone wrong, and silently training with the second value
    wastes a run."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:  # unhashable key: the base class reports it
                break
            if first != line:
                raise DuplicateKeyError(
                    f"key {key!r} is given twice (lines {first} and {line}); keep one"
                )
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping
)


def _read_yaml(spec: str | Path) -> tuple[dict[str, Any], str]:
    """(mapping, where it came from) for a YAML path or a preset name."""
    p = Path(spec)
    if not p.is_file() and str(spec) in preset_names():
        text = (resources.files("siamface") / "configs" / f"{spec}.yaml").read_text()
        where = f"preset {spec!r}"
    elif not p.is_file():
        presets = ", ".join(preset_names())
        raise ConfigError(f"config file not found: {p} (presets: {presets})")
    else:
        text, where = p.read_text(), f"config file {p}"
    try:
        loaded = yaml.load(text, Loader=_StrictLoader) or {}  # noqa: S506 - a SafeLoader
    except DuplicateKeyError as err:
        raise ConfigError(f"{where}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {err}") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"{where} must be a mapping of key: value")
    return loaded, where


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``key=value`` strings -> a mapping; values are read as YAML scalars."""
    values: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            values[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            values[key.strip()] = raw
    return values


def make_config(
    yaml_path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults <- ``base`` (e.g. a resumed run) <- YAML file or preset <- ``key=value``."""
    values: dict[str, Any] = dict(base or {})
    if yaml_path is not None:
        values.update(_read_yaml(yaml_path)[0])
    values.update(parse_overrides(overrides))
    return validate(values)


# ------------------------------------------------------------------------ help
#: Section headings in --help and the default YAML, keyed by each section's first field.
SECTIONS = {
    "backbone": "MODEL",
    "init": "STARTING MODEL / FINE-TUNING / DISTILLATION",
    "val_identities": "DATA",
    "batch_size": "SAMPLING",
    "loss": "LOSS",
    "optimizer": "OPTIMISATION",
    "select_metric": "VALIDATION / CHECKPOINTS",
    "seed": "MACHINE",
}


def field_help(name: str) -> str:
    """A key's help text with its choices (from the registry) or its allowed range."""
    info = TrainConfig.model_fields[name]
    text = info.description or ""
    if "{choices}" in text:
        choices = named_sources() if name == "pretrained" else CHOICES[name]()
        text = text.replace("{choices}", " | ".join(choices))
    rng = allowed_range(name)
    return f"{text}; range {rng}" if rng else text


def config_help() -> str:
    """Every key with its default and help text, grouped by section, for ``--help``."""
    lines: list[str] = []
    for name, info in TrainConfig.model_fields.items():
        if name in SECTIONS:
            lines += ["", SECTIONS[name]]
        lines.append(f"  {name} = {_yaml_value(info.default)}  {field_help(name)}")
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
