"""A loaded face-embedding model, whatever its format: the object every consumer uses.

Evaluation, verification, the gallery and the REST service all need the same few things from a
model: its preprocessing contract, its stored decision threshold, a fingerprint (so embeddings
of different models are never mixed), and "uint8 faces in, unit vectors out". :class:`Embedder`
provides exactly that (``base``); ``torch_backend.TorchEmbedder`` runs a siamface checkpoint
with PyTorch and ``onnx_backend.OnnxEmbedder`` runs an exported ``.onnx`` file with
onnxruntime (no torch needed). :func:`open_model` picks the backend from the file; backends are
imported only when used, so ``import siamface.inference`` stays light.
"""

from __future__ import annotations

from pathlib import Path

from siamface.errors import SiamfaceError
from siamface.inference.base import Embedder

__all__ = [
    "Embedder",
    "TorchEmbedder",
    "OnnxEmbedder",
    "builtin_model_names",
    "model_available",
    "model_reference",
    "open_model",
]


#: Built-in models that another library computes (not a siamface network): name -> module
#: and class of their backend. Built-in siamface networks (``sface``) live in the model zoo.
EXTERNAL_MODELS = {"dlib": ("siamface.inference.dlib_backend", "DlibEmbedder")}


def builtin_model_names() -> list[str]:
    """Names ``open_model`` accepts besides paths (imports torch for the zoo's list)."""
    try:
        from siamface.model.zoo import pretrained_names
    except ImportError:  # the torch-free inference install has no zoo
        return sorted(EXTERNAL_MODELS)
    return sorted(set(pretrained_names()) | set(EXTERNAL_MODELS))


def model_reference(spec: str | Path) -> str:
    """What to record (in a gallery, a report) so that the model can be opened again later:
    the absolute path of a file, or the name of a built-in model."""
    p = Path(spec).expanduser()
    if not p.exists() and str(spec) in builtin_model_names():
        return str(spec)
    return str(p.resolve())


def model_available(reference: str | None) -> bool:
    """True when :func:`open_model` can find ``reference`` (a recorded model)."""
    return bool(reference) and (Path(reference).exists() or str(reference) in builtin_model_names())


def open_model(path: str | Path, device: str = "auto") -> Embedder:
    """Open a siamface checkpoint (``.safetensors`` or a run directory), an exported
    ``.onnx`` model, or a built-in face model by name (``sface``; ``dlib`` when installed)."""
    p = Path(path).expanduser()
    if not p.exists():
        name = str(path)
        if name in EXTERNAL_MODELS:
            import importlib

            module, cls = EXTERNAL_MODELS[name]
            return getattr(importlib.import_module(module), cls)()
        names = builtin_model_names()
        if name in names:
            from siamface.inference.torch_backend import TorchEmbedder

            return TorchEmbedder(name, device=device)
        raise SiamfaceError(f"model not found: {p} (built-in models: {', '.join(names)})")
    if p.suffix == ".onnx":
        try:
            from siamface.inference.onnx_backend import OnnxEmbedder
        except ImportError as err:
            raise SiamfaceError(
                f"cannot run {p}: ONNX support is missing ({err}); pip install onnxruntime"
            ) from err
        return OnnxEmbedder(p)
    from siamface.inference.torch_backend import TorchEmbedder

    return TorchEmbedder(p, device=device)


def __getattr__(name: str):
    # Backends load lazily: importing siamface.inference must not import torch or onnxruntime.
    if name == "TorchEmbedder":
        from siamface.inference.torch_backend import TorchEmbedder

        return TorchEmbedder
    if name == "OnnxEmbedder":
        from siamface.inference.onnx_backend import OnnxEmbedder

        return OnnxEmbedder
    raise AttributeError(name)
