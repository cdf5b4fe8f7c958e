"""Layers of settings (saved run, YAML file or preset, ``key=value``) -> one nested mapping.

A layer may spell a key three ways: nested (``loss: {margin: 0.3}``), dotted
(``loss.margin=0.3``) or with an old flat key (``margin=0.3``, one deprecation line). Later
layers win. Choosing another entry (``loss.name=arcface`` over a preset's ``cosface``) drops
the parameters earlier layers gave the old entry: they were that entry's settings (a cosine
margin is no angular margin), and the new entry starts from its own defaults.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from siamface.errors import ConfigError
from siamface.train.config.chosen import ChosenSection
from siamface.train.config.flat import MOVED, Moved, deprecated, saved_config_read
from siamface.train.config.schema import SECTIONS, applies


@dataclass(frozen=True)
class Setting:
    """One value for one nested key, as a layer gave it."""

    path: str  # "optim.lr"
    value: Any
    moved: Moved | None = None  # the old flat key it was written with, if any


def known_keys() -> list[str]:
    """Every key a user may write (for "did you mean"): sections, their fields, flat keys."""
    keys = list(SECTIONS) + list(MOVED)
    for name, section in SECTIONS.items():
        keys += [f"{name}.{f}" for f in section.model_fields]
    return keys


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, known_keys(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def _nested(path: str, value: Any) -> Setting:
    section, _, name = path.partition(".")
    schema = SECTIONS.get(section)
    if schema is None or not name or "." in name:
        raise _unknown(path)
    if name not in schema.model_fields and not issubclass(schema, ChosenSection):
        raise _unknown(path)  # a chosen entry's own parameters are checked by the entry
    return Setting(path, value)


def settings_of(values: dict[str, Any], saved: bool = False) -> list[Setting]:
    """A layer's mapping as settings; old flat keys are translated and reported (once per key,
    or once in all for a resumed run's ``saved`` config)."""
    out: list[Setting] = []
    for raw_key, value in values.items():
        key = str(raw_key)
        if key in SECTIONS and isinstance(value, dict):
            out += [_nested(f"{key}.{name}", v) for name, v in value.items()]
        elif "." in key:
            out.append(_nested(key, value))
        elif key in MOVED:
            saved_config_read() if saved else deprecated(key)
            out.append(Setting(MOVED[key].path, value, MOVED[key]))
        elif key in SECTIONS:
            raise ConfigError(f"{key} must be a mapping of key: value, got {value!r}")
        else:
            raise _unknown(key)
    return out


def merge(layers: list[list[Setting]]) -> dict[str, dict[str, Any]]:
    """Later layers win; see the module docstring for entry changes and flat keys."""
    chosen = {
        k: s.model_fields["name"].default
        for k, s in SECTIONS.items()
        if issubclass(s, ChosenSection)
    }
    state: dict[str, Any] = {}
    for layer in layers:
        for s in layer:
            section, _, name = s.path.partition(".")
            if name == "name" and section in chosen and s.value != chosen[section]:
                chosen[section] = s.value
                fields = SECTIONS[section].model_fields
                for path in [p for p in state if p.startswith(f"{section}.")]:
                    if path.partition(".")[2] not in fields:
                        del state[path]
        for s in layer:
            if s.moved is not None and not _applies(s.moved, chosen.get(s.moved.section)):
                continue  # an old key that meant nothing for this entry was ignored then too
            state[s.path] = s.value
    nested: dict[str, dict[str, Any]] = {}
    for path, value in state.items():
        section, _, name = path.partition(".")
        nested.setdefault(section, {})[name] = value
    return nested


def _applies(moved: Moved, name: Any) -> bool:
    schema = SECTIONS[moved.section]
    if not issubclass(schema, ChosenSection) or name not in schema.registry:
        return True  # not an entry's parameter, or a bad name that validation reports
    return applies(moved, name)
