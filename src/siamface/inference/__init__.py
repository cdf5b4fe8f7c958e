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

__all__ = ["Embedder", "TorchEmbedder", "OnnxEmbedder", "open_model"]


def open_model(path: str | Path, device: str = "auto") -> Embedder:
    """Open a siamface checkpoint (``.safetensors`` or a run directory) or an exported
    ``.onnx`` model."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SiamfaceError(f"model not found: {p}")
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
