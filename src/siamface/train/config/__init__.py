"""Training configuration: nested sections, each registry entry with its own parameters.

``model``, ``data``, ``loss``, ``optim``, ``run``, ``machine``, ``finetune`` and ``distill``
(:mod:`.schema`, one module per section); a loss declares its margin and scale, an optimizer
preset its momentum and schedule (:mod:`.chosen`), so ``loss.margin=0.3`` means the margin of
the loss that is chosen. Values are layered and validated in :mod:`.load`, the old flat keys
(``lr=...``) are translated with one deprecation line each in :mod:`.flat`, and ``auto``
choices are resolved once per run in :mod:`.resolve`. ``--help`` and YAML rendering live in
:mod:`siamface.cli.train_config`. Kept free of torch imports: ``siamface --help`` reads this.
"""

from siamface.train.config.load import make_config, parse_overrides, preset_names, preset_summary
from siamface.train.config.messages import validate
from siamface.train.config.schema import SECTIONS, TrainConfig
from siamface.train.losses import LOSS_REGISTRY, MINER_REGISTRY
from siamface.train.optim import OPTIMIZER_REGISTRY

# Snapshots of the registries' names at import, for callers that want a plain tuple.
LOSSES = LOSS_REGISTRY.names()
MARGIN_SOFTMAX_LOSSES = LOSS_REGISTRY.where(classifier=True)
MINERS = MINER_REGISTRY.names()
OPTIMIZERS = OPTIMIZER_REGISTRY.names()

__all__ = [
    "LOSSES",
    "MARGIN_SOFTMAX_LOSSES",
    "MINERS",
    "OPTIMIZERS",
    "SECTIONS",
    "TrainConfig",
    "make_config",
    "parse_overrides",
    "preset_names",
    "preset_summary",
    "validate",
]
