"""Validation that answers in one line: pydantic's errors as the sentence a user acts on.

``model.image_size must be <= 1024 (allowed range [32, 1024]), got 100000`` instead of a
pydantic error block: the key as it is written, the rule, the allowed range, the value given.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from siamface.errors import ConfigError
from siamface.train.config.chosen import ChosenSection
from siamface.train.config.schema import SECTIONS, TrainConfig

_TYPE_ERRORS = {
    "int_parsing": "int",
    "int_from_float": "int",
    "int_type": "int",
    "float_parsing": "float",
    "float_type": "float",
    "bool_parsing": "bool",
    "bool_type": "bool",
    "string_type": "str",
    "list_type": "a list",
    "model_type": "a mapping of key: value",
    "dict_type": "a mapping of key: value",
}
_BOUND_ERRORS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def field_info(path: str, values: dict[str, Any] | None = None) -> FieldInfo | None:
    """The declaration of nested key ``path``; an entry's parameter is looked up in the entry
    chosen by ``values`` (or the section's default entry)."""
    key, _, name = path.partition(".")
    section = SECTIONS.get(key)
    if section is None:
        return None
    if name in section.model_fields:
        return section.model_fields[name]
    if issubclass(section, ChosenSection):
        chosen = ((values or {}).get(key) or {}).get("name", section.model_fields["name"].default)
        try:
            return section.params_of(chosen).model_fields.get(name)
        except ConfigError:
            return None
    return None


def allowed_range(info: FieldInfo | None) -> str | None:
    """The interval a numeric setting accepts, e.g. ``[32, 1024]`` or ``(0, 10]``."""
    lo = hi = None
    lo_open = hi_open = False
    for m in info.metadata if info is not None else ():
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


def message(err: dict[str, Any], values: dict[str, Any]) -> str:
    """One pydantic error -> the one-line message a user sees."""
    loc = [str(part) for part in err.get("loc") or ()]
    path = ".".join(loc)
    kind, value = err["type"], err.get("input")
    if kind in _TYPE_ERRORS:
        return f"{path} must be {_TYPE_ERRORS[kind]}, got {value!r}"
    if kind in _BOUND_ERRORS:
        attr, op = _BOUND_ERRORS[kind]
        bound, rng = _num(err["ctx"][attr], ""), allowed_range(field_info(path, values))
        return f"{path} must be {op} {bound} (allowed range {rng}), got {value!r}"
    if kind == "finite_number":
        rng = allowed_range(field_info(path, values))
        return f"{path} must be a finite number (allowed range {rng}), got {value}"
    if kind == "literal_error":
        expected = str(err.get("ctx", {}).get("expected", "")).replace(" or ", ", ")
        return f"{path} must be one of {expected.replace(chr(39), '')}; got {value!r}"
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    if len(loc) > 1 and msg.startswith(f"{loc[-1]} "):
        return path + msg[len(loc[-1]) :]  # "trainable must be ..." -> "finetune.trainable ..."
    return msg if not path or path in msg or loc[0] in msg.split()[0] else f"{path}: {msg}"


def validate(values: dict[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig` from nested loose values, or raise one ConfigError."""
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as err:
        raise ConfigError("; ".join(message(e, values) for e in err.errors())) from None
