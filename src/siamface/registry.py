"""Named registries: one place that lists the choices of a family (losses, miners, ...).

A registry maps a name to a builder plus a one-line help text and free-form facts about the
entry (``classifier=True`` for a margin-softmax loss, say). Configuration validation,
``--help`` choices and the builders all read the same registry, so adding a loss is one
decorated function and nothing else: no tuple of names to keep in step elsewhere (timm's
``register_model`` / ``create_model`` pattern).

Kept free of heavy imports: ``siamface --help`` lists the registered names, so the modules that
fill registries import torch inside their builders, not at module level. A *lazy* entry
(:meth:`Registry.register_lazy`) names its builder as ``"module:attribute"`` and imports it only
when the entry is chosen: an optional dependency (pymilvus, onnxruntime, dlib, hnswlib) stays
optional, and listing the choices imports nothing.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from siamface.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[F]):
    """One registered choice: its builder, or where to import it from (``"module:attr"``)."""

    name: str
    target: F | str
    help: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def lazy(self) -> bool:
        """True when the builder is named, not held (imported on first :attr:`builder`)."""
        return isinstance(self.target, str)

    @property
    def builder(self) -> F:
        """The builder, importing its module first for a lazy entry (an ImportError of a
        missing optional dependency reaches the caller, which knows the install hint)."""
        if not isinstance(self.target, str):
            return self.target
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


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

    def register_lazy(self, name: str, target: str, help: str = "", **facts: Any) -> None:  # noqa: A002
        """Add an entry whose builder is ``target`` (``"package.module:attribute"``), imported
        only when the entry is built: optional dependencies stay optional and listing the
        names (``--help``) stays fast."""
        if ":" not in target:
            raise ValueError(f"a lazy {self.family} is 'module:attribute', got {target!r}")
        if name in self._entries:
            raise ValueError(f"{self.family} {name!r} is already registered")
        self._entries[name] = Entry(name, target, help, dict(facts))

    @contextlib.contextmanager
    def scoped(self) -> Iterator[Registry[F]]:
        """Changes made inside the block (registered, replaced or removed entries) are undone
        on leaving it: tests and plugins that try a temporary choice."""
        saved = dict(self._entries)
        try:
            yield self
        finally:
            self._entries.clear()
            self._entries.update(saved)

    def replace(self, name: str, builder: F | str, help: str = "", **facts: Any) -> None:  # noqa: A002
        """Put ``builder`` (or a ``"module:attr"`` target) in place of entry ``name``,
        keeping its position (inside :meth:`scoped` in tests)."""
        self._entries[name] = Entry(name, builder, help, dict(facts))

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
