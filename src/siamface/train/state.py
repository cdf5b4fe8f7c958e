"""Resumable training state: RNG capture/restore and the atomically written state file.

The state file is loaded with ``torch.load(weights_only=True)``, so it may only hold tensors,
numbers, strings and containers; numpy's RNG state is converted to that form here.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from pytorch_metric_learning.utils import common_functions as pml_common

from siamface.errors import SiamfaceError
from siamface.model.checkpoint import atomic_write

STATE_FILE = "train_state.pt"


def capture_rng() -> dict:
    """Snapshot every RNG the training loop draws from (torch, numpy, python, pml)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    pml_state = pml_common.NUMPY_RANDOM.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "pml": [pml_state[0], torch.from_numpy(pml_state[1].astype(np.int64))]
        + list(pml_state[2:]),
        "python": random.getstate(),
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    k2, keys2, *rest = state["pml"]
    pml_common.NUMPY_RANDOM.set_state((k2, keys2.numpy().astype(np.uint32), *rest))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    pml_common.NUMPY_RANDOM.seed(seed)
    torch.manual_seed(seed)


def save_state(run_dir: Path, state: dict) -> None:
    atomic_write(run_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))


def load_state(run_dir: Path) -> dict:
    path = run_dir / STATE_FILE
    if not path.is_file():
        raise SiamfaceError(f"nothing to resume: {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged state file is a user-facing problem
        raise SiamfaceError(f"cannot read training state {path}: {err}") from err
