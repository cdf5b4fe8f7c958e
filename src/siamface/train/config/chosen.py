"""A section that picks one registry entry by name and takes that entry's own parameters.

``loss: {name: arcface, margin: 28.6}``: the keys besides the section's own fields are
validated by the :class:`~siamface.train.params.Params` model the chosen entry declares
(``params=`` when it was registered), so ``loss.margin`` is the ArcFace margin in degrees
under ArcFace and the cosine margin under CosFace, and a key the entry does not take is
refused instead of ignored. A new entry brings its parameters with it; nothing here changes.
"""

from __future__ import annotations

import difflib
from typing import Any, ClassVar

from pydantic import ConfigDict, field_validator, model_validator

from siamface.registry import Registry
from siamface.train.params import NoParams, Params


def one_of(key: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is a choice, else the error naming the choices and a close match."""
    if value in choices:
        return value
    close = difflib.get_close_matches(value, list(choices), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"{key} must be one of {', '.join(choices)}; got {value!r}{hint}")


class ChosenSection(Params):
    """Fields common to every entry, plus the chosen entry's parameters (held as extras)."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    #: The registry the ``name`` field chooses from (set by each subclass).
    registry: ClassVar[Registry]
    #: The key users write for this section (``loss``, ``optim``), for messages.
    key: ClassVar[str]

    name: str

    @classmethod
    def params_of(cls, name: str) -> type[Params]:
        """The settings entry ``name`` declares (none if registered without ``params=``)."""
        return cls.registry.get(name).facts.get("params", NoParams)

    @model_validator(mode="before")
    @classmethod
    def _entry_params(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        name = data.get("name", cls.model_fields["name"].default)
        own = {k: data.pop(k) for k in list(data) if k not in cls.model_fields}
        if not isinstance(name, str) or name not in cls.registry:
            return data  # the name check below reports it, with the choices
        params = cls.params_of(name)
        unknown = [k for k in own if k not in params.model_fields]
        if unknown:
            raise ValueError(cls.unknown_param_message(name, unknown[0]))
        return data | dict(params.model_validate(own))

    @classmethod
    def unknown_param_message(cls, name: str, key: str) -> str:
        own = list(cls.params_of(name).model_fields)
        close = difflib.get_close_matches(key, list(cls.model_fields) + own, n=1)
        hint = f" (did you mean '{cls.key}.{close[0]}'?)" if close else ""
        has = f"its own settings: {', '.join(own)}" if own else "it has no settings of its own"
        return f"'{cls.key}.{key}' is not a setting of {cls.key} {name!r}{hint}; {has}"

    @field_validator("name", mode="after")
    @classmethod
    def _registered(cls, value: str) -> str:
        return one_of(f"{cls.key}.name", value, cls.registry.names())

    def params(self) -> dict[str, Any]:
        """The chosen entry's own settings (what ``--print-config`` lists under the name)."""
        return dict(self.__pydantic_extra__ or {})
