"""Tensors -> embeddings with a PyTorch network: the one batch loop every torch caller uses.

Validation, the fine-tuning start, the frozen-layer feature cache, the acceptance verdict and
the checkpoint backend (so evaluation, galleries and the service) all embed uint8 faces the
same way: normalise on the CPU by the model's contract, move to the device, channels-last,
forward in eval mode without autograd, float32 back on the CPU. Writing that once keeps them
numerically identical (a model scores the same in training's validation as in ``siamface
evaluate``), and the article's one-image-at-a-time loop is never re-grown in a corner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from siamface.tensors.transforms import Preprocessing, normalize_batch

#: ``load(a, b)``: uint8 NCHW faces a..b-1 (for sets not held as one tensor).
RangeLoader = Callable[[int, int], torch.Tensor]


class FaceStack(Protocol):
    """uint8 NCHW faces sliced in batches: a tensor, or a view of some rows of one."""

    def __len__(self) -> int: ...

    def __getitem__(self, key: slice) -> torch.Tensor: ...


#: ``forward(x, indices)``: normalised faces (and their positions in the set) -> embeddings;
#: the default is the model itself, the feature cache runs cached layers instead.
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def embed_tensors(
    model: nn.Module,
    pixels: FaceStack | RangeLoader,
    pre: Preprocessing,
    *,
    count: int | None = None,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    channels_last: bool = True,
    forward: Forward | None = None,
    inference: bool = True,
    progress: bool = False,
    desc: str = "embedding",
) -> torch.Tensor:
    """Embed uint8 NCHW faces (a tensor or row view, or ``load(a, b)`` with ``count`` faces)
    in batches -> (N, D) float32 on the CPU, in order; ``(0, 0)`` for none.

    ``model`` is put in eval mode for the loop and back in its mode after it. ``inference``
    (default) runs under ``torch.inference_mode``; callers that keep the result in state a
    later training step modifies or differentiates through (the feature cache, the start's
    anchors) pass False for plain ``no_grad`` tensors.
    """
    if callable(pixels):
        if count is None:
            raise ValueError("embed_tensors needs count= when pixels is a loader")
        n, load = count, pixels
    else:
        n, load = len(pixels), (lambda a, b: pixels[a:b])
    run = forward or (lambda x, _indices: model(x))
    # A frozen TorchScript graph (the watch's fast path) is always in eval mode and has no
    # ``training`` flag to save.
    was_training = getattr(model, "training", None)
    if was_training is not None:
        model.eval()
    out = []
    with (
        torch.inference_mode() if inference else torch.no_grad(),
        tqdm(total=n, desc=desc, unit="img", disable=not progress) as bar,
    ):
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            x = normalize_batch(load(start, stop), pre).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(run(x, torch.arange(start, stop)).float().cpu())
            bar.update(stop - start)
    if was_training is not None:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def batch_embedder(
    model: nn.Module,
    pre: Preprocessing,
    device: str | torch.device = "cpu",
    channels_last: bool = True,
) -> Callable[[np.ndarray], np.ndarray]:
    """``embed_batch`` of a network: uint8 NCHW numpy -> (N, D) float32 numpy, one batch
    through :func:`embed_tensors` (what the file pipeline calls for torch models)."""

    def embed_batch(pixels: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(pixels)
        return embed_tensors(
            model, x, pre, batch_size=max(1, len(x)), device=device, channels_last=channels_last
        ).numpy()

    return embed_batch
