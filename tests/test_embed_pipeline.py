"""The one tensor loop (``embed_tensors``) and the one file pipeline (``embed_files``): every
caller gets the same embeddings, whatever the batching, the decoding pool or the backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE
from PIL import Image

from siamface.embed import create_embedder
from siamface.embed.pipeline import embed_files, plain_loader
from siamface.embed.tensors import batch_embedder, embed_tensors
from siamface.model.network import ModelConfig, build_model
from siamface.tensors.transforms import Preprocessing, normalize_batch

PRE = Preprocessing(image_size=64)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(1)
    return build_model(ModelConfig(backbone=TINY_BACKBONE, embedding_size=16))


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, 256, (7, 3, 64, 64), dtype=torch.uint8, generator=g)


def _reference(model: torch.nn.Module, faces: torch.Tensor, pre=PRE) -> np.ndarray:
    """The network on the whole stack at once, in eval mode (no batching, no channels-last)."""
    model.eval()
    with torch.no_grad():
        return model(normalize_batch(faces, pre)).float().numpy()


def test_embed_tensors_is_independent_of_batching_and_source(model, faces):
    model.train()
    ref = _reference(model, faces)
    model.train()
    by_tensor = embed_tensors(model, faces, PRE, batch_size=3).numpy()
    assert model.training  # the caller's mode is restored
    by_loader = embed_tensors(model, lambda a, b: faces[a:b], PRE, count=len(faces), batch_size=2)
    one_batch = batch_embedder(model, PRE)(faces.numpy())
    assert by_tensor.shape == (7, 16) and by_tensor.dtype == np.float32
    np.testing.assert_allclose(by_tensor, ref, atol=1e-5)
    np.testing.assert_allclose(by_loader.numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(one_batch, ref, atol=1e-5)
    assert embed_tensors(model, faces[:0], PRE).shape == (0, 0)
    with pytest.raises(ValueError, match="count="):
        embed_tensors(model, lambda a, b: faces[a:b], PRE)


def test_forward_sees_positions_and_no_grad_mode_keeps_state_trainable(model, faces):
    """The feature cache runs its own ``forward`` and stores per-image state during the loop,
    which later training steps write again: ``inference=False`` must leave that state an
    ordinary tensor (tensors made in inference mode refuse in-place updates outside it)."""
    kept: dict[str, torch.Tensor] = {}

    def forward(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        store = kept.setdefault("store", torch.zeros(len(faces), 16))
        store[index] = model(x)
        return store[index] * 2

    doubled = embed_tensors(model, faces, PRE, batch_size=3, forward=forward, inference=False)
    np.testing.assert_allclose(kept["store"].numpy(), _reference(model, faces), atol=1e-5)
    np.testing.assert_allclose(doubled.numpy(), 2 * kept["store"].numpy())
    kept["store"][0] += 1.0  # a training step updating the cache
    kept.clear()
    embed_tensors(model, faces, PRE, forward=forward)
    with pytest.raises(RuntimeError, match="[Ii]nference"):
        kept["store"][0] += 1.0


def _write_faces(folder: Path, faces: torch.Tensor) -> list[Path]:
    folder.mkdir()
    paths = []
    for i, f in enumerate(faces):
        p = folder / f"{i}.png"  # lossless: the decoded pixels are the tensor's
        Image.fromarray(f.permute(1, 2, 0).numpy()).save(p)
        paths.append(p)
    bad = folder / "bad.jpg"
    bad.write_bytes(b"not an image")
    return [*paths[:3], bad, *paths[3:]]


def test_file_pipeline_threads_and_processes_agree_and_report_bad_files(model, faces, tmp_path):
    paths = _write_faces(tmp_path / "imgs", faces)
    embed_batch = batch_embedder(model, PRE)
    common = dict(batch_size=3, loader=plain_loader(PRE), progress=False)
    procs, err_p = embed_files(embed_batch, paths, PRE, workers=1, **common)
    threads, err_t = embed_files(embed_batch, paths, PRE, workers=2, threads=True, **common)
    assert list(err_p) == list(err_t) == [3] and "image" in err_p[3]
    np.testing.assert_allclose(procs, _reference(model, faces), atol=1e-5)
    np.testing.assert_array_equal(procs, threads)
    none, errors = embed_files(embed_batch, paths[3:4], PRE, threads=True, empty_dim=16, **common)
    assert none.shape == (0, 16) and list(errors) == [0]


def test_checkpoint_backend_embeds_files_like_the_network(tiny_checkpoint, tmp_path):
    """``create_embedder`` on a checkpoint runs the file pipeline (decoding in processes) and
    the tensor loop; the result is the network's on the decoded faces. (Its ONNX export, which
    decodes in threads, is compared with it in test_export_onnx.py.)"""
    g = torch.Generator().manual_seed(5)
    faces = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8, generator=g)
    paths = _write_faces(tmp_path / "imgs", faces)
    model = create_embedder(tiny_checkpoint, device="cpu")
    assert not model.decode_in_threads
    emb, errors = model.embed_paths(paths, batch_size=2, workers=1, progress=False)
    assert list(errors) == [3]
    np.testing.assert_allclose(emb, _reference(model.model, faces, model.preprocessing), atol=1e-5)
    assert model.embed_batch(faces.numpy()[:0]).shape == (0, 32)
