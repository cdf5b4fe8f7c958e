"""The parts that let training scale: fp16 loss scaling, gradient accumulation, device-side
augmentation, the cached scan index, streaming from disk, the validation cap, partial FC."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import TINY_TRAIN
from pytorch_metric_learning import losses
from torch import nn

from siamface.folders.scan_index import INDEX_FILE, ScanIndex, scan_files
from siamface.tensors.batch_augment import BatchAugment
from siamface.tensors.transforms import Preprocessing, train_augmentation
from siamface.train.config import make_config
from siamface.train.data import cap_validation
from siamface.train.fit import fit
from siamface.train.objective import MetricLossTerm, Objective
from siamface.train.optim import OptimizerBundle
from siamface.train.partial_fc import PartialFCLoss
from siamface.train.run import Run, build_run
from siamface.train.state import Progress
from siamface.train.step import TrainStep

FAST = TINY_TRAIN
QUIET = {"progress": False, "log": lambda s: None}


def _fit(cfg: list[str], data: Path, out: Path) -> tuple[Run, dict]:
    """Build a run with the public ``build_run``, train it with ``fit``; both returned."""
    state = Progress()
    run = build_run(make_config(None, cfg), [data], out, state, **QUIET)
    try:
        return run, fit(run, state)
    finally:
        run.reporter.close()


class LinearNet(nn.Module):
    """No BatchNorm: splitting a batch into micro-batches must not change the gradient."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(3 * 8 * 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.head(x.flatten(1)), dim=1)


def _step(model: nn.Module, loss: nn.Module, lr: float, **kw) -> TrainStep:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    bundle = OptimizerBundle(opt, None, per_step=False, on_metric=False, schedule_free=False)
    pre = Preprocessing(image_size=8)
    objective = Objective([MetricLossTerm(loss, None)])
    kw.setdefault("autocast_dtype", None)
    return TrainStep(model, objective, bundle, torch.device("cpu"), pre, False, **kw)


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8), torch.arange(n) // 2


def test_gradient_accumulation_averages_micro_batch_gradients():
    x, y = _batch()
    loss = losses.ContrastiveLoss(pos_margin=1.0, neg_margin=0.1)
    # Expected: one SGD step on the mean of the two halves' gradients.
    ref = LinearNet()
    step = _step(ref, loss, 0.5)
    grads = []
    for half in (slice(0, 4), slice(4, 8)):
        ref.zero_grad()
        xb = step.inputs(x[half])
        loss(ref(xb), y[half]).backward()
        grads.append([p.grad.clone() for p in ref.parameters()])
    expected = [
        p.detach() - 0.5 * (a + b) / 2 for p, a, b in zip(ref.parameters(), *grads, strict=True)
    ]
    model = LinearNet()
    result = _step(model, loss, 0.5, autocast_dtype=None, grad_accum=2)(x, y)
    assert result.images == 8
    for p, e in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(p, e, atol=1e-6)


def test_fp16_loss_scaling_skips_overflowing_steps_and_backs_off():
    x, y = _batch()
    loss = losses.ContrastiveLoss(pos_margin=1.0, neg_margin=0.1)
    model = LinearNet()
    step = _step(model, loss, 0.5, autocast_dtype=torch.float16, grad_scaler=True)
    assert step.scaler.is_enabled()
    before = [p.detach().clone() for p in model.parameters()]
    result = step(x, y)  # default scale 2**16: gradients finite in fp32 master weights
    assert not result.skipped
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # A scale so large that the scaled loss overflows: the update is skipped, scale halves.
    step.scaler = torch.amp.GradScaler("cpu", init_scale=3.0e38)
    before = [p.detach().clone() for p in model.parameters()]
    result = step(x, y)
    assert result.skipped and step.scaler.get_scale() == pytest.approx(1.5e38)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_batch_augmentation_is_per_image_and_reproducible():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    aug = BatchAugment("default")
    seeds = torch.tensor([11, 12, 13, 14])
    out = aug(x, seeds)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, aug(x, seeds))  # same seeds, same result
    # An image's augmentation depends on its seed only, not on its batch-mates.
    assert torch.equal(out[2:3], aug(x[2:3], seeds[2:3]))
    assert not torch.equal(out[0], aug(x[0:1], torch.tensor([99]))[0])
    # Two copies of one image with different seeds are augmented differently.
    same = x[:1].repeat(2, 1, 1, 1)
    two = aug(same, torch.tensor([1, 2]))
    assert not torch.equal(two[0], two[1])
    assert torch.equal(BatchAugment("none")(x, seeds), x)


@pytest.mark.parametrize("strength", ["default", "article"])
def test_loader_augmentation_keeps_uint8_chw_and_follows_the_seed(strength):
    """The loader path (PIL kernels inside) hands back what the step expects, and the same
    seed gives the same image (what bit-exact resume relies on)."""
    x = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8)
    aug = train_augmentation(48, strength)

    def seeded(seed: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return aug(x)

    out = seeded(5)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, seeded(5)) and not torch.equal(out, seeded(6))
    assert not torch.equal(out, x)
    assert torch.equal(train_augmentation(48, "none")(x), x)


def test_scan_index_is_reused_and_rechecks_changed_files(pins_small, tmp_path):
    paths = sorted(pins_small.rglob("*.jpg"))[:20]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(paths[0].read_bytes()[:200])
    files = [*paths, bad]
    db = tmp_path / INDEX_FILE
    first = scan_files(files, 32, "decode", ScanIndex(db), keep_pixels=True, progress=False)
    assert first.checked == len(files)
    assert [f.ok for f in first.facts] == [True] * 20 + [False]
    assert first.pixels.shape == (21, 3, 32, 32) and first.pixels[20].sum() == 0
    assert first.pixels[0].float().std() > 0
    again = scan_files(files, 32, "decode", ScanIndex(db), keep_pixels=False, progress=False)
    assert again.checked == 0 and again.facts == first.facts
    # Decoded pixels were saved beside the index: the next run maps them, decoding nothing.
    mapped = scan_files(files, 32, "decode", ScanIndex(db), keep_pixels=True, progress=False)
    assert mapped.pixels_from_disk and mapped.checked == 0
    assert torch.equal(mapped.pixels, first.pixels)
    bad.write_bytes(paths[1].read_bytes())  # repaired: size changed, checked again
    os.utime(bad, ns=(1, 1))
    third = scan_files(files, 32, "decode", ScanIndex(db), keep_pixels=False, progress=False)
    assert third.checked == 1 and third.facts[-1].ok
    assert third.facts[-1].sha256 == third.facts[1].sha256  # identical bytes, same digest
    # A damaged index is only a cache: the scan still works (from scratch).
    db.write_bytes(b"not a database" * 100)
    for extra in ("-wal", "-shm"):
        Path(str(db) + extra).unlink(missing_ok=True)
    fourth = scan_files(files, 32, "decode", ScanIndex(db), keep_pixels=False, progress=False)
    assert fourth.checked == len(files) and [f.ok for f in fourth.facts] == [
        f.ok for f in third.facts
    ]


def test_streaming_run_with_index_and_validation_cap(pins_small, tmp_path):
    cache = tmp_path / "cache"
    cfg = [*FAST, "epochs=1", "cache_gb=0", f"scan_cache={cache}", "val_max_images=17"]
    t, _ = _fit(cfg, pins_small, tmp_path / "a")
    assert t.data.train.pixels is None  # nothing kept in RAM: decoded from disk per batch
    assert t.data.scan["checked_now"] == 96 and not t.data.scan["pixels_in_ram"]
    # 4 validation identities of 8 images, capped at 17 images: whole identities, 2 of them.
    assert len(t.data.val_identities) == 2 and len(t.data.val_labels) == 16
    with sqlite3.connect(cache / INDEX_FILE) as db:
        assert db.execute("SELECT count(*) FROM files").fetchone()[0] == 96
    t2, _ = _fit(cfg, pins_small, tmp_path / "b")
    assert t2.data.scan["checked_now"] == 0 and t2.data.scan["from_index"] == 96
    hist = json.loads((tmp_path / "b" / "history.json").read_text())
    assert hist[0]["val_auc"] is not None


def test_cap_validation_keeps_whole_identities():
    counts = Counter({f"id{i}": 10 for i in range(10)})
    ids = sorted(counts)
    kept = cap_validation(ids, counts, 35, seed=0)
    assert len(kept) == 3 and set(kept) <= set(ids)
    assert cap_validation(ids, counts, 0, seed=0) == ids
    assert cap_validation(ids, counts, 5, seed=0).__len__() == 2  # a pair needs 2 people
    assert kept == cap_validation(ids, counts, 35, seed=0)


# ---------------------------------------------------------------- partial FC
def test_partial_fc_at_full_rate_is_pmls_arcface():
    torch.manual_seed(0)
    pml = losses.ArcFaceLoss(10, 16, margin=28.6, scale=30)
    pfc = PartialFCLoss.from_pml(pml, "arcface", 1.0, 0)
    emb = nn.functional.normalize(torch.randn(12, 16), dim=1).requires_grad_()
    y = torch.randint(0, 10, (12,))
    a, b = pml(emb, y), pfc(emb, y)
    assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-6)
    ga, gb = torch.autograd.grad(a, emb)[0], torch.autograd.grad(b, emb)[0]
    assert torch.allclose(ga, gb, atol=1e-5)


def test_partial_fc_sampling_scores_own_classes_and_a_fraction_of_the_rest():
    pfc = PartialFCLoss(1000, 8, "cosface", 0.35, 30.0, sample_rate=0.1, seed=0)
    y = torch.tensor([3, 3, 500, 999])
    idx = pfc._sampled(y)
    assert len(idx) == 100 and {3, 500, 999} <= set(idx.tolist())
    emb = nn.functional.normalize(torch.randn(4, 8), dim=1)
    loss = pfc(emb, y)
    loss.backward()
    touched = (pfc.weight.grad.abs().sum(1) > 0).nonzero().squeeze(1)
    assert set(touched.tolist()) <= set(idx.tolist()) and {3, 500, 999} <= set(touched.tolist())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sharded_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    pml = losses.ArcFaceLoss(10, 16, margin=28.6, scale=30)
    pfc = PartialFCLoss.from_pml(pml, "arcface", 1.0, 0)
    emb = nn.functional.normalize(torch.randn(8, 16), dim=1)
    y = torch.tensor([0, 0, 3, 3, 5, 5, 9, 9])
    pfc.shard(world, rank)
    local = emb[rank * 4 : rank * 4 + 4].clone().requires_grad_()
    loss = pfc(local, y[rank * 4 : rank * 4 + 4])
    loss.backward()
    full = pfc.state_dict()["weight"]  # gathered from both processes
    torch.save(
        {"loss": loss.detach(), "emb_grad": local.grad, "w_grad": pfc.weight.grad, "full": full},
        f"{out}/rank{rank}.pt",
    )
    dist.destroy_process_group()


def test_partial_fc_sharded_over_two_processes_matches_one(tmp_path):
    torch.manual_seed(0)
    pml = losses.ArcFaceLoss(10, 16, margin=28.6, scale=30)
    ref = PartialFCLoss.from_pml(pml, "arcface", 1.0, 0)
    emb = nn.functional.normalize(torch.randn(8, 16), dim=1).requires_grad_()
    y = torch.tensor([0, 0, 3, 3, 5, 5, 9, 9])
    loss = ref(emb, y)
    loss.backward()
    mp.spawn(_sharded_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for r, p in enumerate(parts):
        assert float(p["loss"]) == pytest.approx(float(loss), rel=1e-5)
        # DDP averages the model's gradients over the 2 processes: /2 gives the true one.
        assert torch.allclose(p["emb_grad"] / 2, emb.grad[r * 4 : r * 4 + 4], atol=1e-5)
        assert torch.allclose(p["full"], ref.weight.detach())
    w_grad = torch.cat([p["w_grad"] for p in parts])  # each process holds 5 of the 10 centres
    assert torch.allclose(w_grad, ref.weight.grad, atol=1e-5)


def test_gpu_path_options_train_on_cpu(pins_small, tmp_path):
    """bf16 autocast, per-batch augmentation on the device and 2 accumulation micro-batches,
    end to end (on CPU here: the same code runs on CUDA)."""
    cfg = [*FAST, "epochs=1", "precision=bf16", "augment_on=device", "grad_accum=2"]
    t, summary = _fit(cfg, pins_small, tmp_path / "run")
    assert t.precision.name == "bf16" and t.step.augment is not None
    assert t.data.train.transform is None  # augmented per batch in the step instead
    assert summary["steps"] == 4
    rec = json.loads((tmp_path / "run" / "history.json").read_text())[0]
    assert rec["train_loss"] == rec["train_loss"] and rec["val_auc"] is not None  # not NaN
    with pytest.raises(Exception, match="multiple of grad_accum"):
        make_config(None, [*FAST, "grad_accum=3"])
