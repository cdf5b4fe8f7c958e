"""Centred networks (the training faces' mean embedding subtracted before the last
normalisation): the forward pass, checkpoints and ONNX carry it, and a fine-tuning run keeps
it only when validation people gain."""

from __future__ import annotations

import pytest
import test_finetune_verdict as verdict_tests
import torch
import torch.nn.functional as F
from conftest import TINY_BACKBONE

from siamface.errors import SiamfaceError
from siamface.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from siamface.model.network import ModelConfig, build_model
from siamface.tensors.transforms import Preprocessing

_train = verdict_tests._train
start_ckpt = verdict_tests.start_ckpt  # the same fixture: a random tiny starting model


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIAMFACE_CACHE", str(tmp_path / "cache"))


def _net() -> torch.nn.Module:
    torch.manual_seed(1)
    return build_model(ModelConfig(backbone=TINY_BACKBONE, embedding_size=16)).eval()


def test_a_centred_network_subtracts_the_centre_then_normalises_again():
    net = _net()
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        plain = net(x)
        c = plain.mean(0)
        net.set_centre(c)
        centred = net(x)
    assert net.cfg.centred and "centre" in net.state_dict()
    expect = F.normalize(plain - c, dim=1)
    assert torch.allclose(centred, expect, atol=1e-5)
    assert not torch.allclose(centred, plain, atol=1e-3)
    # centring spreads the faces apart: their mean cosine to one another falls
    off = ~torch.eye(5, dtype=torch.bool)
    assert (centred @ centred.T)[off].mean() < (plain @ plain.T)[off].mean()
    net.set_centre(None)
    assert not net.cfg.centred and "centre" not in net.state_dict()
    with torch.no_grad():
        assert torch.allclose(net(x), plain, atol=1e-6)
    with pytest.raises(SiamfaceError, match="centre has 3 values"):
        net.set_centre(torch.zeros(3))


def test_checkpoints_and_onnx_carry_the_centre(tmp_path):
    from siamface.export.onnx_export import export_onnx

    net = _net()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        net.set_centre(net(x).mean(0))
        want = net(x)
    ck = Checkpoint(net.cfg, Preprocessing(image_size=32), net.state_dict())
    path = save_checkpoint(ck, tmp_path / "c.safetensors")
    back = load_checkpoint(path)
    assert back.model_cfg.centred
    with torch.no_grad():
        assert torch.allclose(back.build()(x), want, atol=1e-6)
    report = export_onnx(path, tmp_path / "c.onnx")
    assert report.parity["max_abs_diff"] <= 1e-4
    # a checkpoint of a plain network still loads as plain (older files have no 'centred')
    plain = Checkpoint(
        ModelConfig(TINY_BACKBONE, 16), Preprocessing(image_size=32), _net().state_dict()
    )
    assert not load_checkpoint(save_checkpoint(plain, tmp_path / "p.safetensors")).model_cfg.centred


RUN = ["val_identities=3", "test_identities=3", "epochs=2", "lr=3e-3", "select_rule=best"]


def test_a_fine_tune_offers_the_centre_to_validation_people(pins_small, tmp_path, start_ckpt):
    """The verdict records the validation metric plain and centred; the candidate is centred
    exactly when centred was better, and best.safetensors holds a centre only if the verdict
    kept that candidate."""
    out = tmp_path / "run"
    s = _train(pins_small, out, f"init={start_ckpt}", *RUN, "verdict_replicates=100")
    v = s["verdict"]
    rec = v["centre"]
    assert rec["metric"] == "auc" and 0 < rec["norm"] < 1 and rec["faces"] > 0
    assert rec["kept"] == (rec["centred"] > rec["plain"])
    best = load_checkpoint(out / "best.safetensors")
    assert ("centred" in v.get("candidate", "")) == rec["kept"]
    centred_kept = rec["kept"] and v["kept"] == "fine-tuned"
    assert best.model_cfg.centred == centred_kept
    assert ("centre" in best.state_dict) == centred_kept


def test_centring_can_be_turned_off(pins_small, tmp_path, start_ckpt):
    out = tmp_path / "run"
    s = _train(
        pins_small,
        out,
        f"init={start_ckpt}",
        *RUN,
        "verdict_replicates=50",
        "finetune.centre=false",
    )
    assert "centre" not in s["verdict"]
    assert not load_checkpoint(out / "best.safetensors").model_cfg.centred


def test_a_centred_run_can_start_the_next_fine_tune(pins_small, tmp_path):
    """init= a centred checkpoint: the run's network holds that centre (fixed), trains, and
    its verdict does not centre twice."""
    net = _net()
    with torch.no_grad():
        net.set_centre(torch.nn.functional.normalize(torch.ones(16), dim=0) * 0.3)
    start = save_checkpoint(
        Checkpoint(net.cfg, Preprocessing(image_size=32), net.state_dict()),
        tmp_path / "centred.safetensors",
    )
    out = tmp_path / "run"
    s = _train(pins_small, out, f"init={start}", *RUN, "verdict_replicates=50")
    assert "centre" not in s["verdict"]
    best = load_checkpoint(out / "best.safetensors")
    assert best.model_cfg.centred
    assert torch.allclose(best.state_dict["centre"], net.centre)


def test_a_fresh_process_knows_the_built_in_face_architectures(tmp_path):
    """Loading a checkpoint of a registered face architecture (sface) needs nothing imported
    first: the registry brings its built-in architectures itself."""
    import subprocess
    import sys

    code = (
        "from siamface.model.registry import architecture_names; "
        "from siamface.model.network import ModelConfig, build_model; "
        "print(architecture_names()); build_model(ModelConfig('sface', 128))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "sface" in r.stdout
