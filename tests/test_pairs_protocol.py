"""LFW pairs files: parsing, writing, generation, image resolution, 10-fold accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from siamface.cli.main import main
from siamface.errors import SiamfaceError
from siamface.scores.protocol import (
    ImageIndex,
    best_threshold,
    kfold_accuracy,
    make_pairs,
    read_pairs,
    resolve_pairs,
    write_pairs,
)


def _folder(root, people: dict[str, int], lfw_names: bool = False):
    for name, n in people.items():
        d = root / name
        d.mkdir(parents=True)
        for i in range(1, n + 1):
            fname = f"{name}_{i:04d}.jpg" if lfw_names else f"img{i * 7 % 100:02d}.png"
            Image.new("RGB", (8, 8), (i * 20 % 255, 0, 0)).save(d / fname)
    return root


def test_hand_computed_two_fold_accuracy():
    # fold 0: same 0.9 0.8 | diff 0.3 0.85 ; fold 1: same 0.7 0.6 | diff 0.2 0.5
    scores = np.array([0.9, 0.8, 0.3, 0.85, 0.7, 0.6, 0.2, 0.5])
    same = np.array([1, 1, 0, 0, 1, 1, 0, 0], bool)
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    r = kfold_accuracy(scores, same, folds)
    # fold 0 is tested with fold 1's threshold 0.55 (midpoint of 0.5 and 0.6): 0.85 is
    # wrongly accepted -> 3/4; fold 1 with fold 0's 0.55 (lowest of the tied 0.55 / 0.875)
    # -> all 4 right.
    assert r.thresholds == pytest.approx([0.55, 0.55])
    assert r.accuracies == pytest.approx([0.75, 1.0])
    d = r.to_dict()
    assert d["accuracy_mean"] == pytest.approx(0.875)
    assert d["accuracy_std"] == pytest.approx(0.125)
    assert d["accuracy_sem"] == pytest.approx(np.std([0.75, 1.0], ddof=1) / np.sqrt(2))


def test_best_threshold_separable_and_ties():
    t, acc = best_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1], bool))
    assert acc == 1.0 and 0.2 < t < 0.8
    t, acc = best_threshold(np.array([0.5, 0.5]), np.array([1, 0], bool))
    assert acc == 0.5


def test_round_trip_and_lfw_naming(tmp_path):
    root = _folder(tmp_path / "lfw", {"Ann_A": 3, "Bob_B": 2, "Cy_C": 2, "Di_D": 2}, True)
    pf = make_pairs(root, folds=2, per_fold=2, seed=3)
    path = write_pairs(pf, tmp_path / "pairs.txt")
    text = path.read_text().splitlines()
    assert text[0] == "2\t2" and len(text) == 1 + 2 * 2 * 2
    back = read_pairs(path)
    assert [(p.name_a, p.index_a, p.name_b, p.index_b, p.fold) for p in back.pairs] == [
        (p.name_a, p.index_a, p.name_b, p.index_b, p.fold) for p in pf.pairs
    ]
    files = resolve_pairs(back, root, path)
    for p, (a, b) in zip(back.pairs, files, strict=True):
        assert a.name == f"{p.name_a}_{p.index_a:04d}.jpg"
        assert b.name == f"{p.name_b}_{p.index_b:04d}.jpg"


def test_make_pairs_properties(tmp_path):
    root = _folder(tmp_path / "d", {f"p{k:02d}": 4 + k % 3 for k in range(12)})
    pf = make_pairs(root, folds=3, per_fold=10, seed=1)
    assert len(pf.pairs) == 60 and pf.labels.sum() == 30
    keys = [tuple(sorted([(p.name_a, p.index_a), (p.name_b, p.index_b)])) for p in pf.pairs]
    assert len(set(keys)) == len(keys), "a pair is repeated"
    people_by_fold = [
        {n for p in pf.pairs if p.fold == f for n in (p.name_a, p.name_b)} for f in range(3)
    ]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not people_by_fold[a] & people_by_fold[b], "folds share a person"
    # per fold: same-person lines first, then different-person lines
    for f in range(3):
        fold = [p.same for p in pf.pairs if p.fold == f]
        assert fold == [True] * 10 + [False] * 10
    assert make_pairs(root, 3, 10, seed=1).pairs == pf.pairs
    assert make_pairs(root, 3, 10, seed=2).pairs != pf.pairs
    # sorted-order numbering resolves to real, distinct images
    idx = ImageIndex(root)
    for p in pf.pairs:
        a, b = idx.resolve(p.name_a, p.index_a), idx.resolve(p.name_b, p.index_b)
        assert a is not None and b is not None and a != b


def test_make_pairs_not_enough_data(tmp_path):
    root = _folder(tmp_path / "d", {"a": 2, "b": 2, "c": 2, "d": 2})
    with pytest.raises(SiamfaceError, match="per fold"):
        make_pairs(root, folds=3, per_fold=1)
    with pytest.raises(SiamfaceError, match="same-person pairs"):
        make_pairs(root, folds=2, per_fold=5)


@pytest.mark.parametrize(
    ("text", "line", "match"),
    [
        ("2\t3\t4\n", 1, "header"),
        ("x\t3\n", 1, "header"),
        ("1\t1\na\t1\t2\nb\t1\n", 3, "3 fields"),
        ("1\t1\na\t1\t2\t3\nb\t1\tc\t2\n", 2, "same-person line"),
        ("1\t1\na\t1\t2\nb\t1\tb\t2\n", 3, "names the same person"),
        ("1\t1\na\t0\t2\nb\t1\tc\t2\n", 2, "positive integer"),
        ("1\t1\na\tone\t2\nb\t1\tc\t2\n", 2, "positive integer"),
        ("1\t1\na\t1\t2\nb\t1\tc\t2\nz\t1\t2\n", None, "3 pair lines"),
    ],
)
def test_malformed_pairs_files_name_the_line(tmp_path, text, line, match):
    p = tmp_path / "pairs.txt"
    p.write_text(text)
    with pytest.raises(SiamfaceError, match=match) as err:
        read_pairs(p)
    assert str(p) in str(err.value)
    if line is not None:
        assert f"line {line}:" in str(err.value)


def test_missing_images_name_the_line(tmp_path):
    root = _folder(tmp_path / "d", {"a": 2, "b": 2})
    p = tmp_path / "pairs.txt"
    p.write_text("1\t2\na\t1\t2\nb\t1\t2\na\t1\tb\t2\nb\t1\tzed\t1\n")
    with pytest.raises(SiamfaceError, match=r"line 5: image zed 1 not found: no folder"):
        resolve_pairs(read_pairs(p), root, p)
    p.write_text("1\t1\na\t1\t9\na\t1\tb\t2\n")
    with pytest.raises(SiamfaceError, match=r"line 2: image a 9 not found: .* has 2 image"):
        resolve_pairs(read_pairs(p), root, p)


def test_cli_pairs_make_and_check(tmp_path, capsys):
    root = _folder(tmp_path / "d", {f"p{k}": 4 for k in range(6)})
    out = tmp_path / "pairs.txt"
    assert (
        main(["pairs", "make", str(root), "--folds", "2", "--per-fold", "4", "--out", str(out)])
        == 0
    )
    assert read_pairs(out).folds == 2
    assert main(["pairs", "check", str(out), "--data", str(root), "--json"]) == 0
    assert '"pairs": 16' in capsys.readouterr().out
    assert main(["pairs", "make", str(root), "--folds", "10", "--out", str(out)]) == 2
    assert "fewer --folds" in capsys.readouterr().err
    assert main(["pairs", "check", str(tmp_path / "nope.txt"), "--data", str(root)]) == 2
    assert "pairs file not found" in capsys.readouterr().err
