"""Which device a run trains on, in which precision, with how many loader workers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from siamface.errors import SiamfaceError
from siamface.system import loader_workers, usable_cpus


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SiamfaceError("device=cuda requested but CUDA is not available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None = fp32) and whether fp16 loss scaling is needed."""

    dtype: torch.dtype | None
    scaler: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def precision_for(precision: str, device: torch.device) -> Precision:
    """bf16 autocast on CUDA GPUs that support it, fp16 with a GradScaler on older ones
    (T4, V100), fp32 on CPU unless asked: on this project's CPU (AMD EPYC, AVX2 without native
    bf16) bf16 autocast trained at 0.2x the fp32 speed (bench/train_throughput.py); CPUs with
    AVX512-BF16/AMX may gain, which is why ``precision=bf16`` stays available."""
    if precision == "auto":
        if device.type != "cuda":
            return Precision(None, False)
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, False)
        return Precision(torch.float16, True)
    if precision == "bf16":
        return Precision(torch.bfloat16, False)
    if precision == "fp16":
        return Precision(torch.float16, True)
    return Precision(None, False)


def use_bf16(precision: str, device: torch.device) -> bool:
    return precision_for(precision, device).dtype is torch.bfloat16


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the run, or None for plain fp32."""
    return precision_for(precision, device).dtype


def workers_for(device: torch.device, local_world: int = 1) -> int:
    """Loader workers per process. On CPU the cores belong to the model (one worker on small
    machines); with a GPU the model needs one core per process and the rest decode and
    augment."""
    if device.type != "cuda":
        return loader_workers()
    per_process = usable_cpus() // max(1, local_world)
    return max(1, min(16, per_process - 1))


def threads_for(device: torch.device, local_world: int = 1) -> int:
    """Intra-op threads per process: the usable cores shared among the local processes."""
    return max(1, usable_cpus() // max(1, local_world))
