"""``model``: the network trained (architecture, its starting weights, its sizes)."""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator

from siamface.errors import SiamfaceError
from siamface.train.params import Params, param
from siamface.train.weights import named_sources


class ModelSection(Params):
    backbone: str = param("tf_efficientnet_lite0", "any timm model name, e.g. tf_efficientnetv2_b0")
    pretrained: str = param("auto", "{choices} | /path/to/weights.(pth|safetensors)")
    embedding_size: int = param(512, "output embedding dimension (article: 512)", ge=2, le=8192)
    image_size: int = param(112, "square input size in pixels (article: 224)", ge=32, le=1024)

    @field_validator("backbone", mode="after")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        import timm  # lazy: --help speed (timm imports torch)

        if timm.is_model(value) or timm.is_model(value.split(".")[0]):
            return value
        from siamface.model.network import check_backbone_name  # lazy: --help speed (torch)

        try:
            check_backbone_name(value)
        except SiamfaceError as err:
            raise ValueError(str(err)) from None
        return value

    @field_validator("pretrained", mode="after")
    @classmethod
    def _known_source(cls, value: str) -> str:
        """A named source from the weights registry, or a weight file that exists now (not
        an hour later, after the dataset was decoded)."""
        if value in named_sources() or Path(value).expanduser().is_file():
            return value
        raise ValueError(
            f"pretrained must be {', '.join(named_sources())} or an existing weight "
            f"file; file not found: {Path(value).expanduser()}"
        )
