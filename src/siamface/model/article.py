"""The article's trained models -> siamface checkpoints (``siamface import``).

The article's training script saves ``model.state_dict()`` of its ``SiameseNetwork``: a timm
backbone created with ``num_classes=0`` under ``backbone.*`` and an ``nn.Linear`` under
``embedder.*``, as a pickled ``.pth`` file, trained on 224 px images normalised with the
ImageNet mean/std, without face alignment. Its readers have such files; this turns one into a
self-describing siamface checkpoint (same weights: ``embedder`` becomes siamface's ``head``,
and siamface's L2 normalisation leaves cosine similarities unchanged), so ``evaluate``,
``calibrate``, ``verify``, ``export`` and ``serve`` work on it directly.

The file is read with ``torch.load(weights_only=True)``: a pickle that holds anything but
tensors is refused, never executed. The architecture (timm name) cannot be read from a state
dict; it defaults to the article's ``tf_efficientnetv2_b0``, and every tensor name and shape
is checked against it before anything is written.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from siamface.errors import SiamfaceError
from siamface.model.validate import ModelFileError, check_weights
from siamface.tensors.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

if TYPE_CHECKING:  # torch loads on use, so that `siamface --help` can show the defaults
    import torch

    from siamface.model.checkpoint import Checkpoint

#: The article's settings (siamese_network_training.py).
ARTICLE_BACKBONE = "tf_efficientnetv2_b0"
ARTICLE_IMAGE_SIZE = 224
#: The article's module names -> siamface's EmbeddingNet module names.
RENAMES = {"backbone.": "backbone.", "embedder.": "head."}
_WRAPPERS = ("module.", "model.", "_orig_mod.")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def map_article_state_dict(sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """``backbone.*`` + ``embedder.*`` -> siamface's ``backbone.*`` + ``head.*``."""
    for wrapper in _WRAPPERS:  # DataParallel / torch.compile / Lightning-style wrappers
        if sd and all(k.startswith(wrapper) for k in sd):
            sd = {k[len(wrapper) :]: v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    other = []
    for k, v in sd.items():
        prefix = next((p for p in RENAMES if k.startswith(p)), None)
        if prefix is None:
            other.append(k)
            continue
        out[RENAMES[prefix] + k[len(prefix) :]] = v
    if "head.weight" not in out or not any(k.startswith("backbone.") for k in out):
        raise SiamfaceError(
            f"{path} is not one of the article's models: expected 'backbone.*' and "
            f"'embedder.weight' tensors (a timm backbone + nn.Linear saved with "
            f"torch.save(model.state_dict())), found {', '.join(sorted(sd)[:5]) or 'none'}"
        )
    if other:
        raise SiamfaceError(
            f"{path} holds tensors outside 'backbone.' and 'embedder.' "
            f"({', '.join(sorted(other)[:5])}); it is not the article's SiameseNetwork"
        )
    return out


def import_article_model(
    path: str | Path,
    backbone: str = ARTICLE_BACKBONE,
    image_size: int = ARTICLE_IMAGE_SIZE,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> Checkpoint:
    """Read an article ``.pth`` (or a ``.safetensors`` of the same state dict) -> a checked
    :class:`Checkpoint` without a threshold (``siamface calibrate`` sets one)."""
    import torch  # noqa: PLC0415

    from siamface.model.checkpoint import Checkpoint  # lazy: torch, torchvision
    from siamface.model.network import ModelConfig  # lazy: torch, torchvision
    from siamface.model.pretrained import read_state_dict  # lazy: torch, tqdm

    path = Path(path).expanduser()
    with warnings.catch_warnings():  # torch's notes on pickle protocols are not for users
        warnings.simplefilter("ignore")
        raw = read_state_dict(path)
    sd = map_article_state_dict(raw, path)
    head = sd["head.weight"]
    if head.dim() != 2:
        raise SiamfaceError(f"{path}: embedder.weight must be a matrix, got {list(head.shape)}")
    cfg = ModelConfig(backbone=backbone, embedding_size=int(head.shape[0]))
    sd = {k: v.detach().to(torch.float32) if v.is_floating_point() else v for k, v in sd.items()}
    pre = Preprocessing(image_size=image_size, mean=tuple(mean), std=tuple(std), aligned=False)
    ckpt = Checkpoint(
        model_cfg=cfg,
        preprocessing=pre,
        state_dict=sd,
        threshold=None,
        info={
            "imported_from": str(path.resolve()),
            "imported_sha256": _sha256(path),
            "source_format": "article SiameseNetwork state dict (backbone.* + embedder.*)",
        },
    )
    try:
        check_weights(cfg, sd, None, path)
    except ModelFileError as err:
        raise SiamfaceError(
            f"{err}. If the model was trained with another timm backbone, give its name with "
            f"--backbone (the name passed to timm.create_model in the training script)"
        ) from err
    return ckpt
