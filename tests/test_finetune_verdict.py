"""The honest verdict of a fine-tune (test identities, bootstrap over identities), WiSE-FT,
domain conditions in training, and ``siamface evaluate --compare / --condition``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE

from siamface.errors import ConfigError, SiamfaceError
from siamface.model.checkpoint import load_checkpoint
from siamface.scores import bootstrap as bs
from siamface.scores.pairs import score_all_pairs
from siamface.tensors.conditions import parse_condition, path_key
from siamface.train.config import make_config
from siamface.train.job import train
from siamface.train.verdict import choose_alpha, mix_weights

FAST = ["batch_size=16", "num_workers=0", "precision=fp32"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIAMFACE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def start_ckpt(tmp_path_factory) -> str:
    """A random tiny starting model (32 px, 16-d): anything trained beats it on validation."""
    from siamface.model.checkpoint import Checkpoint, save_checkpoint
    from siamface.model.network import ModelConfig, build_model
    from siamface.tensors.transforms import Preprocessing

    torch.manual_seed(3)
    cfg = ModelConfig(backbone=TINY_BACKBONE, embedding_size=16)
    ck = Checkpoint(cfg, Preprocessing(image_size=32), build_model(cfg).state_dict())
    return str(save_checkpoint(ck, tmp_path_factory.mktemp("start") / "start.safetensors"))


def _face(seed: int = 0, size: int = 112) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    img = 128 + 60 * np.sin(x / 3.0)[..., None] * np.cos(y / 5.0)[..., None]
    return np.clip(img + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------- conditions
def test_conditions_are_deterministic_per_image_and_seed():
    img = _face()
    c = parse_condition("lowres:12-48,jpeg:15-70,noise:0-8,blur:0-2", seed=1)
    a, b = c.apply(img, 5), c.apply(img, 5)
    assert a.shape == img.shape and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, c.apply(img, 6))  # another image: another draw
    assert not np.array_equal(a, parse_condition(c.spec, seed=2).apply(img, 5))
    assert path_key("a/b.jpg") == path_key("a/b.jpg") != path_key("a/c.jpg")


def test_lowres_removes_detail_in_proportion_to_face_width():
    img = _face()

    def detail(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x.astype(np.float32), axis=1)).mean())

    d12 = detail(parse_condition("lowres:12").apply(img, 0))
    d40 = detail(parse_condition("lowres:40").apply(img, 0))
    assert d12 < d40 < detail(img)


def test_mask_covers_the_lower_face_only():
    img = _face()
    out = parse_condition("mask:0.6").apply(img, 0)
    changed = np.any(out != img, axis=2)
    rows = np.flatnonzero(changed.any(axis=1))
    assert changed.mean() > 0.15
    assert rows.min() > 52  # below the eyes of the ArcFace template (y ~ 51.6)


def test_misalign_moves_the_face_by_at_most_its_strength():
    """A crop cut from a detector's noisy landmarks: shifted a few pixels, not scrambled."""
    img = _face()
    assert np.array_equal(parse_condition("misalign:0").apply(img, 3), img)
    out = parse_condition("misalign:3").apply(img, 3)
    assert out.shape == img.shape and not np.array_equal(out, img)

    def best_shift(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
        a32, b32 = a.astype(np.float32)[20:92, 20:92], b.astype(np.float32)
        err = {
            (dx, dy): float(np.abs(a32 - b32[20 + dy : 92 + dy, 20 + dx : 92 + dx]).mean())
            for dx in range(-8, 9)
            for dy in range(-8, 9)
        }
        return min(err, key=err.get)

    dx, dy = best_shift(img, out)
    assert max(abs(dx), abs(dy)) <= 5 and (dx, dy) != (0, 0)


def test_bad_condition_specs_name_what_is_allowed():
    with pytest.raises(SiamfaceError, match="known: .*lowres"):
        parse_condition("lowress:28")
    with pytest.raises(SiamfaceError, match="jpeg takes 5-100"):
        parse_condition("jpeg:400")
    with pytest.raises(SiamfaceError, match="number or a range"):
        parse_condition("lowres:big")


# ----------------------------------------------------------------------- bootstrap
def _embeddings(noise: float, seed: int = 0, n_id: int = 30, per: int = 6):
    rng = np.random.default_rng(seed)
    lab = np.repeat(np.arange(n_id), per)
    centres = np.random.default_rng(99).normal(size=(n_id, 32))
    e = centres[lab] + rng.normal(size=(len(lab), 32)) * noise
    return e / np.linalg.norm(e, axis=1, keepdims=True), lab


def test_bootstrap_point_matches_exact_metrics_and_interval_covers_it():
    e, lab = _embeddings(1.5)
    h = bs.histograms_all_pairs(e, lab, bs.clusters_of(lab, 80))
    ci = bs.interval(h, replicates=200)
    exact = score_all_pairs(e, lab, None).metrics((1e-3,))
    assert ci["auc"]["value"] == pytest.approx(exact.auc, abs=2e-3)
    assert ci["eer"]["value"] == pytest.approx(exact.eer, abs=5e-3)
    for m in bs.METRICS:
        lo, hi = ci[m]["ci"]
        assert lo <= ci[m]["value"] <= hi and hi - lo > 0


def test_paired_comparison_sees_a_worse_model_and_not_itself():
    good, lab = _embeddings(1.2)
    bad, _ = _embeddings(1.8, seed=1)
    groups = bs.clusters_of(lab, 80)
    hg = bs.histograms_all_pairs(good, lab, groups)
    hb = bs.histograms_all_pairs(bad, lab, groups)
    same = bs.compare(hg, hg, replicates=200)
    assert all(r["significant"] is None and r["delta"] == 0 for r in same.values())
    worse = bs.compare(hb, hg, replicates=200)
    assert worse["auc"]["significant"] == "worse" and worse["eer"]["significant"] == "worse"
    assert worse["auc"]["delta_ci"][1] < 0


def test_guard_margin_tolerates_small_significant_losses_only():
    from siamface.train.verdict import worse_beyond

    small = {"delta_ci": [-0.006, -0.002]}
    assert worse_beyond(small, "accuracy", 0.0) and not worse_beyond(small, "accuracy", 0.01)
    assert worse_beyond({"delta_ci": [-0.05, -0.02]}, "auc", 0.01)
    assert worse_beyond({"delta_ci": [0.02, 0.04]}, "eer", 0.01)  # EER: higher is worse
    assert not worse_beyond({"delta_ci": [-0.02, 0.01]}, "tar_at_far_1e-3", 0.0)


def test_wise_ft_mix_must_keep_clean_faces():
    """The best mix under the condition loses when it is worse on clean validation faces; with
    none clean-safe the best of all stands (the verdict decides); ties go nearer the start."""
    rows = [
        {"alpha": 1.0, "auc": 0.90, "clean_worse": ["tar_at_far_1e-3"]},
        {"alpha": 0.75, "auc": 0.93, "clean_worse": ["accuracy"]},
        {"alpha": 0.5, "auc": 0.91, "clean_worse": []},
        {"alpha": 0.25, "auc": 0.89, "clean_worse": []},
    ]
    assert choose_alpha(rows, "auc") == 0.5
    assert choose_alpha([{**r, "clean_worse": ["auc"]} for r in rows], "auc") == 0.75
    unchecked = [{k: v for k, v in r.items() if k != "clean_worse"} for r in rows]
    assert choose_alpha(unchecked, "auc") == 0.75  # no clean check (no condition): best wins
    assert choose_alpha([{"alpha": 1.0, "eer": 0.2}, {"alpha": 0.5, "eer": 0.2}], "eer") == 0.5
    assert choose_alpha([{"alpha": 1.0, "eer": 0.1}, {"alpha": 0.5, "eer": 0.2}], "eer") == 1.0
    assert choose_alpha([{"alpha": 1.0, "auc": None}], "auc") == 1.0


def test_wise_ft_checks_each_mix_on_clean_validation_faces(pins_small, tmp_path, start_ckpt):
    """With a condition, every WiSE-FT row says on which metrics it is worse than the start on
    the clean validation faces, and the chosen mix is a clean-safe one whenever one exists."""
    summary = _train(
        pins_small,
        tmp_path / "run",
        f"init={start_ckpt}",
        "val_identities=3",
        "test_identities=3",
        "condition=jpeg:40",
        "epochs=3",
        "lr=3e-3",
        "select_rule=best",
        "select_metric=auc",
        "wise_ft=true",
        "verdict_replicates=100",
    )
    if summary["best_epoch"] == 0:
        pytest.skip("no epoch beat the random start on validation: nothing to mix")
    w = summary["verdict"]["wise_ft"]
    assert [r["alpha"] for r in w["validation"]] == [1.0, 0.75, 0.5, 0.25]
    assert all(isinstance(r["clean_worse"], list) for r in w["validation"])
    safe = {r["alpha"] for r in w["validation"] if not r["clean_worse"]}
    assert not safe or w["alpha"] in safe


def test_wise_ft_mixes_floating_weights_only():
    start = {"w": torch.zeros(3), "n": torch.tensor(4)}
    tuned = {"w": torch.ones(3), "n": torch.tensor(9)}
    mixed = mix_weights(start, tuned, 0.25)
    assert torch.allclose(mixed["w"], torch.full((3,), 0.25)) and int(mixed["n"]) == 9


# ----------------------------------------------------------------------- training
def _train(data, out, *overrides) -> dict:
    cfg = make_config(overrides=[*FAST, *overrides])
    return train(cfg, [str(data)], out, progress=False, log=lambda _: None)


def test_no_significant_gain_on_test_people_keeps_the_start(pins_small, tmp_path, start_ckpt):
    """Validation picks a fine-tuned epoch; on 4 test people the gain is not significant, so
    best.safetensors is rewritten as the start and the summary says why, with an interval."""
    out = tmp_path / "run"
    summary = _train(
        pins_small,
        out,
        f"init={start_ckpt}",
        "val_identities=3",
        "test_identities=4",
        "epochs=3",
        "lr=3e-3",
        "select_rule=best",
        "select_metric=auc",
        "wise_ft=true",
        "verdict_replicates=200",
    )
    v = summary["verdict"]
    assert v["test_identities"] == 4 and summary["best_epoch"] > 0
    report = json.loads((out / "dataset_report.json").read_text())
    assert set(report["test_identity_names"]).isdisjoint(report["val_identity_names"])
    assert len(v["wise_ft"]["validation"]) >= 2
    row = v["comparisons"]["test"]["auc"]
    lo, hi = row["delta_ci"]
    assert lo <= row["delta"] <= hi
    best = load_checkpoint(out / "best.safetensors")
    if v["kept"] == "start":
        assert "no significant gain" in v["verdict"] and "95% CI" in v["verdict"]
        assert best.fingerprint == load_checkpoint(start_ckpt).fingerprint
        assert lo <= 0 or any(
            r["significant"] == "worse" for r in v["comparisons"]["test"].values()
        )
    else:
        assert lo > 0 and best.fingerprint != load_checkpoint(start_ckpt).fingerprint


def test_condition_adds_cached_degraded_copies(pins_small, tmp_path, start_ckpt):
    """condition=... with condition_rate=0.5: one degraded copy per training image, anchored
    (keep_close) to the start's embedding of the clean image; the run resumes exactly."""
    from siamface.train.data import prepare_run_data

    cfg = make_config(
        overrides=[*FAST, "val_identities=3", "test_identities=3", "condition=lowres:20,jpeg:30"]
    )
    d = prepare_run_data(cfg, [str(pins_small)], progress=False)
    n = len(d.train) // 2
    assert len(d.train) == 2 * n and d.train_source[n:] == list(range(n))
    assert torch.equal(d.train.labels[n:], d.train.labels[:n])
    assert not torch.equal(d.train.raw(n), d.train.raw(0))
    again = prepare_run_data(cfg, [str(pins_small)], progress=False)
    assert torch.equal(again.train.raw(n + 1), d.train.raw(n + 1))  # deterministic
    assert not torch.equal(d.val_pixels[0:1], d.test_pixels[0:1])
    assert d.test_clean_pixels is not None and len(d.test_labels) == len(d.test_clean_pixels)
    assert d.val_clean_pixels is not None and len(d.val_labels) == len(d.val_clean_pixels)
    assert not torch.equal(d.val_clean_pixels[0:1], d.val_pixels[0:1])
    assert (
        prepare_run_data(
            make_config(overrides=[*FAST, "val_identities=3"]), [str(pins_small)], progress=False
        ).val_clean_pixels
        is None
    )  # no condition: validation is already clean


# ----------------------------------------------------------------------- evaluate CLI
def test_evaluate_compare_and_condition(pins_small, tiny_checkpoint, start_ckpt, tmp_path, capsys):
    """--compare: a model against itself differs by exactly 0 (not significant); against
    another model, intervals that contain the difference; --condition changes the scores;
    a bad spec is a one-line error with exit code 2."""
    from siamface.cli.main import main

    fast = ["--workers", "0", "--no-progress", "--replicates", "200"]
    data = ["--data", str(pins_small)]
    assert (
        main(
            [
                "evaluate",
                "--model",
                start_ckpt,
                "--compare",
                start_ckpt,
                *data,
                "--out",
                str(tmp_path / "same"),
                "--json",
                *fast,
            ]
        )
        == 0
    )
    same = json.loads(capsys.readouterr().out)
    assert all(r["delta"] == 0 and r["significant"] is None for r in same["metrics"].values())
    assert (
        main(
            [
                "evaluate",
                "--model",
                start_ckpt,
                "--compare",
                str(tiny_checkpoint),
                *data,
                "--out",
                str(tmp_path / "cmp"),
                *fast,
            ]
        )
        == 0
    )
    assert "95% CI" in capsys.readouterr().out
    rep = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    r = rep["metrics"]["auc"]
    assert r["delta_ci"][0] <= r["delta"] <= r["delta_ci"][1] and rep["identities"] == 12
    assert (
        main(
            [
                "evaluate",
                "--model",
                start_ckpt,
                *data,
                "--condition",
                "lowres:12,jpeg:20",
                "--out",
                str(tmp_path / "cond"),
                "--no-plots",
                "--json",
                *fast[:3],
            ]
        )
        == 0
    )
    cond = json.loads(capsys.readouterr().out)
    assert cond["condition"]["spec"] == "lowres:12,jpeg:20"
    assert (
        main(
            [
                "evaluate",
                "--model",
                start_ckpt,
                *data,
                "--out",
                str(tmp_path / "clean"),
                "--no-plots",
                "--json",
                *fast[:3],
            ]
        )
        == 0
    )
    clean = json.loads(capsys.readouterr().out)
    assert cond["metrics"]["auc"] != clean["metrics"]["auc"]
    assert (
        main(
            [
                "evaluate",
                "--model",
                start_ckpt,
                *data,
                "--condition",
                "fog:3",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    assert "unknown condition 'fog'" in capsys.readouterr().err


def test_start_embeddings_and_cached_features_follow_the_training_rows(pins_small, start_ckpt):
    """The training set is rows of a pixel store shared with validation (and degraded copies):
    item i must be embedded from its own row, not from row i of the store."""
    from siamface.model.network import build_model
    from siamface.tensors.transforms import normalize_batch
    from siamface.train.data import prepare_run_data
    from siamface.train.start import embed_dataset

    ck = load_checkpoint(start_ckpt)
    cfg = make_config(overrides=[*FAST, f"init={start_ckpt}", "val_identities=4"])
    d = prepare_run_data(cfg, [str(pins_small)], progress=False, base=ck.preprocessing)
    assert d.train.rows is not None
    assert not torch.equal(d.train.rows, torch.arange(len(d.train)))
    model = build_model(ck.model_cfg)
    model.load_state_dict(ck.state_dict)
    model.eval()
    got = embed_dataset(model, d.train, d.preprocessing, torch.device("cpu"), batch_size=8)
    idx = [0, len(d.train) // 2, len(d.train) - 1]
    x = normalize_batch(torch.stack([d.train.raw(i) for i in idx]), d.preprocessing)
    with torch.no_grad():
        want = model(x)
    assert torch.allclose(got[idx], want, atol=1e-4)


# ----------------------------------------------------------------------- L2-SP
def test_l2sp_term_measures_distance_to_the_start_over_trained_weights_only():
    from torch import nn

    from siamface.train.l2sp import L2SPTerm
    from siamface.train.objective import Batch

    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    term = L2SPTerm(model, start, weight=1.0)
    batch = Batch(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), torch.zeros(1, 2))
    assert float(term.compute(batch).detach()) == 0.0
    with torch.no_grad():
        model[0].weight.add_(0.5)  # 6 entries moved by 0.5: 6 * 0.25
        model[1].bias.add_(1.0)  # 2 entries by 1.0
    assert float(term.compute(batch).detach()) == pytest.approx(1.5 + 2.0)
    model[1].requires_grad_(False)  # frozen layers are not the term's business
    value = term.compute(batch)
    assert float(value.detach()) == pytest.approx(1.5)
    value.backward()  # the gradient pulls back towards the start
    assert torch.allclose(model[0].weight.grad, torch.full((2, 3), 1.0))
    assert not list(term.parameters())  # the model is not the objective's parameter twice


def test_l2sp_keeps_the_trained_weights_nearer_the_start(pins_small, tmp_path, start_ckpt):
    def drift(*extra: str) -> float:
        out = tmp_path / f"run{len(extra)}"
        _train(
            pins_small,
            out,
            f"init={start_ckpt}",
            "val_identities=3",
            "epochs=1",
            "lr=3e-3",
            "wise_ft=false",
            "test_identities=0",
            "select_rule=best",
            *extra,
        )
        a = load_checkpoint(out / "last.safetensors").state_dict
        b = load_checkpoint(start_ckpt).state_dict
        return sum(
            float((a[k].float() - b[k].float()).pow(2).sum())
            for k in b
            if b[k].is_floating_point() and "running" not in k
        )

    free, held = drift(), drift("l2sp=10")
    assert 0 < held < 0.5 * free
    with pytest.raises(ConfigError, match="l2sp pulls towards the starting weights"):
        make_config(overrides=["l2sp=1"])


# ----------------------------------------------------------------------- guard
def test_guard_people_from_another_domain_enter_the_verdict(pins_small, tmp_path, start_ckpt):
    """guard=DIR: the candidate and the start are compared on those people too, and a metric
    significantly worse there (beyond guard_margin) would keep the start."""
    from conftest import SHARED_DATA, copy_identities

    guard = copy_identities(SHARED_DATA / "att40", tmp_path / "att", 4, 4)
    summary = _train(
        pins_small,
        tmp_path / "run",
        f"init={start_ckpt}",
        "val_identities=3",
        "test_identities=4",
        "epochs=2",
        "lr=3e-3",
        "select_rule=best",
        "select_metric=auc",
        "verdict_replicates=100",
        f"guard={guard}",
    )
    v = summary["verdict"]
    if summary["best_epoch"] == 0:
        pytest.skip("no epoch beat the random start on validation: nothing to compare")
    assert v["guard"]["identities"] == 4 and v["guard"]["images"] == 16
    row = v["comparisons"]["guard"]["auc"]
    lo, hi = row["delta_ci"]
    assert lo <= row["delta"] <= hi
    worse = [k for k, r in v["comparisons"]["guard"].items() if r["delta_ci"][1] < -0.01]
    assert (v["kept"] == "start") or not worse


def test_an_unusable_guard_is_refused_early_or_named(tmp_path, pins_small):
    from siamface.tensors.transforms import Preprocessing
    from siamface.train.guard import load_guard

    with pytest.raises(ConfigError, match="not a folder"):
        make_config(overrides=[f"guard={tmp_path / 'nowhere'}"])
    one = tmp_path / "one" / "only_person"
    one.mkdir(parents=True)
    for f in sorted((pins_small / sorted(p.name for p in pins_small.iterdir())[0]).iterdir())[:3]:
        (one / f.name).write_bytes(f.read_bytes())
    with pytest.raises(SiamfaceError, match="at least 2 people"):
        load_guard(tmp_path / "one", Preprocessing(image_size=32))
