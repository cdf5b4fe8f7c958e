"""The same model on the same faces, for less CPU: a frozen inference graph for video.

A video embeds faces many times a second, on a CPU, with one thread (the other core decodes
and detects, see ``pipeline``). A siamface network in eager PyTorch spends part of that time
on work an inference graph does not need: BatchNorm layers applied after every convolution
(they can be folded into the convolution's weights) and per-layer dispatch. Measured for
SFace on the shared 2-core machine (4 faces a batch, one thread, CPU ms per face): eager
PyTorch 15.7-16.4, BatchNorm folded with ``torch.fx`` 13.1-13.7, traced + frozen + optimised
for inference (BatchNorm folded, oneDNN convolutions) 10.7-11.1; onnxruntime on OpenCV Zoo's
own SFace file 23.8 and OpenCV's ``FaceRecognizerSF`` 27.3 (docs/watch.md).

The faster copy must give the *same embeddings* - a gallery was enrolled with the original -
so it is used only when its output on probe faces matches the original's to within
``PARITY_ATOL``; otherwise (or for models that are not PyTorch networks: ONNX, dlib, fusions)
the embedder is used as it is. Nothing else changes: fingerprint, threshold, preprocessing and
the backend's own batching come from the original embedder.
"""

from __future__ import annotations

import copy
import warnings
import weakref

import numpy as np

#: Largest difference per embedding component (unit vectors) accepted from the faster graph.
PARITY_ATOL = 1e-4

#: Faster copies by original embedder: freezing takes ~1 s, and the web page or a Python
#: caller may start many watches with one loaded model.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _probe_faces(size: int, n: int = 3) -> np.ndarray:
    """Deterministic uint8 faces-shaped noise: parity is a numeric property, any input does."""
    rng = np.random.default_rng(20)
    return rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def _frozen(module, size: int) -> tuple[object, str]:
    """The module traced, frozen and optimised for inference (BatchNorm folded, oneDNN
    convolutions); the BatchNorm-folded ``torch.fx`` graph when tracing is not possible.
    TorchScript is deprecated in recent PyTorch (its warnings are silenced here: the parity
    check below, not the API's status, decides whether the result is used)."""
    import torch

    module = module.eval()
    example = torch.zeros(2, 3, size, size).contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.inference_mode(False), torch.no_grad():
                traced = torch.jit.trace(module, example)
                frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
                return frozen, "torchscript-frozen"
        except Exception:  # noqa: BLE001 - any failure: try the next, simpler graph
            pass
        from torch.fx.experimental.optimization import fuse

        return fuse(copy.deepcopy(module)), "fx-bn-folded"


def _torch_embedder_class():
    """The PyTorch backend's class; None where torch is not installed."""
    try:
        from siamface.embed.torch_backend import TorchEmbedder  # lazy: torch is optional here
    except ImportError:
        return None
    return TorchEmbedder


def fast_embedder(embedder):
    """``embedder`` with a faster graph when it is a PyTorch network on the CPU and the faster
    graph's embeddings match (see the module docstring); else ``embedder`` itself."""
    TorchEmbedder = _torch_embedder_class()
    if TorchEmbedder is None:  # the torch-free install: nothing to speed up here
        return embedder
    if type(embedder) is not TorchEmbedder or embedder.device.type != "cpu":
        return embedder
    if embedder not in _CACHE:
        chosen = _checked_copy(embedder)
        # None for "no faster copy": a value that refers to its weak key keeps it alive.
        _CACHE[embedder] = None if chosen is embedder else chosen
    return _CACHE[embedder] or embedder


def _checked_copy(embedder):
    """The copy with the frozen graph when its embeddings match, else ``embedder``."""
    size = embedder.preprocessing.image_size
    try:
        fast = copy.copy(embedder)
        fast.model, fast.video_graph = _frozen(embedder.model, size)
        probe = _probe_faces(size)
        same = np.abs(fast.embed_batch(probe) - embedder.embed_batch(probe)).max()
    except Exception:  # noqa: BLE001 - the plain model always works
        return embedder
    return fast if float(same) <= PARITY_ATOL else embedder


def graph_name(embedder) -> str:
    """Which graph embeds the faces: ``torchscript-frozen``, ``fx-bn-folded`` or ``as loaded``
    (reported by the bench and the watch's start event)."""
    return getattr(embedder, "video_graph", "as loaded")
