"""Declared parameters: the pydantic building blocks of the training config and of the
parameters each registry entry declares for itself.

A loss owns its margin and scale, an optimizer preset its momentum and schedule: each
registered builder names a :class:`Params` model (``params=`` fact of its registry entry), and
the configuration section that picks the entry (``loss``, ``optim``) validates exactly those
keys. Values arrive loosely (YAML reads ``align: true`` as a bool, ``key=value`` is parsed as a
YAML scalar), so every Params model turns them into its fields' types or refuses them, the way
the old hand-written parser did. Kept free of torch: ``siamface --help`` renders these fields.
"""

from __future__ import annotations

from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Keys whose empty value means a named choice rather than "missing".
EMPTY_MEANS: dict[str, str] = {"pretrained": "none"}


def param(default: Any, help: str, **limits: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A declared setting: its default, its ``--help`` text and its allowed range as pydantic
    bounds (``ge``, ``gt``, ``le``, ``lt``), so a bad value is refused with the range before any
    work instead of failing an hour in."""
    return Field(default=default, description=help, **limits)


def base_type(annotation: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed); a ``Literal`` counts as ``str``."""
    if get_origin(annotation) is Literal:
        return str, False
    if get_origin(annotation) not in (Union, UnionType):
        return annotation, False
    args = get_args(annotation)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), annotation) if args else annotation
    if get_origin(base) is Literal:
        return str, optional
    return base, optional


def literal_choices(annotation: Any) -> tuple[str, ...] | None:
    """The allowed values of a ``Literal[...]`` field (or ``Literal | None``), else None."""
    if get_origin(annotation) is Literal:
        return tuple(get_args(annotation))
    for arg in get_args(annotation):
        if get_origin(arg) is Literal:
            return tuple(get_args(arg))
    return None


class Params(BaseModel):
    """Settings of one part (a config section, or a registry entry's own parameters).

    Frozen, so a value read at build time is the value recorded in the run; unknown keys are
    refused, so a misspelt parameter never silently falls back to its default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _normalise(cls, value: Any, info: Any) -> Any:
        name = info.field_name
        base, optional = base_type(cls.model_fields[name].annotation)
        if get_origin(base) is list:
            return _as_list(value)
        empty = ("null", "~") if base is str else ("null", "none", "~")
        if value is None or (isinstance(value, str) and value.strip().lower() in empty):
            if optional:
                return None
            if name in EMPTY_MEANS:
                return EMPTY_MEANS[name]
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


class NoParams(Params):
    """An entry with nothing to set."""


def _as_list(value: Any) -> list[Any]:
    """A real list; a comma-separated string (the old spelling, and handy on the command
    line: ``distill.teacher=sface,dlib``) is split; null or empty is an empty list."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "~")):
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [str(value)]
