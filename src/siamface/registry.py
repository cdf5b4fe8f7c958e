"""Named registries: one place that lists the choices of a family (losses, miners, ...).

A registry maps a name to a builder plus a one-line help text and free-form facts about the
entry (``classifier=True`` for a margin-softmax loss, say). Configuration validation,
``--help`` choices and the builders all read the same registry, so adding a loss is one
decorated function and nothing else: no tuple of names to keep in step elsewhere (timm's
``register_model`` / ``create_model`` pattern).

Kept free of heavy imports: ``siamface --help`` lists the registered names, so the modules that
fill registries import torch inside their builders, not at module level.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from siamface.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[F]):
    """One registered choice."""

    name: str
    builder: F
    help: str = ""
    facts: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[F]):
    """An ordered name -> builder table for one family of interchangeable parts."""

    def __init__(self, family: str, config_key: str | None = None) -> None:
        self.family = family  # e.g. "loss", used in messages
        self.config_key = config_key or family  # the config key that picks an entry
        self._entries: dict[str, Entry[F]] = {}

    def register(self, name: str, help: str = "", **facts: Any) -> Callable[[F], F]:  # noqa: A002
        """Decorator: ``@LOSSES.register("triplet", help="...")`` above a builder function."""

        def add(builder: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.family} {name!r} is already registered")
            self._entries[name] = Entry(name, builder, help, dict(facts))
            return builder

        return add

    def unregister(self, name: str) -> None:
        """Remove an entry (plugins and tests that register temporary choices)."""
        self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        """Registered names in registration order (the order ``--help`` shows)."""
        return tuple(self._entries)

    def where(self, **facts: Any) -> tuple[str, ...]:
        """Names whose facts match, e.g. ``LOSSES.where(classifier=True)``."""
        return tuple(
            n
            for n, e in self._entries.items()
            if all(e.facts.get(k) == v for k, v in facts.items())
        )

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[F]]:
        return iter(self._entries.values())

    def get(self, name: str) -> Entry[F]:
        """The entry called ``name``; unknown names fail with the choices and a close match."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        close = difflib.get_close_matches(str(name), list(self._entries), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{self.config_key} must be one of {', '.join(self._entries)}; got {name!r}{hint}"

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the builder registered as ``name``."""
        return self.get(name).builder(*args, **kwargs)

    def choices_help(self) -> str:
        """``a | b | c`` for help texts."""
        return " | ".join(self._entries)
