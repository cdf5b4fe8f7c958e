"""Resumable training state: progress counters, RNG capture/restore, the atomic state file.

The state file is loaded with ``torch.load(weights_only=True)``, so it may only hold tensors,
numbers, strings and containers; numpy's RNG state is converted to that form here.
"""

from __future__ import annotations

import io
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_metric_learning.utils import common_functions as pml_common

from siamface.errors import SiamfaceError
from siamface.model.checkpoint import atomic_write
from siamface.model.pretrained import torch_load_safely
from siamface.train.rundir import OutputError, writing

STATE_FILE = "train_state.pt"


@dataclass
class Progress:
    """Counters that survive a resume, and the run's clock.

    The optimizer's schedule reads :attr:`schedule_fraction` from here and the loop asks
    :meth:`out_of_time`: both are functions of this object alone, so no part has to call back
    into the loop to learn how far the run is.
    """

    epoch: int = 0  # epochs fully completed
    step_in_epoch: int = 0
    global_step: int = 0
    train_seconds: float = 0.0  # wall time spent in this run, across resumes
    best_value: float | None = None
    best_epoch: int | None = None
    history: list[dict] = field(default_factory=list)
    #: Steps of the cosine period (``t_max`` or ``epochs`` epochs); 0 until the run is built.
    period_steps: int = field(default=0, compare=False)
    #: The wall-clock budget in seconds (0: none).
    budget_seconds: float = field(default=0.0, compare=False)
    #: ``time.perf_counter()`` when this process started training (None: not yet).
    session_start: float | None = field(default=None, compare=False)
    #: RNG snapshot at the start of the current epoch (set by a resume, or by the loop).
    epoch_start_rng: dict | None = field(default=None, compare=False, repr=False)
    #: The sampler's label order at the start of the current epoch: MPerClassSampler
    #: shuffles it in place every epoch, so the next epoch's batches depend on it.
    sampler_labels: list[int] | None = field(default=None, compare=False, repr=False)

    def elapsed(self) -> float:
        """Seconds this process has trained (0 before the loop starts)."""
        if self.session_start is None:
            return 0.0
        return time.perf_counter() - self.session_start

    def out_of_time(self) -> bool:
        """Has the run (across resumes) used its wall-clock budget?"""
        b = self.budget_seconds
        return bool(b) and self.train_seconds + self.elapsed() >= b

    @property
    def schedule_fraction(self) -> float:
        """Fraction of the cosine period done: steps over the period, or the share of the
        time budget spent, whichever is further (a time-limited run anneals to its end)."""
        p = self.global_step / self.period_steps if self.period_steps else 0.0
        if self.budget_seconds:
            p = max(p, (self.train_seconds + self.elapsed()) / self.budget_seconds)
        return p

    def restore(self, st: dict[str, Any]) -> None:
        """Take the counters of a state file in place (the optimizer holds this object)."""
        loaded = Progress.from_state(st)
        for name in ("epoch", "step_in_epoch", "global_step", "train_seconds"):
            setattr(self, name, getattr(loaded, name))
        self.best_value, self.best_epoch = loaded.best_value, loaded.best_epoch
        self.history = loaded.history
        self.epoch_start_rng = st["epoch_start_rng"]
        self.sampler_labels = list(st["sampler_labels_at_epoch_start"])

    def to_state(self, elapsed: float) -> dict[str, Any]:
        """Counters as state-file entries; ``elapsed`` is this process's training time."""
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "train_seconds": self.train_seconds + elapsed,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "history": json.dumps(self.history),
        }

    @classmethod
    def from_state(cls, st: dict[str, Any]) -> Progress:
        return cls(
            epoch=int(st["epoch"]),
            step_in_epoch=int(st["step_in_epoch"]),
            global_step=int(st["global_step"]),
            train_seconds=float(st["train_seconds"]),
            best_value=st["best_value"],
            best_epoch=st["best_epoch"],
            history=json.loads(st["history"]),
        )


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
    """Write the state atomically. On failure (disk full...) the previous state file stays
    whole, so the run can still resume from it once the cause is fixed."""
    path = run_dir / STATE_FILE
    # Serialised in memory, written with Python's file I/O: torch.save's own writer reports
    # a full disk as an opaque RuntimeError, Python's write as an OSError with its errno.
    buf = io.BytesIO()
    torch.save(state, buf)
    try:
        with writing(path, "the training state"):
            atomic_write(path, lambda tmp: tmp.write_bytes(buf.getbuffer()))
    except OutputError as err:
        hint = (
            f"; free space, then 'siamface train --resume {run_dir}' continues from it"
            if path.exists()
            else ""
        )
        raise OutputError(f"{err}{hint}") from err


def state_file(run_dir: Path) -> Path:
    """The run's state file; a clear error when there is nothing to resume."""
    path = run_dir / STATE_FILE
    if not path.is_file():
        raise SiamfaceError(f"nothing to resume: {path} not found")
    return path


def load_state(run_dir: Path) -> dict:
    path = state_file(run_dir)
    return torch_load_safely(path, "training state")  # type: ignore[return-value]
