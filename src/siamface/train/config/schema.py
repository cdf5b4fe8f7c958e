"""The whole training configuration: one model per section, read by every part of training.

Sections follow the order a reader meets them in a run: ``model``, ``data``, ``loss``,
``optim``, ``run``, ``machine``, then the optional ``finetune`` and ``distill``. The loss
section is the attribute ``objective`` in Python (its key is ``loss`` in YAML and on the
command line) because ``cfg.loss`` still answers the old flat question "which loss" for one
release: every old flat key is a read-only attribute generated from
:data:`~siamface.train.config.flat.FLAT_KEYS`, so code written against the flat config works.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from siamface.train.config.chosen import ChosenSection
from siamface.train.config.data import DataSection
from siamface.train.config.distill import DistillSection
from siamface.train.config.finetune import FinetuneSection
from siamface.train.config.flat import MOVED, Moved
from siamface.train.config.loss import LossSection
from siamface.train.config.machine import MachineSection
from siamface.train.config.model import ModelSection
from siamface.train.config.optim import OptimSection
from siamface.train.config.rules import check_across_sections
from siamface.train.config.run import RunSection
from siamface.train.params import Params

#: Section key (YAML, command line) -> its schema, in the order help and YAML show them.
SECTIONS: dict[str, type[Params]] = {
    "model": ModelSection,
    "data": DataSection,
    "loss": LossSection,
    "optim": OptimSection,
    "run": RunSection,
    "machine": MachineSection,
    "finetune": FinetuneSection,
    "distill": DistillSection,
}
#: Section keys whose Python attribute differs (see the module docstring).
ATTRIBUTE = {"loss": "objective"}


class TrainConfig(BaseModel):
    """All training settings, by section; ``siamface train --help`` lists them."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    objective: LossSection = Field(default_factory=LossSection, alias="loss")
    optim: OptimSection = Field(default_factory=OptimSection)
    run: RunSection = Field(default_factory=RunSection)
    machine: MachineSection = Field(default_factory=MachineSection)
    finetune: FinetuneSection = Field(default_factory=FinetuneSection)
    distill: DistillSection = Field(default_factory=DistillSection)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        check_across_sections(self)
        return self

    def section(self, key: str) -> Params:
        """The section written ``key`` in YAML (``loss`` -> ``self.objective``)."""
        return getattr(self, ATTRIBUTE.get(key, key))

    def get(self, path: str) -> Any:
        """The value at a nested key such as ``optim.lr``."""
        key, _, name = path.partition(".")
        return getattr(self.section(key), name)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain values, keyed as in YAML (what a run's config.yaml holds)."""
        return self.model_dump(by_alias=True)

    def was_set(self, path: str) -> bool:
        """Was nested key ``path`` given (by a file, an override or a base), not defaulted?"""
        key, _, name = path.partition(".")
        attr = ATTRIBUTE.get(key, key)
        return attr in self.model_fields_set and name in self.section(key).model_fields_set

    def with_values(self, values: dict[str, Any]) -> TrainConfig:
        """A validated copy with nested keys (``{"model.backbone": ...}``) replaced; what was
        set stays set, so :meth:`was_set` still tells given from defaulted."""
        data = self.model_dump(by_alias=True, exclude_unset=True)
        for path, value in values.items():
            key, _, name = path.partition(".")
            data.setdefault(key, {})[name] = value
        return TrainConfig.model_validate(data)

    # ---- derived choices: what an ``auto`` means when it was not resolved yet
    @property
    def bn_frozen(self) -> bool:
        """BatchNorm statistics kept fixed: the default when fine-tuning, because a few
        identities per batch give statistics far noisier than the ones the model learned."""
        bn = self.finetune.bn
        return bn == "frozen" or (bn == "auto" and self.finetune.init is not None)

    @property
    def not_worse(self) -> bool:
        rule = self.run.select_rule
        return rule == "not_worse" or (rule == "auto" and self.finetune.init is not None)

    @property
    def class_mean_centres(self) -> bool:
        ci = self.finetune.centre_init
        return ci == "class_mean" or (ci == "auto" and self.finetune.init is not None)

    def teachers(self) -> list[str]:
        return list(self.distill.teacher)

    def unlabeled_dirs(self) -> list[str]:
        return list(self.distill.unlabeled)


# ------------------------------------------------------------ old flat names, read-only
def applies(moved: Moved, name: str) -> bool:
    """Does flat key ``moved`` mean something while entry ``name`` of its section is chosen?"""
    section = SECTIONS[moved.section]
    if moved.key in section.model_fields or not issubclass(section, ChosenSection):
        return True
    if moved.only_for is not None and name not in moved.only_for:
        return False
    return moved.key in section.params_of(name).model_fields


def _default(moved: Moved) -> Any:
    """The value an old reader saw for a key its entry does not take: the default of the
    first entry that declares it (the flat config always had one value for every key)."""
    section = SECTIONS[moved.section]
    assert issubclass(section, ChosenSection)
    for name in moved.only_for or section.registry.names():
        fields = section.params_of(name).model_fields
        if moved.key in fields:
            return fields[moved.key].default
    return None


#: Old flat keys whose old type differs (comma-separated strings, None when empty).
_READ_AS = {"teacher": lambda v: ",".join(v) or None, "unlabeled": lambda v: ",".join(v) or None}


def _flat_attribute(moved: Moved) -> property:
    def read(self: TrainConfig) -> Any:
        section = self.section(moved.section)
        if moved.key in type(section).model_fields or applies(moved, section.name):
            value = getattr(section, moved.key)
        else:
            value = _default(moved)
        return _READ_AS.get(moved.old, lambda v: v)(value)

    return property(read, doc=f"Deprecated flat name of {moved.hint()} (read-only).")


for _old, _moved in MOVED.items():
    setattr(TrainConfig, _old, _flat_attribute(_moved))
