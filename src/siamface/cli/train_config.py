"""How ``siamface train`` shows its configuration: ``--help`` text and ``--print-config`` YAML.

Rendering lives here, not in the config model: the model says what a key means and allows
(description, range, ``Literal`` choices, registry entries); this module decides how a person
reads it. A section that picks a registry entry (``loss``, ``optim``) lists each entry's own
settings under it, so ``loss.margin`` shows its meaning and range for every loss.
"""

from __future__ import annotations

from typing import Any

from pydantic.fields import FieldInfo

from siamface.train.config import SECTIONS, TrainConfig
from siamface.train.config.chosen import ChosenSection
from siamface.train.config.messages import allowed_range
from siamface.train.losses import MINER_REGISTRY
from siamface.train.params import Params, literal_choices
from siamface.train.weights import named_sources

#: Heading of each section in --help and in the default YAML.
HEADINGS = {
    "model": "MODEL",
    "data": "DATA AND SAMPLING",
    "loss": "LOSS (loss.name picks it; each loss has its own settings)",
    "optim": "OPTIMISATION (optim.name picks the optimizer + schedule; each has its own settings)",
    "run": "RUN LENGTH, MODEL SELECTION, CHECKPOINTS",
    "machine": "MACHINE",
    "finetune": "STARTING MODEL / FINE-TUNING",
    "distill": "DISTILLATION",
}

DEPRECATION_NOTE = (
    "The flat keys of earlier releases (lr=..., margin=..., loss=arcface) still work for one "
    "release;\neach prints one line naming its new key (lr -> optim.lr)."
)


def _choices(path: str, info: FieldInfo) -> tuple[str, ...]:
    if path == "model.pretrained":
        return named_sources()
    if path == "loss.miner":
        return MINER_REGISTRY.names()
    section = SECTIONS[path.split(".")[0]]
    if path.endswith(".name") and issubclass(section, ChosenSection):
        return section.registry.names()
    return literal_choices(info.annotation) or ()


def field_help(path: str, info: FieldInfo | None = None) -> str:
    """A key's help text with its choices (from its registry or ``Literal``) or its range."""
    if info is None:
        key, _, name = path.partition(".")
        info = SECTIONS[key].model_fields[name]
    text = info.description or ""
    if "{choices}" in text:
        text = text.replace("{choices}", " | ".join(_choices(path, info)))
    rng = allowed_range(info)
    return f"{text}; range {rng}" if rng else text


def yaml_value(v: Any) -> str:
    """A default as YAML writes it (and reads it back as the same value)."""
    if isinstance(v, list):
        return "[" + ", ".join(yaml_value(x) for x in v) + "]"
    if isinstance(v, float) and "e" in repr(v) and "." not in repr(v).split("e")[0]:
        return repr(v).replace("e", ".0e")  # YAML 1.1 reads 1e-05 as a string, 1.0e-05 not
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _entry_params(section: type[ChosenSection]) -> list[tuple[str, str, FieldInfo]]:
    """(entry, parameter, declaration) for every entry of a chosen section."""
    out = []
    for name in section.registry.names():
        params: type[Params] = section.params_of(name)
        out += [(name, p, info) for p, info in params.model_fields.items()]
    return out


def config_help() -> str:
    """Every key with its default and help text, by section, for ``--help``."""
    lines: list[str] = []
    for key, section in SECTIONS.items():
        lines += ["", HEADINGS[key]]
        for name, info in section.model_fields.items():
            path = f"{key}.{name}"
            lines.append(f"  {path} = {yaml_value(info.default)}  {field_help(path, info)}")
        if issubclass(section, ChosenSection):
            # One line per setting and meaning, with the entries that share it.
            shared: dict[tuple[str, str], list[str]] = {}
            for entry, name, info in _entry_params(section):
                path = f"{key}.{name}"
                line = f"{path} = {yaml_value(info.default)}  {{}}{field_help(path, info)}"
                shared.setdefault((name, line), []).append(entry)
            for (_, line), entries in sorted(shared.items(), key=lambda kv: kv[0][0]):
                lines.append("  " + line.format(f"[{', '.join(entries)}] "))
    return "\n".join([*lines, "", DEPRECATION_NOTE])


def default_yaml() -> str:
    """A commented YAML file with every key at its default (the default entry's settings for
    ``loss`` and ``optim``; other entries' settings are listed as comments)."""
    defaults = TrainConfig().to_dict()
    out = ["# siamface train configuration: every key at its default (siamface train --help)."]
    for key, section in SECTIONS.items():
        out += ["", f"# {HEADINGS[key]}", f"{key}:"]
        for name, value in defaults[key].items():
            info = section.model_fields.get(name)
            if info is None:  # the chosen entry's own setting
                assert issubclass(section, ChosenSection)
                info = section.params_of(defaults[key]["name"]).model_fields[name]
            out.append(f"  {name}: {yaml_value(value)}  # {field_help(f'{key}.{name}', info)}")
        if issubclass(section, ChosenSection):
            others = {}
            for entry, name, info in _entry_params(section):
                if entry != defaults[key]["name"]:
                    others.setdefault(entry, []).append(f"{name}={yaml_value(info.default)}")
            for entry, params in others.items():
                out.append(f"  # with name: {entry}: {', '.join(params) or 'no settings'}")
    return "\n".join(out) + "\n"
