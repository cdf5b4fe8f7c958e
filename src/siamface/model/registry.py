"""Embedding architectures that are not plain timm backbones, registered by name.

``ModelConfig.backbone`` names either a timm model (a pooled-feature backbone that siamface
tops with a linear head) or an architecture registered here, which brings its own trunk *and*
embedding head (e.g. ``sface``, whose head flattens a 7x7 map). One registry, one entry point
(:func:`siamface.model.network.build_model`), as in timm: error messages and validation list
the registered names (:func:`architecture_names`), never a hand-kept copy of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from siamface.registry import Registry


@dataclass(frozen=True)
class Architecture:
    """How to build one registered architecture: ``arch(embedding_size) -> (trunk, head)``."""

    name: str
    backbone: Callable[[], nn.Module]  # the trunk: image -> features
    head: Callable[[int], nn.Module]  # embedding size -> features-to-embedding layers
    embedding_size: int  # its native embedding size
    image_size: int  # its native input size
    mean: tuple[float, float, float]  # input normalisation its weights expect (0-1 scale)
    std: tuple[float, float, float]
    description: str = ""

    def __call__(self, embedding_size: int) -> tuple[nn.Module, nn.Module]:
        return self.backbone(), self.head(embedding_size)


#: Face architectures by name (config key ``backbone``, besides every timm model name).
ARCHITECTURES: Registry[Architecture] = Registry("face architecture", config_key="backbone")


def register_architecture(arch: Architecture) -> Architecture:
    ARCHITECTURES.register(arch.name, help=arch.description)(arch)
    return arch


def get_architecture(name: str) -> Architecture | None:
    """The registered architecture called ``name``, or None for a timm backbone name."""
    _load_builtin()
    return ARCHITECTURES.get(name).builder if name in ARCHITECTURES else None


def architecture_names() -> tuple[str, ...]:
    _load_builtin()
    return ARCHITECTURES.names()


def _load_builtin() -> None:
    # Built-in architectures register themselves on import (timm's pattern); importing them
    # here, lazily, keeps this module free of import cycles.
    from siamface.model import sface  # noqa: F401  # lazy: import cycle (sface imports this)
