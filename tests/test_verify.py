"""`siamface verify` (exit codes, thresholds, CSV batches) and the `siamface.load` API."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
from PIL import Image

import siamface
from siamface.cli.main import main
from siamface.errors import SiamfaceError
from siamface.model.checkpoint import load_checkpoint, save_checkpoint

FAST = ["--workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def images(pins_small):
    ids = sorted(p for p in pins_small.iterdir())
    a, b = sorted(ids[0].iterdir())[:2]
    c = sorted(ids[1].iterdir())[0]
    return a, b, c


@pytest.fixture(scope="module")
def no_threshold_ckpt(tiny_checkpoint, tmp_path_factory):
    ck = load_checkpoint(tiny_checkpoint)
    ck.threshold = None
    return save_checkpoint(ck, tmp_path_factory.mktemp("nothr") / "m.safetensors")


def _sim(model, a, b) -> float:
    return siamface.load(model).similarity(a, b)


def test_verify_exit_status_follows_the_decision(tiny_checkpoint, images, capsys):
    a, b, _ = images
    s = _sim(tiny_checkpoint, a, b)
    # Thresholds are cosines in [-1, 1] (verify refuses others): the point half-way to 1.
    below, above = s - 1e-3, (s + 1.0) / 2
    assert below < s < above <= 1.0
    base = ["verify", "--model", str(tiny_checkpoint), str(a), str(b)]
    assert main([*base, "--threshold", str(below)]) == 0
    assert capsys.readouterr().out.startswith("same person")
    assert main([*base, "--threshold", str(above)]) == 1
    assert capsys.readouterr().out.startswith("different people")
    assert main([*base, "--json"]) == (0 if s >= 0.5 else 1)  # stored threshold 0.5
    r = json.loads(capsys.readouterr().out)
    assert r["threshold"] == 0.5 and r["threshold_source"].startswith("checkpoint")
    assert r["similarity"] == pytest.approx(s, abs=1e-6) and r["same"] == (s >= 0.5)
    assert r["fingerprint"] == load_checkpoint(tiny_checkpoint).fingerprint


def test_verify_errors_exit_2(tiny_checkpoint, no_threshold_ckpt, images, tmp_path, capsys):
    a, b, _ = images
    assert main(["verify", "--model", str(tiny_checkpoint), str(a), str(tmp_path / "x.jpg")]) == 2
    assert "image not found" in capsys.readouterr().err
    assert main(["verify", "--model", str(tiny_checkpoint), str(a)]) == 2
    assert "exactly two images" in capsys.readouterr().err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    assert main(["verify", "--model", str(tiny_checkpoint), str(a), str(bad)]) == 2
    assert f"cannot read {bad}" in capsys.readouterr().err
    # no stored threshold: the similarity is still shown, with a clear reason, exit 2
    assert main(["verify", "--model", str(no_threshold_ckpt), str(a), str(b), "--json"]) == 2
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["same"] is None and 0 < out["similarity"] <= 1.0 + 1e-6
    assert "no stored decision threshold" in cap.err and "siamface calibrate" in cap.err
    assert main(
        ["verify", "--model", str(no_threshold_ckpt), str(a), str(b), "--threshold", "0.1"]
    ) in (0, 1)


def test_verify_pairs_csv(tiny_checkpoint, images, tmp_path, capsys):
    a, b, c = images
    f = tmp_path / "pairs.csv"
    f.write_text(f"image1,image2\n{a},{b}\n\n# comment\n{a},{c}\n")
    out = tmp_path / "res.csv"
    rc = main(
        [
            "verify",
            "--model",
            str(tiny_checkpoint),
            "--pairs-csv",
            str(f),
            "--threshold",
            "0.0",
            "--out",
            str(out),
            *FAST,
        ]
    )
    assert rc == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["image2"] for r in rows] == [str(b), str(c)]
    assert [r["same"] for r in rows] == ["True", "True"]  # threshold 0: cosine >= 0 here
    assert float(rows[0]["similarity"]) == pytest.approx(_sim(tiny_checkpoint, a, b), abs=1e-5)
    assert "2 pairs" in capsys.readouterr().err
    assert (
        main(["verify", "--model", str(tiny_checkpoint), "--pairs-csv", str(f), "--json", *FAST])
        == 0
    )
    js = json.loads(capsys.readouterr().out)
    assert [p["line"] for p in js["pairs"]] == [2, 5] and js["threshold"] == 0.5


def test_verify_pairs_csv_bad_lines(tiny_checkpoint, images, tmp_path, capsys):
    a, _, _ = images
    f = tmp_path / "p.csv"
    f.write_text(f"{a},{a}\n{a},missing.jpg\n")
    assert main(["verify", "--model", str(tiny_checkpoint), "--pairs-csv", str(f), *FAST]) == 2
    err = capsys.readouterr().err
    assert f"{f}, line 2: image not found" in err and "--root" in err
    f.write_text(f"{a},{a},{a}\n")
    assert main(["verify", "--model", str(tiny_checkpoint), "--pairs-csv", str(f), *FAST]) == 2
    assert "line 1: expected 2 columns" in capsys.readouterr().err
    # relative paths with --root
    f.write_text(f"{a.parent.name}/{a.name},{a.parent.name}/{a.name}\n")
    rc = main(
        [
            "verify",
            "--model",
            str(tiny_checkpoint),
            "--pairs-csv",
            str(f),
            "--root",
            str(a.parent.parent),
            *FAST,
        ]
    )
    assert rc == 0 and ",1" in capsys.readouterr().out  # an image matches itself


def test_load_api(tiny_checkpoint, images):
    a, b, c = images
    m = siamface.load(tiny_checkpoint)
    assert m.threshold == 0.5 and m.embedding_size == 32
    e = m.embed([a, b])
    assert e.shape == (2, 32) and m.embed(a).shape == (32,)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    pil = Image.open(a).convert("RGB")
    np.testing.assert_allclose(m.embed(pil), e[0], atol=1e-5)
    np.testing.assert_allclose(m.embed(np.asarray(pil)), e[0], atol=1e-5)
    r = m.verify(a, b)
    assert r.similarity == pytest.approx(float(e[0] @ e[1]), abs=1e-5)
    assert r.threshold == 0.5 and r.threshold_source == "checkpoint: test on fixture"
    # the decision moves with the threshold: at the pair's own score it is the same person,
    # just above it not
    assert m.verify(a, b, threshold=r.similarity).same is True
    assert m.verify(a, b, threshold=min(1.0, r.similarity + 1e-3)).same is False
    assert m.verify(e[0], a).similarity == pytest.approx(1.0, abs=1e-5)
    r2 = m.verify(a, c, threshold=1.0)  # two different photos never reach cosine 1
    assert r2.same is False and r2.threshold_source == "given"
    for bad in (2.0, float("nan"), -1.5):  # thresholds are cosines, as in verify and serve
        with pytest.raises(SiamfaceError, match="threshold"):
            m.verify(a, c, threshold=bad)
        with pytest.raises(SiamfaceError, match="threshold"):
            siamface.load(tiny_checkpoint, threshold=bad)
    m2 = siamface.load(tiny_checkpoint, threshold=-1.0)
    assert m2.verify(a, c).same is True and m2.verify(a, c).threshold_source == "given to load()"
    with pytest.raises(SiamfaceError, match="image not found"):
        m.embed("/nonexistent.jpg")
    with pytest.raises(SiamfaceError, match="cannot embed"):
        m.embed([3.5])
    with pytest.raises(SiamfaceError, match="embedding of size 3"):
        m.verify(np.ones(3, np.float32), a)


def test_load_without_threshold(no_threshold_ckpt, images):
    a, b, _ = images
    m = siamface.load(no_threshold_ckpt)
    assert m.threshold is None
    assert -1.0 <= m.similarity(a, b) <= 1.0 + 1e-6
    with pytest.raises(SiamfaceError, match="no stored decision threshold"):
        m.verify(a, b)


def test_import_siamface_stays_light():
    import subprocess

    code = "import sys, siamface; print('torch' in sys.modules, callable(siamface.load))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.split() == ["False", "True"]
