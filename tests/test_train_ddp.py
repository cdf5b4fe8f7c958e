"""Data-parallel training: 2 CPU processes (torchrun, gloo) against 1 process, same global batch.

Tolerance, stated in the README: after an epoch of 2 SGD steps the weights agree to float
rounding (max |dw| < 1e-5) and the loss to 1e-6; over more steps training amplifies the rounding
differences (summation order of the all-reduce and of the gathered loss): after a second epoch
(resumed in one process) the loss curve and the weights (relative L2 norm of the difference)
agree to 1e-3 (measured: 6e-6 and 7e-7).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_BACKBONE
from safetensors.torch import load_file

from siamface.tensors.batches import rank_order
from siamface.train.config import make_config
from siamface.train.job import resume, train

# 8 training identities x 8 images; batch 32 = 4 identities x 8, so each process gets 2 whole
# identities; 2 steps per epoch. Default augmentation, batch-hard mining, AdamW.
CFG = [
    f"backbone={TINY_BACKBONE}",
    "pretrained=none",
    "image_size=32",
    "embedding_size=16",
    "batch_size=32",
    "m_per_class=8",
    "val_identities=4",
    "num_workers=0",
    "precision=fp32",
    "lr=1e-3",
    "t_max=2",
]
QUIET = {"progress": False, "log": lambda s: None}


def _siamface(*args: str) -> subprocess.CompletedProcess:
    # This checkout's siamface (not whichever one is installed), and conftest.
    paths = os.pathsep.join([str(REPO / "tests"), str(REPO / "src")])
    env = {**os.environ, "PYTHONPATH": paths, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "siamface.cli.main", "train", "--no-progress", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(str(run / "last.safetensors")).items()}


def _compare(a: Path, b: Path) -> tuple[float, float, float]:
    """(max |dw|, relative L2 of dw, max relative difference of the per-epoch losses)."""
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    max_abs = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    num = sum(float(((wa[k] - wb[k]) ** 2).sum()) for k in wa)
    den = sum(float((wa[k] ** 2).sum()) for k in wa)
    ha = [h["train_loss"] for h in json.loads((a / "history.json").read_text())]
    hb = [h["train_loss"] for h in json.loads((b / "history.json").read_text())]
    assert len(ha) == len(hb)
    loss_rel = max(abs(x - y) / abs(x) for x, y in zip(ha, hb, strict=True))
    return max_abs, (num / den) ** 0.5, loss_rel


def test_rank_slices_partition_each_global_batch():
    order = list(range(64))
    r0 = rank_order(order, 32, world_size=2, rank=0, grad_accum=2)
    r1 = rank_order(order, 32, world_size=2, rank=1, grad_accum=2)
    # step 0: micro-batch 0 = rank 0 [0:8], rank 1 [8:16]; micro-batch 1 = [16:24], [24:32]
    assert r0[:16] == [*range(0, 8), *range(16, 24)]
    assert r1[:16] == [*range(8, 16), *range(24, 32)]
    assert sorted(r0 + r1) == order
    with pytest.raises(ValueError):
        rank_order(order, 30, world_size=4)


def test_two_processes_follow_the_one_process_run(pins_small, tmp_path):
    cfg = [*CFG, "optimizer=sgd_step", "lr=0.05"]
    # One process: epoch 1, then epoch 2 by resuming (bit-exact, see test_train_resume.py).
    one = tmp_path / "one"
    train(make_config(None, [*cfg, "epochs=1"]), [pins_small], one, **QUIET)
    one_epoch1 = _weights(one)
    hist1 = json.loads((one / "history.json").read_text())
    # Two processes through the launcher: `siamface train nproc=2` starts torchrun.
    two = tmp_path / "two"
    r = _siamface("--data", str(pins_small), "--out", str(two), *cfg, "epochs=1", "nproc=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 processes (gloo)" in r.stdout
    assert len(list((two / "tensorboard").iterdir())) == 1  # only rank 0 writes
    # After 2 SGD steps: the same numbers up to float rounding. (SGD moves weights in
    # proportion to the gradient; Adam's first step is lr * sign(gradient) and would turn
    # rounding noise on near-zero gradients into +-lr.)
    w2 = _weights(two)
    assert max(float((one_epoch1[k] - w2[k]).abs().max()) for k in w2) < 1e-5
    loss1 = hist1[0]["train_loss"]
    assert abs(json.loads((two / "history.json").read_text())[0]["train_loss"] - loss1) < 1e-6
    # Epoch 2 in one process again: a resume with another world size.
    resume(one, ["epochs=2"], **QUIET)
    resume(two, ["epochs=2", "nproc=1"], **QUIET)
    max_abs, rel_l2, loss_rel = _compare(one, two)
    assert rel_l2 < 1e-3 and loss_rel < 1e-3, (max_abs, rel_l2, loss_rel)
