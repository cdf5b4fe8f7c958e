"""The weights-source registry: where a run's starting backbone weights come from.

Config key ``pretrained`` names an entry here (``auto``, ``hub``, ``none``) or is a path to a
local weight file, which goes to the ``file`` entry. The loaders themselves live in
:mod:`siamface.model.pretrained`; this table is what config validation, ``--help`` and the
trainer read, so a new source (a face model to fine-tune from, say) is one decorated loader.
Backbone *architectures* have their own registry already: timm's ``create_model`` names,
checked by :func:`siamface.model.network.check_backbone_name`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from siamface.registry import Registry

if TYPE_CHECKING:
    from torch import nn

#: ``(backbone module, backbone name, spec) -> description of the source used``
WeightLoader = Callable[["nn.Module", str, str], str]

#: Named weight sources (config key ``pretrained``); ``file`` is chosen by giving a path.
WEIGHT_SOURCES: Registry[WeightLoader] = Registry("weights source", config_key="pretrained")
register_weights_source = WEIGHT_SOURCES.register


@register_weights_source("auto", help="offline package weights if known, else the timm hub")
def _auto(backbone: nn.Module, name: str, spec: str) -> str:
    from siamface.model.pretrained import load_pretrained  # lazy: torch, numpy

    return load_pretrained(backbone, name, "auto")


@register_weights_source("hub", help="timm's hub download (needs network)")
def _hub(backbone: nn.Module, name: str, spec: str) -> str:
    from siamface.model.pretrained import load_from_hub  # lazy: torch, numpy

    return load_from_hub(backbone, name)


@register_weights_source("none", help="random initialisation")
def _none(backbone: nn.Module, name: str, spec: str) -> str:
    return "random initialisation"


@register_weights_source("file", help="a local .pth / .safetensors state dict", path=True)
def _file(backbone: nn.Module, name: str, spec: str) -> str:
    from siamface.model.pretrained import load_backbone_file  # lazy: torch, numpy

    return load_backbone_file(backbone, Path(spec).expanduser())


def named_sources() -> tuple[str, ...]:
    """The sources chosen by name (the rest are chosen by giving a path)."""
    return tuple(e.name for e in WEIGHT_SOURCES if not e.facts.get("path"))


def source_for(spec: str) -> str:
    """The registry entry a ``pretrained`` value selects."""
    return spec if spec in named_sources() else "file"


def load_weights(backbone: nn.Module, name: str, spec: str) -> str:
    """Fill ``backbone`` from the source ``spec`` selects; returns where the weights came from."""
    return WEIGHT_SOURCES.build(source_for(spec), backbone, name, spec)
