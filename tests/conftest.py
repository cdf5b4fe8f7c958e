"""Shared fixtures: tiny models and small copies of the sample data, made per test session.

The sample faces live in ../shared/data (never copied into the repo). Tests that need them
skip with a clear reason when that folder is absent.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SIAMFACE_SHARED_DATA", REPO.parent / "shared" / "data"))
TINY_BACKBONE = "test_efficientnet"  # timm's ~0.1M-parameter test model: fast on 2 cores

# One cache folder (scan index, aligned faces, teacher embeddings) per test session, shared
# by the child processes tests start: nothing a previous run left behind can hide a bug.
if "SIAMFACE_CACHE" not in os.environ:
    import atexit
    import tempfile

    os.environ["SIAMFACE_CACHE"] = tempfile.mkdtemp(prefix="siamface-test-cache-")
    atexit.register(shutil.rmtree, os.environ["SIAMFACE_CACHE"], True)

#: The smallest training run worth testing on 2 cores: timm's test model at 32 px, no workers.
TINY_TRAIN = [
    f"backbone={TINY_BACKBONE}",
    "pretrained=none",
    "image_size=32",
    "embedding_size=16",
    "batch_size=16",
    "val_identities=4",
    "num_workers=0",
    "precision=fp32",
    "lr=1e-3",
]

needs_data = pytest.mark.skipif(
    not (SHARED_DATA / "pins90").is_dir(), reason=f"sample data not found at {SHARED_DATA}"
)


def copy_identities(src: Path, dst: Path, n_ids: int, n_imgs: int) -> Path:
    """Copy the first ``n_ids`` identity folders (``n_imgs`` images each) into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for ident in sorted(p for p in src.iterdir() if p.is_dir())[:n_ids]:
        out = dst / ident.name
        out.mkdir(exist_ok=True)
        for f in sorted(ident.iterdir())[:n_imgs]:
            shutil.copy2(f, out / f.name)
    return dst


@pytest.fixture(scope="session")
def pins_small(tmp_path_factory) -> Path:
    """12 identities x 8 tight face crops from pins90 (a private copy tests may modify)."""
    if not (SHARED_DATA / "pins90").is_dir():
        pytest.skip(f"sample data not found at {SHARED_DATA}")
    return copy_identities(SHARED_DATA / "pins90", tmp_path_factory.mktemp("pins") / "pins", 12, 8)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised tiny-backbone checkpoint (64 px, 32-d) with a threshold."""
    import torch

    from siamface.model.checkpoint import Checkpoint, save_checkpoint
    from siamface.model.network import ModelConfig, build_model
    from siamface.tensors.transforms import Preprocessing

    torch.manual_seed(0)
    cfg = ModelConfig(backbone=TINY_BACKBONE, embedding_size=32)
    model = build_model(cfg)
    ckpt = Checkpoint(
        model_cfg=cfg,
        preprocessing=Preprocessing(image_size=64),
        state_dict=model.state_dict(),
        threshold={"value": 0.5, "target_far": 1e-3, "method": "test", "source": "fixture"},
    )
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A real Milvus-protocol server (milvus-lite's gRPC server, tests/milvus_server.py),
    started once per session on a free port and stopped at the end."""
    pytest.importorskip("pymilvus", reason="the 'milvus' extra is not installed")
    pytest.importorskip("milvus_lite", reason="the 'milvus' extra is not installed")
    from milvus_server import MilvusServer

    server = MilvusServer(tmp_path_factory.mktemp("milvus") / "server").start()
    yield server
    server.close()
