"""``machine``: where and how fast the run computes; none of it changes what is learnt
(except ``grad_accum`` through BatchNorm and mining, noted below)."""

from __future__ import annotations

from typing import Literal

from siamface.train.params import Params, param


class MachineSection(Params):
    device: Literal["auto", "cpu", "cuda"] = param("auto", "{choices}")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = param(
        "auto",
        "{choices} autocast (auto: bf16 on CUDA GPUs that have it, else fp16 with loss "
        "scaling on CUDA; fp32 on CPU)",
    )
    num_workers: int = param(-1, "data loader workers; -1 = auto", ge=-1, le=64)
    augment_on: Literal["auto", "loader", "device"] = param(
        "auto",
        "{choices}: where augmentation runs (auto: per image in loader workers on CPU, per "
        "batch on the GPU with CUDA)",
    )
    cache_gb: float = param(
        2.0,
        "decoded pixels kept in RAM up to this many GiB (per machine); above it images are "
        "decoded from disk every epoch",
        ge=0,
        le=4096,
    )
    channels_last: bool = param(True, "NHWC memory layout: faster convolutions on CPU and GPU")
    keep_heap: bool = param(
        True,
        "CPU (glibc): keep freed memory in the process while training, so each step reuses "
        "its activation buffers instead of faulting fresh pages in (measured ~15 percent faster)",
    )
    grad_accum: int = param(
        1,
        "micro-batches per optimizer step: batch_size images per step in batch_size / "
        "grad_accum pieces (less memory; BatchNorm and mining see the pieces)",
        ge=1,
        le=1024,
    )
    nproc: int = param(
        1,
        "data-parallel processes on this machine (launches torchrun; one per GPU); "
        "batch_size stays the global batch",
        ge=1,
        le=256,
    )
    sync_bn: bool = param(
        True, "with several processes, BatchNorm statistics over the whole global batch"
    )
    compile: bool = param(False, "torch.compile the model (slower first steps; see README)")
