"""Fine-tuning from a starting model (init=), never ending worse; distillation; freezing;
frozen-prefix feature caching; the aligned-face cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, TINY_BACKBONE, copy_identities, needs_data

from siamface.errors import ConfigError, SiamfaceError
from siamface.model.checkpoint import load_checkpoint
from siamface.train.config import make_config
from siamface.train.job import train

FAST = [
    "batch_size=16",
    "val_identities=4",
    "num_workers=0",
    "precision=fp32",
]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIAMFACE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def start_ckpt(tmp_path_factory) -> str:
    """A small trained-looking starting model: the tiny backbone at 32 px, 16-d."""
    from siamface.model.checkpoint import Checkpoint, save_checkpoint
    from siamface.model.network import ModelConfig, build_model
    from siamface.tensors.transforms import Preprocessing

    torch.manual_seed(1)
    cfg = ModelConfig(backbone=TINY_BACKBONE, embedding_size=16)
    ck = Checkpoint(cfg, Preprocessing(image_size=32), build_model(cfg).state_dict())
    return str(save_checkpoint(ck, tmp_path_factory.mktemp("start") / "start.safetensors"))


def _train(data, out, *overrides) -> dict:
    cfg = make_config(overrides=[*FAST, *overrides])
    return train(cfg, [str(data)], out, progress=False, log=lambda _: None)


def test_a_fine_tune_that_only_gets_worse_leaves_the_start_as_best(
    pins_small, tmp_path, start_ckpt
):
    """lr=5 wrecks the model; best.safetensors must then be the starting weights, epoch 0."""
    out = tmp_path / "run"
    summary = _train(
        pins_small, out, f"init={start_ckpt}", "lr=5", "epochs=2", "optimizer=sgd_step"
    )
    history = json.loads((out / "history.json").read_text())
    assert history[0]["epoch"] == 0 and history[0]["starting_model"]
    assert summary["best_epoch"] == 0
    assert summary["vs_start"]["improved"] is False
    assert "did not beat" in summary["vs_start"]["verdict"]
    best = load_checkpoint(out / "best.safetensors")
    assert best.fingerprint == load_checkpoint(start_ckpt).fingerprint
    assert best.info["init"]["fingerprint"] == best.fingerprint
    last = load_checkpoint(out / "last.safetensors")
    assert last.fingerprint != best.fingerprint  # it did train


def test_not_worse_rule_refuses_an_epoch_worse_on_any_metric():
    from siamface.train.start import not_worse

    start = {"val_auc": 0.9, "val_eer": 0.1, "val_tar_at_far_1e-3": 0.5, "val_accuracy": 0.9}
    assert not_worse(dict(start), start)
    assert not_worse(start | {"val_auc": 0.95}, start)
    assert not not_worse(start | {"val_auc": 0.95, "val_eer": 0.11}, start)
    assert not not_worse(start | {"val_tar_at_far_1e-3": 0.49}, start)


def test_init_sets_the_architecture_and_refuses_conflicts(pins_small, tmp_path, start_ckpt):
    with pytest.raises(ConfigError, match="conflicts with init"):
        _train(pins_small, tmp_path / "r", f"init={start_ckpt}", "embedding_size=64")
    with pytest.raises(SiamfaceError, match="not found|built-in"):
        _train(pins_small, tmp_path / "r2", "init=/no/such/model.safetensors")
    summary = _train(pins_small, tmp_path / "r3", f"init={start_ckpt}", "epochs=1", "lr=1e-4")
    ck = load_checkpoint(tmp_path / "r3" / "last.safetensors")
    assert ck.model_cfg.backbone == TINY_BACKBONE and ck.model_cfg.embedding_size == 16
    assert ck.preprocessing.image_size == 32
    assert set(summary["vs_start"]["metrics"]) >= {"auc", "eer", "accuracy"}


def test_trainable_head_and_frozen_bn_leave_the_backbone_untouched(
    pins_small, tmp_path, start_ckpt
):
    out = tmp_path / "run"
    _train(
        pins_small,
        out,
        f"init={start_ckpt}",
        "trainable=head",
        "epochs=1",
        "lr=1e-2",
        "select_rule=best",
    )
    before = load_checkpoint(start_ckpt).state_dict
    after = load_checkpoint(out / "last.safetensors").state_dict
    bb = [k for k in before if k.startswith("backbone.")]
    assert bb and all(torch.equal(before[k], after[k]) for k in bb)  # incl. BN statistics
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_trainable_last_stages_trains_only_those(pins_small, tmp_path, start_ckpt):
    from siamface.model.network import ModelConfig, build_model
    from siamface.train.freeze import apply_trainable, backbone_stages

    model = build_model(ModelConfig(backbone=TINY_BACKBONE, embedding_size=16))
    stages = backbone_stages(model.backbone)
    apply_trainable(model, "1", backbone_frozen=False, bn_frozen=True)
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in stages[-1].parameters()} <= trained
    assert not {id(p) for p in stages[0].parameters()} & trained
    assert {id(p) for p in model.head.parameters()} <= trained


def test_distillation_term_is_zero_only_when_the_student_matches():
    from siamface.train.distill import DistillationTerm
    from siamface.train.objective import Batch

    t = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    term = DistillationTerm("d", t, torch.ones(6, dtype=torch.bool), 8, 1.0, 1.0)
    idx = torch.arange(6)
    same = Batch(inputs=torch.zeros(1), labels=idx, embeddings=t.clone(), extras={"index": idx})
    assert float(term.compute(same)) == pytest.approx(0.0, abs=1e-6)
    other = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    diff = Batch(inputs=torch.zeros(1), labels=idx, embeddings=other, extras={"index": idx})
    assert float(term.compute(diff)) > 0.1
    # a student of another size goes through a learned projection for the embedding term
    wide = DistillationTerm("d", t, torch.ones(6, dtype=torch.bool), 32, 1.0, 0.0)
    assert wide.proj is not None and wide.proj.in_features == 32


def test_distillation_run_caches_teacher_embeddings(pins_small, tmp_path, start_ckpt):
    logs: list[str] = []
    cfg = make_config(
        overrides=[
            *FAST,
            f"backbone={TINY_BACKBONE}",
            "pretrained=none",
            "image_size=32",
            "embedding_size=24",
            f"teacher={start_ckpt}",
            "epochs=1",
        ]
    )
    train(cfg, [str(pins_small)], tmp_path / "a", progress=False, log=logs.append)
    assert any("embedding" in line and "(0 cached)" in line for line in logs)
    cache_files = list((tmp_path / "cache" / "teachers").glob("*.sqlite"))
    assert len(cache_files) == 1
    logs.clear()
    train(cfg, [str(pins_small)], tmp_path / "b", progress=False, log=logs.append)
    assert not any("(0 cached)" in line for line in logs)  # all hits: nothing re-embedded
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert history[-1]["train_loss"] is not None


def test_prefix_cache_step_equals_the_full_step(start_ckpt):
    """The cached path computes the same embeddings and loss as the plain forward."""
    import copy

    from siamface.model.checkpoint import load_checkpoint as load
    from siamface.model.network import ModelConfig, build_model
    from siamface.train.feature_cache import PrefixFeatureCache
    from siamface.train.freeze import apply_trainable, backbone_stages

    ck = load(start_ckpt)
    model = build_model(ModelConfig(backbone=TINY_BACKBONE, embedding_size=16))
    model.load_state_dict(ck.state_dict)
    model.train()
    apply_trainable(model, "head", backbone_frozen=True, bn_frozen=True)
    x = torch.randn(5, 3, 32, 32)
    ref = model(x)
    n_stages = len(backbone_stages(model.backbone))
    cache = PrefixFeatureCache(copy.deepcopy(model), n_stages, 10)
    got = cache.suffix(cache.features(x, torch.arange(5)))
    assert torch.allclose(ref, got, atol=2e-3)
    assert cache.filled[:5].all() and not cache.filled[5:].any()


@needs_data
def test_aligned_face_cache_detects_once(tmp_path, monkeypatch):
    from siamface.faces import detect
    from siamface.faces.cache import CachedAlignedDecoder
    from siamface.model.zoo import get_pretrained

    data = copy_identities(SHARED_DATA / "celeba_wild", tmp_path / "raw", 2, 2)
    files = sorted(p for p in data.rglob("*") if p.is_file())
    pre = get_pretrained("sface").preprocessing()
    first = [CachedAlignedDecoder(pre)(f) for f in files]
    assert all(a.shape == (112, 112, 3) for a in first)

    def no_detector(*a, **k):
        raise AssertionError("detector called although the crop is cached")

    monkeypatch.setattr(detect, "get_detector", no_detector)
    monkeypatch.setattr("siamface.faces.align.get_detector", no_detector)
    again = [CachedAlignedDecoder(pre)(f) for f in files]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    # a moved file is still a hit (keyed by content)
    moved = tmp_path / "moved.jpg"
    os.replace(files[0], moved)
    assert np.array_equal(CachedAlignedDecoder(pre)(moved), first[0])


@needs_data
def test_fine_tune_sface_on_raw_photos(tmp_path):
    """init=sface on a raw-photo folder: faces are aligned (and cached), epoch 0 is the start,
    the head trains on cached backbone features, and the checkpoint says where it began."""
    data = copy_identities(SHARED_DATA / "celeba_wild", tmp_path / "raw", 8, 4)
    logs: list[str] = []
    cfg = make_config(
        overrides=[
            "init=sface",
            "trainable=head",
            "augment=none",
            "epochs=2",
            "batch_size=8",
            "m_per_class=2",
            "val_identities=3",
            "num_workers=0",
            "loss=cosface",
            "miner=none",
            "keep_close=1",
        ]
    )
    summary = train(cfg, [str(data)], tmp_path / "run", progress=False, log=logs.append)
    assert any("caching the output of the whole backbone" in line for line in logs)
    assert any("class centres start" in line for line in logs)
    assert summary["init"]["name"] == "sface"
    ck = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert ck.model_cfg.backbone == "sface" and ck.preprocessing.aligned
    assert list((tmp_path / "cache" / "faces").glob("faces-*.sqlite"))


def test_unlabeled_faces_join_distillation_only(pins_small, tmp_path, start_ckpt):
    """--unlabeled images reach the teacher (cached) and the batches, never the metric loss."""
    import sqlite3
    import subprocess
    import sys

    unl = tmp_path / "unlabeled" / "any" / "layout"
    unl.mkdir(parents=True)
    extra = sorted(p for p in pins_small.rglob("*.jpg"))[:10]
    for i, f in enumerate(extra):
        (unl / f"u{i}.jpg").write_bytes(f.read_bytes() + b"\0" * (i + 1))  # distinct content
    with pytest.raises(ConfigError, match="teacher"):
        make_config(overrides=[f"unlabeled={unl}"])
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "siamface",
            "train",
            "--data",
            str(pins_small),
            "--out",
            str(tmp_path / "run"),
            "--unlabeled",
            str(tmp_path / "unlabeled"),
            "--no-progress",
            *FAST,
            f"backbone={TINY_BACKBONE}",
            "pretrained=none",
            "image_size=32",
            "embedding_size=16",
            f"teacher={start_ckpt}",
            "epochs=1",
            "unlabeled_per_batch=4",
        ],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (db,) = (tmp_path / "cache" / "teachers").glob("*.sqlite")
    n = sqlite3.connect(db).execute("SELECT COUNT(*) FROM emb").fetchone()[0]
    info = load_checkpoint(tmp_path / "run" / "last.safetensors").info
    assert info["unlabeled_images"] == 10
    assert n == info["train_images"] + 10  # every training image and every unlabeled one
    cfg = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert cfg["distill"]["unlabeled"][0].endswith("unlabeled")


def test_cached_validation_matches_the_full_forward(pins_small, tmp_path, start_ckpt):
    """Epoch 0 scored through cached frozen features equals the plain forward's score."""
    cached = _train(
        pins_small,
        tmp_path / "a",
        f"init={start_ckpt}",
        "trainable=head",
        "augment=none",
        "epochs=1",
    )
    plain = _train(
        pins_small,
        tmp_path / "b",
        f"init={start_ckpt}",
        "trainable=head",
        "augment=default",
        "epochs=1",
    )
    assert cached["vs_start"]["metrics"]["auc"]["start"] == pytest.approx(
        plain["vs_start"]["metrics"]["auc"]["start"], abs=2e-3
    )
    assert cached["vs_start"]["metrics"]["eer"]["start"] == pytest.approx(
        plain["vs_start"]["metrics"]["eer"]["start"], abs=2e-2
    )
