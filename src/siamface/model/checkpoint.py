"""Self-describing, safely loadable, atomically written model checkpoints.

One ``.safetensors`` file holds the weights and, in its JSON header, everything needed to use
them: model config (backbone, embedding size), preprocessing (size, mean/std, alignment), the
calibrated decision threshold and training provenance. Loading never unpickles anything, and
never needs the user to re-type the architecture (the article's checkpoints did both).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from siamface.errors import SiamfaceError
from siamface.fileio import atomic_write  # noqa: F401 - re-exported (moved there, torch-free)
from siamface.model.network import EmbeddingNet, ModelConfig, PairHead, build_model
from siamface.model.validate import (
    check_checkpoint_header,
    check_weights,
    contract_digest,
    parse_header,
)
from siamface.tensors.transforms import Preprocessing

FORMAT = "siamface.checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A trained model plus the metadata that makes it usable on its own."""

    model_cfg: ModelConfig
    preprocessing: Preprocessing
    state_dict: dict[str, torch.Tensor]
    threshold: dict | None = None  # {"value", "target_far", "far", "tar", "source"}
    pair_head: dict[str, torch.Tensor] | None = None
    info: dict = field(default_factory=dict)  # training provenance and validation metrics

    def build(self, device: str | torch.device = "cpu") -> EmbeddingNet:
        """Instantiate the network with these weights, in eval mode."""
        model = build_model(self.model_cfg)
        model.load_state_dict(self.state_dict)
        return model.to(device).eval()

    def build_pair_head(self) -> PairHead | None:
        if not self.pair_head:
            return None
        head = PairHead()
        head.load_state_dict(self.pair_head)
        return head.eval()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.state_dict)

    def metadata(self) -> dict:
        meta = {
            "fingerprint": self.fingerprint,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.model_cfg.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "threshold": self.threshold,
            "has_pair_head": bool(self.pair_head),
            "info": self.info,
        }
        meta["integrity"] = contract_digest(meta)  # catches later edits of the header
        return meta


def fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """Short hash of the weights: galleries and exported models record it so that embeddings
    from different models are never compared by mistake."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> Path:
    """Write ``ckpt`` atomically to ``path`` (a ``.safetensors`` file)."""
    path = Path(path)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in ckpt.state_dict.items()}
    for k, v in (ckpt.pair_head or {}).items():
        tensors[f"pair_head.{k}"] = v.detach().cpu().contiguous()
    meta = {"siamface": json.dumps(ckpt.metadata())}
    # Serialise in memory, write with Python: a full disk then raises OSError (which
    # atomic_write reports and cleans up), not safetensors' own error type.
    data = save(tensors, metadata=meta)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return path


def read_metadata(path: str | Path) -> dict:
    """The JSON header of a checkpoint, without loading any tensor."""
    from safetensors import safe_open

    path = _check_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("siamface")
    except Exception as err:  # noqa: BLE001 - safetensors raises several types on bad files
        raise SiamfaceError(f"{path} is not a readable siamface checkpoint: {err}") from err
    if raw is None:
        raise SiamfaceError(
            f"{path} is a safetensors file but not a siamface checkpoint (no siamface header)"
        )
    return check_checkpoint_header(parse_header(raw, path), path, FORMAT, FORMAT_VERSION)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint` (no pickle involved)."""
    path = _check_path(path)
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise SiamfaceError(f"cannot read checkpoint {path}: {err}") from err
    model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    head_sd = {k[10:]: v for k, v in tensors.items() if k.startswith("pair_head.")}
    ckpt = Checkpoint(
        model_cfg=ModelConfig.from_dict(meta["model"]),
        preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
        state_dict=model_sd,
        threshold=meta.get("threshold"),
        pair_head=head_sd or None,
        info=meta.get("info") or {},
    )
    stray = [k for k in tensors if not k.startswith(("model.", "pair_head."))]
    check_weights(ckpt.model_cfg, model_sd, head_sd, path, meta, stray, ckpt.fingerprint)
    return ckpt


def _check_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        best = p / "best.safetensors"
        if best.is_file():
            return best  # a run directory: use its best checkpoint
        raise SiamfaceError(f"{p} is a folder without best.safetensors; give a checkpoint file")
    if not p.is_file():
        raise SiamfaceError(f"checkpoint not found: {p}")
    if p.suffix == ".onnx":
        raise SiamfaceError(f"{p} is an ONNX model, not a PyTorch checkpoint")
    return p
