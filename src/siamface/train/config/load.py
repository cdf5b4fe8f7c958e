"""Where settings come from: defaults <- a resumed run's saved config <- a YAML file or a
preset shipped in the package (``--config article``) <- ``key=value`` overrides.

Everything is validated before any work, so a typo or an absurd value (``image_size=100000``)
costs a second and names the allowed range, not an hour or an out-of-memory kill.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from siamface.errors import ConfigError
from siamface.train.config.merge import merge, settings_of
from siamface.train.config.messages import validate
from siamface.train.config.schema import TrainConfig


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


def read_yaml(spec: str | Path) -> tuple[dict[str, Any], str]:
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
    """``key=value`` strings -> a mapping; values are read as YAML scalars (or flow lists:
    ``distill.teacher=[sface,dlib]``)."""
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
    """Defaults <- ``base`` (a resumed run) <- YAML file or preset <- ``key=value``."""
    layers = [settings_of(base or {}, saved=True)]
    if yaml_path is not None:
        layers.append(settings_of(read_yaml(yaml_path)[0]))
    layers.append(settings_of(parse_overrides(overrides)))
    return validate(merge(layers))
