"""Which device a run trains on and in which precision."""

from __future__ import annotations

import torch

from siamface.errors import SiamfaceError


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SiamfaceError("device=cuda requested but CUDA is not available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast: on by default on CUDA GPUs that support it. On CPU it is opt-in
    (``precision=bf16``): measured on this project's AVX512-BF16/AMX machine it was not faster
    for the depthwise-convolution backbones we default to (see bench/train_throughput.py)."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the run, or None for plain fp32."""
    return torch.bfloat16 if use_bf16(precision, device) else None
