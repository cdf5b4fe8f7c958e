"""PyTorch backend: runs a siamface ``.safetensors`` checkpoint or a built-in face model.

Imported only when a torch model is opened (a lazy entry of
:data:`~siamface.embed.load.EMBEDDER_BACKENDS`), so it imports torch at the top."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from siamface.embed.base import Embedder
from siamface.embed.tensors import embed_tensors
from siamface.model.checkpoint import Checkpoint
from siamface.model.zoo import resolve_checkpoint
from siamface.system import usable_cpus


class TorchEmbedder(Embedder):
    """A siamface ``.safetensors`` checkpoint (or a built-in face model such as ``sface``)
    run with PyTorch."""

    def __init__(
        self,
        path: str | Path,
        device: str = "auto",
        threads: int | None = None,
        checkpoint: Checkpoint | None = None,
    ):
        """Open ``path`` (or run ``checkpoint``, already in memory, named ``path``: a command
        that derives a model, such as ``siamface centre``, embeds with it before writing it)."""
        ckpt = checkpoint if checkpoint is not None else resolve_checkpoint(path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(threads or usable_cpus())
        self.device = torch.device(device)
        self.model = ckpt.build(self.device).to(memory_format=torch.channels_last)
        self.checkpoint = ckpt
        self.preprocessing = ckpt.preprocessing
        self.threshold = ckpt.threshold
        self.fingerprint = ckpt.fingerprint
        self.embedding_size = ckpt.model_cfg.embedding_size
        self.source = Path(path)
        self.info = ckpt.info
        self.pair_head = (
            {k: float(v) for k, v in ckpt.pair_head.items()} if ckpt.pair_head else None
        )
        # The weights were checked tensor by tensor when loaded; one probe face also catches
        # finite weights whose output is degenerate (a head scaled by 1e30 embeds every face
        # as the zero vector), for the price of one forward pass.
        self.probe()

    def embed_batch(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) == 0:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        x = torch.as_tensor(pixels)
        emb = embed_tensors(
            self.model, x, self.preprocessing, batch_size=len(x), device=self.device
        )
        return self.checked(emb.numpy())
