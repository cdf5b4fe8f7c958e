"""ONNX export: metadata, dynamic batch, parity with PyTorch, the onnxruntime backend, the
CLI, and the torch-free inference path (a subprocess in which importing torch fails)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from siamface.cli.main import COMMANDS, main
from siamface.embed.load import create_embedder
from siamface.embed.onnx_backend import OnnxEmbedder
from siamface.embed.torch_backend import TorchEmbedder
from siamface.errors import SiamfaceError
from siamface.export.onnx_export import (
    MAX_SAMPLE_IMAGES,
    export_onnx,
    parity_check,
    synthetic_faces,
)
from siamface.model.checkpoint import Checkpoint, load_checkpoint
from siamface.model.network import ModelConfig, build_model
from siamface.tensors.transforms import Preprocessing

REPO = Path(__file__).resolve().parents[1]

#: Packages the inference-only install leaves out (docs/ship.md); importing them must fail.
TORCH_FREE_GUARD = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {"torch", "torchvision", "timm", "safetensors", "pytorch_metric_learning",
               "schedulefree", "sklearn", "scipy", "matplotlib", "tensorboard", "onnx",
               "onnxscript"}
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
    sys.meta_path.insert(0, _Block())
    """
)


@pytest.fixture(scope="module")
def tiny_onnx(tiny_checkpoint, tmp_path_factory) -> tuple[Path, dict]:
    """The tiny checkpoint exported with the default ('auto': dynamo first) exporter."""
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    report = export_onnx(tiny_checkpoint, out)
    return out, report.to_dict()


def _images(folder: Path, n: int) -> list[Path]:
    return sorted(p for p in folder.rglob("*.jpg"))[:n]


def test_export_writes_self_describing_model(tiny_checkpoint, tiny_onnx):
    import onnx

    path, report = tiny_onnx
    assert path.is_file() and report["exporter"] in ("dynamo", "torchscript")
    assert [p.name for p in path.parent.iterdir()] == ["tiny.onnx"]  # no temp / external data
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props["siamface"])
    ckpt = load_checkpoint(tiny_checkpoint)
    assert props["fingerprint"] == meta["fingerprint"] == ckpt.fingerprint
    assert int(props["embedding_size"]) == 32 and int(props["image_size"]) == 64
    assert json.loads(props["mean"]) == pytest.approx(list(ckpt.preprocessing.mean))
    assert json.loads(props["std"]) == pytest.approx(list(ckpt.preprocessing.std))
    assert json.loads(props["aligned"]) is False and json.loads(props["threshold"]) == 0.5
    assert meta["threshold"]["target_far"] == 1e-3 and meta["siamface_version"]
    # dynamic batch axis, uint8 input
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value
    assert [d.dim_value for d in dims[1:]] == [3, 64, 64]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_parity_report_and_onnx_embedder_match_checkpoint(tiny_checkpoint, tiny_onnx):
    path, report = tiny_onnx
    par = report["parity"]
    assert par["passed"] and par["decisions_identical"]
    assert par["max_abs_diff"] < 1e-4 and par["pairs"] == 32 * 31 // 2
    # the median threshold splits the pairs, so the decision comparison is not vacuous
    assert 0 < par["decisions"]["median_score"]["accepted"] < par["pairs"]

    onnx_model = create_embedder(path)
    torch_model = create_embedder(tiny_checkpoint, device="cpu")
    assert isinstance(onnx_model, OnnxEmbedder) and isinstance(torch_model, TorchEmbedder)
    assert onnx_model.fingerprint == torch_model.fingerprint
    assert onnx_model.threshold == torch_model.threshold
    assert onnx_model.preprocessing == torch_model.preprocessing
    faces = synthetic_faces(64, n_base=5, variants=1, seed=3)
    for n in (1, 5):  # any batch size
        a, b = onnx_model.embed_batch(faces[:n]), torch_model.embed_batch(faces[:n])
        assert a.shape == (n, 32) and a.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="3 x 64 x 64"):
        onnx_model.embed_batch(faces[:, :, :32, :32])


def test_onnx_embed_paths_matches_torch_and_reports_bad_files(
    tiny_checkpoint, tiny_onnx, pins_small, tmp_path
):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    paths = _images(pins_small, 5)
    paths.insert(2, bad)
    onnx_model, torch_model = create_embedder(tiny_onnx[0]), create_embedder(tiny_checkpoint, "cpu")
    e1, err1 = onnx_model.embed_paths(paths, batch_size=2, workers=2, progress=False)
    e2, err2 = torch_model.embed_paths(paths, batch_size=2, workers=0, progress=False)
    assert list(err1) == list(err2) == [2]
    assert "not a recognised image" in err1[2]
    assert e1.shape == (5, 32)
    np.testing.assert_allclose(e1, e2, atol=1e-4)


def test_torchscript_exporter_and_real_face_samples(tiny_checkpoint, pins_small, tmp_path):
    out = tmp_path / "ts.onnx"
    report = export_onnx(tiny_checkpoint, out, exporter="torchscript", samples=[pins_small])
    assert report.exporter == "torchscript" and out.is_file()
    assert report.parity["images"] == min(12 * 8, MAX_SAMPLE_IMAGES)  # spread over all ids
    assert report.parity["passed"]
    assert "given samples" in report.parity["samples"]


def test_parity_check_catches_a_different_model(tiny_checkpoint, tiny_onnx, tmp_path):
    torch.manual_seed(123)
    cfg = ModelConfig(backbone="test_efficientnet", embedding_size=32)
    other = Checkpoint(cfg, Preprocessing(image_size=64), build_model(cfg).state_dict())
    with pytest.raises(SiamfaceError, match="parity check failed"):
        parity_check(other, tiny_onnx[0], synthetic_faces(64))


def test_failed_export_writes_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    import siamface.export.onnx_export as ox

    def broken(*args, **kwargs):
        raise SiamfaceError("ONNX parity check failed (injected)")

    monkeypatch.setattr(ox, "parity_check", broken)
    out = tmp_path / "m.onnx"
    with pytest.raises(SiamfaceError, match="injected"):
        ox.export_onnx(tiny_checkpoint, out, exporter="torchscript")
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"out": "model.txt"}, "must end in .onnx"),
        ({"exporter": "tflite"}, "unknown exporter"),
        ({"opset": 11}, "too old"),
        ({"samples": ["/nonexistent/faces"]}, "parity sample not found"),
    ],
)
def test_export_argument_errors(tiny_checkpoint, tmp_path, kwargs, message):
    kwargs = {"out": "m.onnx", **kwargs}
    kwargs["out"] = tmp_path / kwargs["out"]
    with pytest.raises(SiamfaceError, match=message):
        export_onnx(tiny_checkpoint, **kwargs)


def test_export_refuses_too_few_readable_samples(tiny_checkpoint, tmp_path):
    (tmp_path / "a.jpg").write_text("junk")
    with pytest.raises(SiamfaceError, match="at least 4 readable"):
        export_onnx(tiny_checkpoint, tmp_path / "m.onnx", samples=[tmp_path])


def test_open_model_rejects_foreign_or_broken_onnx(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)).eval()
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 2, 2),), str(foreign), dynamo=False)
    with pytest.raises(SiamfaceError, match="not made by 'siamface export'"):
        create_embedder(foreign)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(SiamfaceError, match="not a readable ONNX model"):
        create_embedder(broken)


def test_export_cli(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    rc = main(["export", "--model", str(tiny_checkpoint), "--out", str(out), "--exporter",
               "torchscript", "--json"])  # fmt: skip
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(out) and report["parity"]["passed"]
    rc = main(["export", "--model", str(tmp_path / "missing.safetensors"), "--out", str(out)])
    assert rc == 2
    assert "not found" in capsys.readouterr().err


def _run_torch_free(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-c", TORCH_FREE_GUARD + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_inference_runs_without_torch(tiny_onnx, tiny_checkpoint, pins_small, tmp_path):
    """The inference-only install: ONNX model + numpy/pillow/onnxruntime, no torch."""
    imgs = _images(pins_small, 3)
    expected = create_embedder(tiny_checkpoint, "cpu").embed_paths(imgs, progress=False)[0]
    np.save(tmp_path / "expected.npy", expected)
    code = f"""
        import sys, json
        import numpy as np
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("the guard did not block torch")
        from siamface.cli.main import build_parser
        build_parser()  # every command's module imports without torch
        from siamface.embed.load import create_embedder
        m = create_embedder({str(tiny_onnx[0])!r})
        emb, err = m.embed_paths({[str(p) for p in imgs]!r}, batch_size=2, progress=False)
        assert not err, err
        assert np.abs(emb - np.load("expected.npy")).max() < 1e-4
        from siamface.serve import create_app
        app = create_app({str(tiny_onnx[0])!r}, "gallery", api_key="k")  # serving too
        gallery = app.state.service.gallery
        gallery.enroll("alice", emb[:2], fingerprint=m.fingerprint)  # writes the index file
        assert gallery.search(emb[2:], 1, fingerprint=m.fingerprint)[0].matches
        print(json.dumps({{"torch_loaded": "torch" in sys.modules}}))
    """
    res = _run_torch_free(code, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"torch_loaded": False}


def test_guard_really_blocks_torch(tmp_path):
    res = _run_torch_free("import torch", tmp_path)
    assert res.returncode != 0 and "blocked" in res.stderr


@pytest.mark.skipif("verify" not in COMMANDS, reason="siamface verify is not available yet")
def test_verify_command_accepts_onnx_without_torch(tiny_onnx, pins_small, tmp_path):
    a, b = _images(pins_small, 2)
    code = f"""
        import sys
        from siamface.cli.main import main
        sys.exit(main(["verify", "--model", {str(tiny_onnx[0])!r}, {str(a)!r}, {str(b)!r},
                       "--json"]))
    """
    res = _run_torch_free(code, tmp_path)
    assert res.returncode in (0, 1), res.stderr[-3000:]
    assert "similarity" in res.stdout


@pytest.mark.skipif("embed" not in COMMANDS, reason="siamface embed is not available yet")
def test_embed_command_accepts_onnx_without_torch(tiny_onnx, tiny_checkpoint, pins_small, tmp_path):
    out = tmp_path / "emb.npz"
    code = f"""
        import sys
        from siamface.cli.main import main
        sys.exit(main(["embed", "--model", {str(tiny_onnx[0])!r}, "--data", {str(pins_small)!r},
                       "--out", {str(out)!r}, "--no-progress"]))
    """
    res = _run_torch_free(code, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    data = np.load(out)
    assert data["embeddings"].shape == (12 * 8, 32)
    assert str(data["fingerprint"]) == load_checkpoint(tiny_checkpoint).fingerprint


def test_gallery_from_checkpoint_is_searched_with_onnx_without_torch(
    tiny_onnx, tiny_checkpoint, pins_small, tmp_path
):
    """Same fingerprint: a gallery enrolled with the checkpoint works with its ONNX export."""
    from siamface.gallery import Gallery

    model = create_embedder(tiny_checkpoint, "cpu")
    people = sorted(p for p in pins_small.iterdir() if p.is_dir())[:3]
    with Gallery.create(
        tmp_path / "g", fingerprint=model.fingerprint, embedding_size=32, threshold=None
    ) as g:
        for person in people:
            emb, _ = model.embed_paths(_images(person, 3), progress=False)
            g.enroll(person.name, emb, fingerprint=model.fingerprint)
            if person == people[1]:
                template = emb.mean(0) / np.linalg.norm(emb.mean(0))
                expected = float(emb[0] @ template)  # the probe's score against the template
    probe = _images(people[1], 1)[0]
    code = f"""
        import sys
        from siamface.cli.main import main
        sys.exit(main(["identify", {str(tmp_path / "g")!r}, {str(probe)!r}, "--model",
                       {str(tiny_onnx[0])!r}, "--json"]))
    """
    res = _run_torch_free(code, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    scores = {m["name"]: m["score"] for m in out["matches"]}  # top_k 5 >= 3 people
    assert sorted(scores) == sorted(p.name for p in people)
    assert scores[people[1].name] == pytest.approx(expected, abs=1e-4)
