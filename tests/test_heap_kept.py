"""keep_heap: large buffers freed and allocated again inside ``heap_kept`` reuse resident pages
(no page faults), and glibc's defaults come back when the block ends."""

from __future__ import annotations

import resource

import pytest
import torch
from conftest import TINY_TRAIN

from siamface.system import _glibc, heap_kept
from siamface.train.config import make_config
from siamface.train.loop import Trainer

glibc_only = pytest.mark.skipif(_glibc() is None, reason="heap_kept tunes glibc's malloc only")

MB = 48  # above glibc's largest dynamic mmap threshold (32 MB): mmapped by default


def faults_per_buffer(rounds: int = 6) -> float:
    """Minor page faults per allocate-write-free cycle of an ``MB``-sized buffer, the way a
    training step allocates and frees its activations (with torch's allocator: numpy asks for
    huge pages on large arrays, which hides the effect)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        buf = torch.ones(MB * 2**20 // 4)  # writes every page
        del buf
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / rounds


@glibc_only
def test_buffers_reuse_pages_inside_and_default_returns_after():
    pages = MB * 2**20 / resource.getpagesize()
    released = faults_per_buffer()
    assert released > 0.8 * pages  # default: every cycle faults the whole buffer in again
    with heap_kept() as kept:
        assert kept is True
        faults_per_buffer(1)  # the first cycle grows the heap once
        inside = faults_per_buffer()
    assert inside < 0.05 * pages
    assert faults_per_buffer() > 0.8 * pages  # defaults restored, memory handed back


def test_disabled_changes_nothing():
    with heap_kept(enabled=False) as kept:
        assert kept is False
        if _glibc() is not None:
            pages = MB * 2**20 / resource.getpagesize()
            assert faults_per_buffer(3) > 0.8 * pages


@glibc_only
@pytest.mark.parametrize("keep", [True, False])
def test_training_keeps_the_heap_only_when_asked(pins_small, tmp_path, keep):
    lines: list[str] = []
    cfg = make_config(None, [*TINY_TRAIN, "epochs=1", f"keep_heap={str(keep).lower()}"])
    Trainer(cfg, [pins_small], tmp_path / "run", progress=False, log=lines.append).run()
    assert any("heap kept" in line for line in lines) is keep
    assert faults_per_buffer(3) > 0.8 * MB * 2**20 / resource.getpagesize()
