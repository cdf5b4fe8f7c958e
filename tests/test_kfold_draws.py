"""10-fold accuracy over drawn pairs files: the draws are the files `pairs make` writes, the
per-draw accuracy is the one `evaluate --pairs` gives on such a file, and a comparison pairs
two models draw by draw."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from siamface.cli.main import main
from siamface.errors import SiamfaceError
from siamface.scores.kfold_draws import (
    draw_pair_sets,
    kfold_over_draws,
    paired_kfold_draws,
)
from siamface.scores.protocol import make_pairs, resolve_pairs

FAST = ["--workers", "0", "--no-progress"]


def _folder(root, counts: list[int]):
    """People p00, p01, ... with the given image counts; file names not in sorted order of
    creation, so numbering follows the sorted listing."""
    labels, paths = [], []
    for k, n in enumerate(counts):
        d = root / f"p{k:02d}"
        d.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (k, i, 0)).save(d / f"img{(i * 7) % 10}{i}.png")
    for d in sorted(root.iterdir()):
        for f in sorted(d.iterdir()):
            labels.append(d.name)
            paths.append(f)
    return labels, paths


def test_draw_seed_is_the_file_pairs_make_writes(tmp_path):
    labels, paths = _folder(tmp_path / "people", [3, 4, 5, 3, 6, 4, 3, 5])
    row = {p: i for i, p in enumerate(paths)}
    pd = draw_pair_sets(labels, draws=3, folds=2, per_fold=4, seed=5)
    assert [d.seed for d in pd.draws] == [5, 6, 7] and pd.skipped == ()
    for d in pd.draws:
        pf = make_pairs(tmp_path / "people", folds=2, per_fold=4, seed=d.seed)
        files = resolve_pairs(pf, tmp_path / "people", tmp_path / "x")
        assert d.a.tolist() == [row[a] for a, _ in files]
        assert d.b.tolist() == [row[b] for _, b in files]
        assert d.same.tolist() == pf.labels.tolist()
        assert d.folds.tolist() == pf.fold_ids.tolist()
    # the draws differ from one another
    assert pd.draws[0].a.tolist() != pd.draws[1].a.tolist()


def test_draws_that_cannot_fill_a_fold_are_skipped_and_listed():
    # 4 people in 2 folds of 2. Same-person pairs: x 6, y 3, z 1, w 1. With 3 per fold a
    # draw works only when x and y are in different folds; the others are skipped.
    labels = ["x"] * 4 + ["y"] * 3 + ["z"] * 2 + ["w"] * 2
    pd = draw_pair_sets(labels, draws=3, folds=2, per_fold=3)
    assert len(pd.draws) == 3 and pd.skipped, "some seeds put x and y together"
    assert sorted([d.seed for d in pd.draws] + list(pd.skipped)) == list(
        range(len(pd.draws) + len(pd.skipped))
    )
    for d in pd.draws:
        fold_of = {labels[i]: f for i, f, s in zip(d.a, d.folds, d.same, strict=True) if s}
        assert fold_of["x"] != fold_of["y"]
    with pytest.raises(SiamfaceError, match="no pairs file of 5 pairs per fold"):
        draw_pair_sets(labels, draws=2, folds=2, per_fold=5)


def test_too_few_people_for_the_folds():
    with pytest.raises(SiamfaceError, match="need at least 2 per fold"):
        draw_pair_sets(["a", "a", "b", "b", "c", "c"], draws=1, folds=2, per_fold=1)


def test_kfold_over_draws_and_paired_delta():
    rng = np.random.default_rng(0)
    labels = [f"p{k}" for k in range(8) for _ in range(4)]
    centres = rng.normal(size=(8, 16))
    good = np.repeat(centres, 4, 0) + 0.3 * rng.normal(size=(32, 16))
    bad = np.repeat(centres, 4, 0) + 3.0 * rng.normal(size=(32, 16))
    good /= np.linalg.norm(good, axis=1, keepdims=True)
    bad /= np.linalg.norm(bad, axis=1, keepdims=True)
    pd = draw_pair_sets(labels, draws=4, folds=2, per_fold=6)
    acc_good, acc_bad = kfold_over_draws(good, pd), kfold_over_draws(bad, pd)
    assert len(acc_good) == 4 and min(acc_good) > max(acc_bad)
    rep = paired_kfold_draws({"good": (good, None), "bad": (bad, None)}, labels, 4, 6, folds=2)
    d = np.array(acc_good) - np.array(acc_bad)
    assert rep["delta"]["per_draw"] == pytest.approx(d.tolist(), abs=1e-6)
    assert rep["delta"]["mean"] == pytest.approx(d.mean())
    assert rep["accuracy"]["good"]["mean"] == pytest.approx(np.mean(acc_good))
    # a probe view: the second photo of each pair from other embeddings
    assert kfold_over_draws(good, pd, probe=bad) != acc_good


def test_cli_draw_accuracy_is_the_pairs_file_accuracy(
    pins_small, tiny_checkpoint, tmp_path, capsys
):
    model = str(tiny_checkpoint)
    pairs = tmp_path / "pairs_seed1.txt"
    assert (
        main(
            [
                "pairs",
                "make",
                str(pins_small),
                "--folds",
                "3",
                "--per-fold",
                "10",
                "--seed",
                "1",
                "--out",
                str(pairs),
            ]
        )
        == 0
    )
    capsys.readouterr()
    common = ["--model", model, "--data", str(pins_small), "--json", "--no-plots", *FAST]
    assert main(["evaluate", *common, "--pairs", str(pairs), "--out", str(tmp_path / "f")]) == 0
    file_acc = json.loads(capsys.readouterr().out)["kfold"]["accuracy_mean"]
    draws = ["--kfold-draws", "3", "--folds", "3", "--per-fold", "10"]
    assert main(["evaluate", *common, *draws, "--out", str(tmp_path / "d")]) == 0
    kd = json.loads(capsys.readouterr().out)["kfold_draws"]
    assert kd["seeds"] == [0, 1, 2] and kd["folds"] == 3 and kd["pairs_per_fold"] == 10
    assert kd["accuracy"]["per_draw"][1] == pytest.approx(file_acc, abs=1e-6)
    assert kd["accuracy"]["mean"] == pytest.approx(np.mean(kd["accuracy"]["per_draw"]))
    # the person-readable summary names the draws
    plain = ["--model", model, "--data", str(pins_small), "--no-plots", *FAST]
    assert main(["evaluate", *plain, *draws, "--out", str(tmp_path / "t")]) == 0
    assert "3-fold accuracy over 3 drawn pairs files" in capsys.readouterr().out
    # --compare with itself: the same accuracy per draw, a zero difference
    cmp = ["--compare", model, "--replicates", "20", "--out", str(tmp_path / "c")]
    assert main(["evaluate", *common, *draws, *cmp]) == 0
    rep = json.loads(capsys.readouterr().out)["kfold_draws"]
    assert rep["accuracy"]["model"]["per_draw"] == pytest.approx(kd["accuracy"]["per_draw"])
    assert rep["delta"]["per_draw"] == pytest.approx([0.0, 0.0, 0.0])


def test_cli_refusals(pins_small, tiny_checkpoint, tmp_path, capsys):
    common = ["--model", str(tiny_checkpoint), "--data", str(pins_small), *FAST]
    rc = main(["evaluate", *common, "--kfold-draws", "2", "--pairs", "x.txt"])
    assert rc == 2 and "with --pairs the file is the protocol" in capsys.readouterr().err
    rc = main(["evaluate", *common, "--per-fold", "5", "--out", str(tmp_path / "p")])
    assert rc == 2 and "add --kfold-draws N" in capsys.readouterr().err
    # 12 people cannot make 10 folds of 2
    rc = main(["evaluate", *common, "--kfold-draws", "2", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "12 identities, need at least 2 per fold (20 for 10 folds)" in err
    assert "Traceback" not in err
