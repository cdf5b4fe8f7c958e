"""Embedding architectures that are not plain timm backbones, registered by name.

``ModelConfig.backbone`` names either a timm model (a pooled-feature backbone that siamface
tops with a linear head) or an architecture registered here, which brings its own trunk *and*
embedding head (e.g. ``sface``, whose head flattens a 7x7 map). One registry, one entry point
(:func:`siamface.model.network.build_model`), as in timm: the CLI's choices and the config's
validation are derived from :func:`architecture_names`, never spelled twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Architecture:
    """How to build one registered architecture."""

    name: str
    backbone: Callable[[], nn.Module]  # the trunk: image -> features
    head: Callable[[int], nn.Module]  # embedding size -> features-to-embedding layers
    embedding_size: int  # its native embedding size
    image_size: int  # its native input size
    mean: tuple[float, float, float]  # input normalisation its weights expect (0-1 scale)
    std: tuple[float, float, float]
    description: str = ""


_ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> Architecture:
    if arch.name in _ARCHITECTURES:
        raise ValueError(f"architecture {arch.name!r} is registered twice")
    _ARCHITECTURES[arch.name] = arch
    return arch


def get_architecture(name: str) -> Architecture | None:
    """The registered architecture called ``name``, or None for a timm backbone name."""
    _load_builtin()
    return _ARCHITECTURES.get(name)


def architecture_names() -> list[str]:
    _load_builtin()
    return sorted(_ARCHITECTURES)


def _load_builtin() -> None:
    # Built-in architectures register themselves on import (timm's pattern); importing them
    # here, lazily, keeps this module free of import cycles.
    from siamface.model import sface  # noqa: F401
