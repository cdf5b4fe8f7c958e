"""Training inputs that had no test: datasets streamed from disk, pretrained weight files,
folders written by `siamface prepare` (complete or not), and bf16 autocast."""

from __future__ import annotations

import json
import shutil

import pytest
import timm
import torch
from conftest import SHARED_DATA, TINY_BACKBONE, TINY_TRAIN, copy_identities, needs_data
from safetensors.torch import load_file, save_file

from siamface.cli.main import main
from siamface.errors import SiamfaceError
from siamface.folders.marker import read_marker, write_marker
from siamface.folders.scan_index import ScanIndex, scan_files
from siamface.model.checkpoint import read_metadata
from siamface.model.network import ModelConfig, build_model
from siamface.model.pretrained import load_backbone_file, load_pretrained
from siamface.tensors.dataset import FaceImageDataset
from siamface.train.config import make_config
from siamface.train.device import use_bf16
from siamface.train.fit import fit
from siamface.train.job import train
from siamface.train.run import Run, build_run
from siamface.train.state import Progress

pytestmark = needs_data
FAST = [*TINY_TRAIN, "augment=none", "epochs=1"]


QUIET = {"progress": False, "log": lambda s: None}


def _build(cfg, data, out) -> tuple[Run, Progress]:
    """A run assembled by the public ``build_run``, as ``siamface train`` assembles it."""
    state = Progress()
    return build_run(make_config(None, cfg), [data], out, state, **QUIET), state


def _train(cfg, data, out) -> dict:
    return train(make_config(None, cfg), [data], out, **QUIET)


# ----------------------------------------------------------------------------- streaming
def test_streamed_dataset_serves_the_decoded_pixels(pins_small, tmp_path):
    paths = sorted(pins_small.rglob("*.jpg"))[:10]
    index = ScanIndex(tmp_path / "index.sqlite")
    mem = scan_files(paths, 32, "decode", index, keep_pixels=True, workers=1, progress=False)
    assert mem.pixels is not None and all(f.ok for f in mem.facts)
    streamed = FaceImageDataset(labels=[0] * 10, size=32, paths=paths)
    for i in range(10):
        assert torch.equal(streamed.raw(i), mem.pixels[i])


def test_training_streamed_from_disk_equals_training_in_memory(pins_small, tmp_path):
    _train(FAST, pins_small, tmp_path / "mem")
    t, state = _build([*FAST, "cache_gb=0"], pins_small, tmp_path / "disk")  # no pixels in RAM
    fit(t, state)
    assert t.data.train.pixels is None and t.data.val_pixels is None
    a = load_file(str(tmp_path / "mem" / "last.safetensors"))
    b = load_file(str(tmp_path / "disk" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads((tmp_path / "mem" / "history.json").read_text())[-1]
    hb = json.loads((tmp_path / "disk" / "history.json").read_text())[-1]
    assert ha["val_auc"] == hb["val_auc"]  # validation embedded from disk gives the same


# ----------------------------------------------------------------------------- weight files
def _foreign_weights():
    torch.manual_seed(7)
    return timm.create_model(TINY_BACKBONE, pretrained=False, num_classes=0).state_dict()


def _backbone():
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone=TINY_BACKBONE, embedding_size=8)).backbone


def _same(backbone, sd) -> bool:
    own = backbone.state_dict()
    return all(torch.equal(own[k], sd[k]) for k in own)


def test_weight_files_in_the_usual_forms(tmp_path):
    sd = _foreign_weights()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "w.pth")
    # another implementation's names, same tensors in the same order (positional fallback)
    renamed = {f"net.layer{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(sd.items())}
    torch.save(renamed, tmp_path / "renamed.pt")
    for name in ("w.safetensors", "w.pth", "renamed.pt"):
        bb = _backbone()
        assert not _same(bb, sd)
        desc = load_backbone_file(bb, tmp_path / name)
        assert _same(bb, sd) and "tensors" in desc, name


def test_weight_files_that_do_not_fit_are_refused(tmp_path):
    other = timm.create_model("resnet10t", pretrained=False, num_classes=0).state_dict()
    torch.save(other, tmp_path / "resnet.pth")
    with pytest.raises(SiamfaceError, match="does not fit this backbone"):
        load_backbone_file(_backbone(), tmp_path / "resnet.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(SiamfaceError, match="cannot read weight file"):
        load_backbone_file(_backbone(), tmp_path / "junk.pth")
    with pytest.raises(SiamfaceError, match="not found"):
        load_backbone_file(_backbone(), tmp_path / "missing.pth")


def test_offline_package_weights_load_for_the_default_backbone():
    torch.manual_seed(0)
    net = build_model(ModelConfig())  # tf_efficientnet_lite0, the default
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    desc = load_pretrained(net.backbone, "tf_efficientnet_lite0", "auto")
    n = len([k for k in before if not k.endswith("num_batches_tracked")])
    assert f"({n}/{n} tensors)" in desc
    changed = sum(not torch.equal(before[k], v) for k, v in net.backbone.state_dict().items())
    assert changed >= n - 5


def test_train_starts_from_a_weight_file(pins_small, tmp_path):
    sd = _foreign_weights()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "init.safetensors"))
    cfg = [*FAST, f"pretrained={tmp_path / 'init.safetensors'}"]
    t, _ = _build(cfg, pins_small, tmp_path / "run")
    assert "init.safetensors" in t.weights_source
    assert _same(t.model.backbone.cpu(), sd)


# ----------------------------------------------------------------------------- prepared
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prep")
    raw = copy_identities(SHARED_DATA / "celeba_wild", tmp / "raw", 8, 4)
    out = tmp / "aligned"
    assert main(["prepare", str(raw), str(out), "--no-progress", "--workers", "1"]) == 0
    return raw, out


PREPARED_FAST = [*FAST, "val_identities=2", "batch_size=8", "m_per_class=2"]


def test_training_on_a_prepared_folder_records_the_alignment(prepared, tmp_path, capsys):
    raw, out = prepared
    run = tmp_path / "run"
    rc = main(["train", "--data", str(out), "--out", str(run), "--no-progress", *PREPARED_FAST])
    assert rc == 0
    meta = read_metadata(run / "best.safetensors")
    marker = read_marker(out)
    assert meta["preprocessing"]["aligned"] is True
    assert meta["preprocessing"]["align"] == marker["align"]
    report = json.loads((run / "dataset_report.json").read_text())
    assert not any("siamface_prepare" in f["path"] for f in report["ignored_files"])
    # the aligned model detects and aligns raw photos itself
    a, b = sorted(sorted(raw.iterdir())[0].iterdir())[:2]
    capsys.readouterr()
    assert main(["verify", "--model", str(run), str(a), str(b), "--json"]) in (0, 1)


def test_an_unfinished_prepare_is_refused_by_train(prepared, tmp_path, capsys):
    _, out = prepared
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    write_marker(partial, read_marker(partial) | {"complete": False})
    rc = main(["train", "--data", str(partial), "--out", str(tmp_path / "run"), "--no-progress",
               *PREPARED_FAST])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "not finished by 'siamface prepare'" in err and "siamface prepare" in err
    assert not (tmp_path / "run" / "best.safetensors").exists()
    assert (
        main(
            [
                "train",
                "--data",
                str(partial),
                "--out",
                str(tmp_path / "r2"),
                "--no-progress",
                *PREPARED_FAST,
                "align=false",
            ]
        )
        == 0
    )  # fmt: skip  (explicitly as plain crops)


# ----------------------------------------------------------------------------- bf16
def test_bf16_autocast_runs_the_forward_in_bf16(pins_small, tmp_path):
    assert use_bf16("bf16", torch.device("cpu")) and not use_bf16("auto", torch.device("cpu"))
    t, _ = _build([*FAST, "precision=bf16"], pins_small, tmp_path / "run")
    assert t.precision.dtype is torch.bfloat16
    dtypes = []
    hook = t.model.head.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    order = list(iter(t.sampler))[:16]
    x = torch.stack([t.data.train[i][0] for i in order])
    t.model.train()
    t.opt.train_mode()
    loss = t.step(x, t.data.train.labels[order]).loss
    hook.remove()
    assert dtypes == [torch.bfloat16] and torch.isfinite(torch.tensor(loss))
    assert all(p.dtype == torch.float32 for p in t.model.parameters())  # master weights


def test_bf16_training_end_to_end(pins_small, tmp_path):
    summary = _train([*FAST, "precision=bf16"], pins_small, tmp_path / "run")
    assert summary["epochs_completed"] == 1
    w = load_file(str(tmp_path / "run" / "best.safetensors"))
    assert all(v.dtype in (torch.float32, torch.int64) for v in w.values())
    assert all(torch.isfinite(v).all() for v in w.values() if v.is_floating_point())
