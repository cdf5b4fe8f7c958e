"""`siamface evaluate`, `calibrate` and `embed` end to end on a tiny model and real faces."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from siamface.cli.main import main
from siamface.model.checkpoint import load_checkpoint, read_metadata

FAST = ["--workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def folder_report(pins_small, tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "report"
    rc = main(
        [
            "evaluate",
            "--model",
            str(tiny_checkpoint),
            "--data",
            str(pins_small),
            "--out",
            str(out),
            *FAST,
        ]
    )
    assert rc == 0
    return out, json.loads((out / "report.json").read_text())


def test_evaluate_all_pairs_report(folder_report, pins_small):
    out, rep = folder_report
    ids = sorted(p.name for p in pins_small.iterdir())
    n = sum(len(list((pins_small / i).iterdir())) for i in ids)
    assert rep["protocol"] == "all-pairs"
    assert rep["data"]["identities"] == len(ids) and rep["data"]["images_embedded"] == n
    p = rep["pairs"]
    assert p["genuine_pairs"] + p["impostor_pairs_scored"] == n * (n - 1) // 2
    assert p["impostor_pairs"] == "all" and p["impostor_scores"] == "exact"
    m = rep["metrics"]
    assert 0.0 <= m["auc"] <= 1.0 and set(m["tar_at_far"]) == {"1e-01", "1e-02", "1e-03", "1e-04"}
    # 12 x 8 images -> 4224 impostor pairs: FAR 1e-4 is below 1/4224 and must say so
    assert m["tar_at_far"]["1e-04"] is None
    assert any("1e-04" in note for note in rep["notes"])
    # 1e-3 is measurable (>= 1/4224) but rests on ~4 impostor pairs: said so
    assert any("FAR 1e-03 rests on at most 4 impostor" in note for note in rep["notes"])
    st = rep["operating_points"]["stored_threshold"]
    assert st["threshold"] == 0.5 and 0.0 <= st["far"] <= 1.0
    assert len(rep["roc"]["far"]) == len(rep["roc"]["tar"]) > 2
    for name in ("roc.png", "det.png", "scores.png"):
        assert (out / name).stat().st_size > 1000
    assert set(rep["timing_s"]) >= {"embed_s", "score_s", "metrics_s", "total_s"}


def test_evaluate_identity_filter_and_json(pins_small, tiny_checkpoint, tmp_path, capsys):
    ids = sorted(p.name for p in pins_small.iterdir())[:3]
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    rc = main(
        [
            "evaluate",
            "--model",
            str(tiny_checkpoint),
            "--data",
            str(pins_small),
            "--identities",
            str(tmp_path / "ids.txt"),
            "--out",
            str(tmp_path / "o"),
            "--no-plots",
            "--json",
            "--far",
            "0.05",
            *FAST,
        ]
    )
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["data"]["identities"] == 3 and rep["data"]["images_embedded"] == 24
    assert list(rep["metrics"]["tar_at_far"]) == ["5e-02"]
    assert rep["pairs"]["genuine_pairs"] == 3 * 28 and rep["plots"] == {}
    assert not (tmp_path / "o" / "roc.png").exists()


def test_evaluate_held_out_and_training_overlap_note(pins_small, tiny_checkpoint, tmp_path, capsys):
    ids = sorted(p.name for p in pins_small.iterdir())
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_checkpoint, run / "best.safetensors")
    (run / "run.json").write_text(json.dumps({"data": [str(pins_small)]}))
    (run / "dataset_report.json").write_text(json.dumps({"val_identity_names": ids[:4]}))
    args = ["evaluate", "--model", str(run), "--data", str(pins_small), "--no-plots", "--json"]
    assert main([*args, "--held-out", str(run), "--out", str(tmp_path / "a"), *FAST]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["data"]["identities"] == 4
    assert not any("used to train" in n for n in rep["notes"])
    assert (
        main([*args, "--identities", ",".join(ids[2:7]), "--out", str(tmp_path / "b"), *FAST]) == 0
    )
    rep = json.loads(capsys.readouterr().out)
    assert any("3 of the 5 evaluated identities were used to train" in n for n in rep["notes"])


def test_evaluate_pairs_protocol(pins_small, tiny_checkpoint, tmp_path, capsys):
    pairs = tmp_path / "pairs.txt"
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
                "--out",
                str(pairs),
            ]
        )
        == 0
    )
    capsys.readouterr()
    rc = main(
        [
            "evaluate",
            "--model",
            str(tiny_checkpoint),
            "--data",
            str(pins_small),
            "--pairs",
            str(pairs),
            "--out",
            str(tmp_path / "o"),
            "--json",
            *FAST,
        ]
    )
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    kf = rep["kfold"]
    assert rep["protocol"] == "pairs-file" and kf["folds"] == 3
    assert len(kf["fold_accuracies"]) == 3
    assert kf["accuracy_mean"] == pytest.approx(np.mean(kf["fold_accuracies"]))
    assert rep["pairs"]["genuine_pairs"] == 30 and rep["pairs"]["impostor_pairs_scored"] == 30
    # a pairs file naming a missing image: exit 2, file and line in the message
    lines = pairs.read_text().splitlines()
    lines[3] = "Nobody\t1\t2"
    pairs.write_text("\n".join(lines) + "\n")
    rc = main(
        [
            "evaluate",
            "--model",
            str(tiny_checkpoint),
            "--data",
            str(pins_small),
            "--pairs",
            str(pairs),
            "--out",
            str(tmp_path / "o2"),
            *FAST,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and f"{pairs}, line 4: image Nobody 1 not found" in err


def test_evaluate_bad_input(pins_small, tiny_checkpoint, tmp_path, capsys):
    base = ["evaluate", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "o"), *FAST]
    assert main([*base, "--data", str(tmp_path / "missing")]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert main([*base, "--data", str(pins_small), "--identities", "Nobody,Else"]) == 2
    assert "not folders under" in capsys.readouterr().err
    assert main([*base, "--data", str(pins_small), "--held-out", str(tmp_path)]) == 2
    assert "not a training run directory" in capsys.readouterr().err
    one = sorted(p.name for p in pins_small.iterdir())[0]
    assert main([*base, "--data", str(pins_small), "--identities", one]) == 2
    assert "at least 2 identities" in capsys.readouterr().err
    bad_model = [
        "evaluate",
        "--model",
        str(tmp_path / "x.safetensors"),
        "--data",
        str(pins_small),
        *FAST,
    ]
    assert main(bad_model) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse rejects an impossible FAR
        main([*base, "--data", str(pins_small), "--far", "2"])


def test_evaluate_skips_unreadable_images(pins_small, tiny_checkpoint, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(pins_small, data)
    first = sorted(data.iterdir())[0]
    (first / "broken.jpg").write_bytes(b"not a jpeg")
    rc = main(
        [
            "evaluate",
            "--model",
            str(tiny_checkpoint),
            "--data",
            str(data),
            "--identities",
            ",".join(p.name for p in sorted(data.iterdir())[:3]),
            "--no-plots",
            "--json",
            "--out",
            str(tmp_path / "o"),
            *FAST,
        ]
    )
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert [u["path"].endswith("broken.jpg") for u in rep["data"]["unreadable"]] == [True]
    assert rep["data"]["images"] == 25 and rep["data"]["images_embedded"] == 24


def test_calibrate_writes_a_new_checkpoint(pins_small, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "cal.safetensors"
    rc = main(
        [
            "calibrate",
            "--model",
            str(tiny_checkpoint),
            "--data",
            str(pins_small),
            "--far",
            "0.01",
            "--out",
            str(out),
            "--json",
            *FAST,
        ]
    )
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    thr = read_metadata(out)["threshold"]
    assert thr == res["threshold"] and res["previous"]["value"] == 0.5
    assert thr["target_far"] == 0.01 and thr["method"] == "far" and thr["far"] <= 0.01
    assert thr["n_impostor"] == 4224 and str(pins_small) in thr["source"]
    assert load_checkpoint(out).fingerprint == load_checkpoint(tiny_checkpoint).fingerprint
    assert read_metadata(tiny_checkpoint)["threshold"]["value"] == 0.5  # original untouched
    # best accuracy, in place on a copy
    copy = tmp_path / "copy.safetensors"
    shutil.copy(tiny_checkpoint, copy)
    assert (
        main(
            ["calibrate", "--model", str(copy), "--data", str(pins_small), "--best-accuracy", *FAST]
        )
        == 0
    )
    assert read_metadata(copy)["threshold"]["method"] == "best_accuracy"
    assert "written to" in capsys.readouterr().out
    # ONNX models cannot be rewritten; a clear message, exit 2
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"\0")
    assert main(["calibrate", "--model", str(onnx), "--data", str(pins_small), *FAST]) == 2
    assert "ONNX export" in capsys.readouterr().err


def test_embed_writes_npz(pins_small, tiny_checkpoint, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(pins_small, data)
    (sorted(data.iterdir())[0] / "broken.png").write_bytes(b"")
    out = tmp_path / "emb.npz"
    assert (
        main(
            [
                "embed",
                "--model",
                str(tiny_checkpoint),
                "--data",
                str(data),
                "--out",
                str(out),
                "--json",
                *FAST,
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    z = np.load(out)
    assert z["embeddings"].shape == (96, 32) and z["embeddings"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z["embeddings"], axis=1), 1.0, rtol=1e-5)
    assert len(z["paths"]) == 96 and not z["paths"][0].startswith("/")
    assert z["identities"][0] == z["paths"][0].split("/")[0]
    assert str(z["fingerprint"]) == load_checkpoint(tiny_checkpoint).fingerprint
    assert [s["path"].endswith("broken.png") for s in summary["skipped"]] == [True]
    assert (
        main(
            [
                "embed",
                "--model",
                str(tiny_checkpoint),
                "--data",
                str(tmp_path / "none"),
                "--out",
                str(out),
                *FAST,
            ]
        )
        == 2
    )
