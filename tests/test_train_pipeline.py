"""End-to-end `siamface train` on real faces: outputs, resume, bad data, exit codes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY_BACKBONE, TINY_TRAIN
from PIL import Image
from safetensors.torch import load_file

from siamface.cli.main import main
from siamface.model.checkpoint import load_checkpoint, read_metadata
from siamface.train.config import make_config
from siamface.train.fit import TrainingInterrupted
from siamface.train.hooks import Hook
from siamface.train.job import resume, train

FAST = TINY_TRAIN


def test_cli_train_writes_a_self_describing_checkpoint(pins_small, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--data",
            str(pins_small),
            "--out",
            str(out),
            "--no-progress",
            "--json",
            *FAST,
            "epochs=2",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.split("\n{", 1)[1].join(["{", ""]))
    assert summary["epochs_completed"] == 2
    for name in (
        "best.safetensors",
        "last.safetensors",
        "dataset_report.json",
        "history.json",
        "config.yaml",
        "train_state.pt",
    ):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").iterdir())
    report = json.loads((out / "dataset_report.json").read_text())
    assert report["identities"] == 12 and report["val_identities"] == 4
    everyone = {p.name for p in pins_small.iterdir()}
    val = set(report["val_identity_names"])
    # 4 real, distinct people held out; the other 8 (and only they) were trained on
    assert len(val) == 4 and val <= everyone
    assert report["train_identities"] == len(everyone - val) == 8
    assert report["train_images"] == 8 * 8 and report["val_images"] == 4 * 8
    meta = read_metadata(out / "best.safetensors")
    assert meta["model"]["backbone"] == TINY_BACKBONE and meta["preprocessing"]["image_size"] == 32
    assert 0 < meta["info"]["val_metrics"]["auc"] <= 1
    # the stored threshold is the one calibrated on the validation identities of the best
    # epoch, at the configured FAR (1e-3 by default), as history.json recorded it
    hist_best = next(h for h in json.loads((out / "history.json").read_text())
                     if h["epoch"] == meta["info"]["epoch"])  # fmt: skip
    assert meta["threshold"]["value"] == pytest.approx(hist_best["val_threshold"], abs=1e-9)
    assert meta["threshold"]["target_far"] == 1e-3
    assert meta["threshold"]["source"] == "validation identities"
    assert -1 <= meta["threshold"]["value"] <= 1
    # loadable by siamface alone, no architecture re-typed, embeddings are unit vectors
    model = load_checkpoint(out).build()
    emb = model(torch.rand(2, 3, 32, 32))
    assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    hist = json.loads((out / "history.json").read_text())
    best = max(hist, key=lambda h: h["val_auc"])
    assert meta["info"]["epoch"] == best["epoch"]  # best is chosen on validation, not train loss


def _final_weights(run_dir):
    return load_file(str(run_dir / "last.safetensors"))


def _same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def test_resume_after_epoch_boundary_matches_uninterrupted(pins_small, tmp_path):
    # t_max pins the cosine period, so stopping after epoch 1 does not change the schedule.
    fast = FAST + ["t_max=2"]
    quiet = {"progress": False, "log": lambda s: None}
    train(make_config(None, fast + ["epochs=2"]), [pins_small], tmp_path / "a", **quiet)
    train(make_config(None, fast + ["epochs=1"]), [pins_small], tmp_path / "b", **quiet)
    summary = resume(tmp_path / "b", ["epochs=2"], **quiet)
    assert summary["epochs_completed"] == 2
    _same_weights(_final_weights(tmp_path / "a"), _final_weights(tmp_path / "b"))


def test_ctrl_c_mid_epoch_saves_state_and_resume_matches(pins_small, tmp_path):
    cfg = FAST + ["epochs=1", "augment=none", "batch_size=8"]
    train(make_config(None, cfg), [pins_small], tmp_path / "a", progress=False, log=lambda s: None)

    class CtrlCAfterStep(Hook):
        """Ctrl-C landing between steps: after step 2 has finished, before step 3."""

        def on_step_end(self, view, result):
            if view.state.global_step == 2:
                raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(
            make_config(None, cfg),
            [pins_small],
            tmp_path / "b",
            progress=False,
            log=lambda s: None,
            hooks=[CtrlCAfterStep()],
        )
    state = torch.load(tmp_path / "b" / "train_state.pt", weights_only=True)
    assert state["step_in_epoch"] == 2 and state["epoch"] == 0
    resume(tmp_path / "b", progress=False, log=lambda s: None)
    _same_weights(_final_weights(tmp_path / "a"), _final_weights(tmp_path / "b"))


def test_bad_images_are_skipped_and_listed(pins_small, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(pins_small, data)
    person = sorted(data.iterdir())[0]
    (person / "truncated.jpg").write_bytes((next(person.glob("*.jpg"))).read_bytes()[:300])
    (person / "empty.png").write_bytes(b"")
    (person / "notes.jpg").write_text("not an image")
    (data / "lonely").mkdir()
    shutil.copy(next(person.glob("*.jpg")), data / "lonely" / "only.jpg")
    # issue 13: a 1x1 "photo", a broken link, a .gif and an empty person are reported too
    Image.new("RGB", (1, 1)).save(person / "tiny.png")
    (person / "ghost.jpg").symlink_to(tmp_path / "gone.jpg")
    Image.new("RGB", (40, 40)).save(person / "anim.gif")
    (data / "nobody").mkdir()
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--out", str(out), "--no-progress", *FAST, "epochs=1"])
    assert rc == 0
    report = json.loads((out / "dataset_report.json").read_text())
    bad = {u["path"].rsplit("/", 1)[1]: u["reason"] for u in report["unreadable"]}
    assert set(bad) == {"truncated.jpg", "empty.png", "notes.jpg", "tiny.png", "ghost.jpg"}
    assert "image too small" in bad["tiny.png"] and "broken symbolic link" in bad["ghost.jpg"]
    ignored = {u["path"].rsplit("/", 1)[1] for u in report["ignored_files"]}
    assert {"anim.gif", "nobody"} <= ignored
    assert report["empty_identities"] == [str(data / "nobody")]
    assert report["excluded_identities"] == ["lonely"]
    assert report["duplicates_across_identities"]  # the copied file lives under two people


@pytest.mark.parametrize(
    "args,message",
    [
        (["lr=-3"], "lr must be > 0"),
        (["batch_size=20", "m_per_class=8"], "multiple of m_per_class"),
        (["backbone=resnet_nope"], "unknown backbone 'resnet_nope'"),
        (["batch_size=64", "m_per_class=8", "val_identities=6"], "m_per_class"),
    ],
)
def test_cli_refuses_bad_config_before_work(pins_small, tmp_path, capsys, args, message):
    out = tmp_path / "run"
    rc = main(
        ["train", "--data", str(pins_small), "--out", str(out), "--no-progress", *FAST, *args]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_errors_for_wrong_paths(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a siamface run directory" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "r")]) == 2
    assert "--data" in capsys.readouterr().err
