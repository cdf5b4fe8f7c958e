"""The face models in the box: SFace as a PyTorch module (checked against OpenCV, its reference
implementation), dlib's ResNet as an external backend, and both wherever a model goes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, copy_identities, needs_data
from PIL import Image

CELEBA = SHARED_DATA / "celeba_wild"


def _files(root: Path, n_ids: int, n_imgs: int) -> list[list[Path]]:
    ids = sorted(p for p in root.iterdir() if p.is_dir())[:n_ids]
    return [sorted(p.iterdir())[:n_imgs] for p in ids]


@pytest.fixture(scope="module")
def sface():
    from siamface.model.zoo import pretrained_checkpoint

    return pretrained_checkpoint("sface")


@needs_data
def test_sface_matches_opencv_reference(sface):
    """Max abs difference of L2-normalised embeddings vs OpenCV 4.x FaceRecognizerSF <= 1e-3."""
    cv2 = pytest.importorskip("cv2")
    if int(cv2.__version__.split(".")[0]) != 4:
        pytest.skip(f"OpenCV {cv2.__version__}: only 4.x's FaceRecognizerSF runs the SFace file")
    from siamface.faces.align import align_face_image
    from siamface.model.zoo import sface_onnx_path
    from siamface.tensors.transforms import normalize_batch

    files = [f for group in _files(CELEBA, 6, 2) for f in group]
    faces = np.stack(
        [align_face_image(Image.open(f).convert("RGB"), sface.preprocessing) for f in files]
    )
    net = sface.build()
    with torch.no_grad():
        x = normalize_batch(
            torch.from_numpy(faces.transpose(0, 3, 1, 2).copy()), sface.preprocessing
        )
        ours = net(x).numpy()
    rec = cv2.FaceRecognizerSF.create(str(sface_onnx_path()), "")
    ref = np.stack([rec.feature(np.ascontiguousarray(f[:, :, ::-1]))[0] for f in faces])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.abs(ours - ref).max() <= 1e-3


def test_sface_weights_fill_every_tensor(sface):
    from siamface.model.network import ModelConfig, build_model

    model = build_model(ModelConfig(backbone="sface", embedding_size=128))
    target = model.state_dict()
    assert set(sface.state_dict) == set(target)
    for k, v in target.items():
        assert sface.state_dict[k].shape == v.shape, k
    # dequantised, not left at initialisation: every conv/linear weight differs from zeros and
    # the BatchNorm statistics are the trained ones
    assert float(sface.state_dict["backbone.stem.1.running_var"].std()) > 0
    assert sface.preprocessing.aligned and sface.preprocessing.image_size == 112
    # the fingerprint names these weights: a fresh read of the ONNX file (cache cleared, new
    # tensors) gives the same one, and one changed weight gives another
    from siamface.model.checkpoint import fingerprint
    from siamface.model.zoo import _sface_arrays, pretrained_checkpoint

    _sface_arrays.cache_clear()
    again = pretrained_checkpoint("sface")
    key = "backbone.stem.1.running_var"
    assert again.state_dict[key] is not sface.state_dict[key]
    assert again.fingerprint == sface.fingerprint
    edited = {k: v.clone() for k, v in again.state_dict.items()}
    edited[key][0] += 1e-3
    assert fingerprint(edited) != sface.fingerprint


def test_backbone_sface_pretrained_auto_loads_the_trunk():
    from siamface.model.network import ModelConfig, build_model
    from siamface.model.pretrained import load_pretrained
    from siamface.model.zoo import sface_state_dict

    model = build_model(ModelConfig(backbone="sface", embedding_size=64))  # a new head size
    source = load_pretrained(model.backbone, "sface", "auto")
    assert "sface" in source
    ref = sface_state_dict()
    got = model.backbone.state_dict()
    assert torch.equal(got["blocks.12.pw.0.weight"], ref["backbone.blocks.12.pw.0.weight"])
    assert model.head.fc.out_features == 64


def test_unknown_backbone_names_the_face_architectures():
    from siamface.errors import SiamfaceError
    from siamface.model.network import check_backbone_name

    with pytest.raises(SiamfaceError, match="sface"):
        check_backbone_name("sfase")


@needs_data
def test_load_sface_verifies_real_faces():
    """Zero-shot SFace separates people it never saw: every genuine pair of 4 pins90 people
    scores above every impostor pair's median, and verify() decides at the stored threshold."""
    import siamface

    model = siamface.load("sface")
    groups = _files(SHARED_DATA / "pins90", 4, 3)
    emb = model.embed([f for g in groups for f in g])
    labels = np.repeat(np.arange(len(groups)), 3)
    sims = emb @ emb.T
    iu = np.triu_indices(len(labels), 1)
    same = labels[iu[0]] == labels[iu[1]]
    gen, imp = sims[iu][same], sims[iu][~same]
    assert gen.mean() > imp.mean() + 0.3
    assert (gen > np.median(imp)).all()
    # at its stored threshold the model tells these people apart: the most alike genuine
    # pair is the same person, the least alike impostor pair is not
    files = [f for g in groups for f in g]
    gi, gj = np.argwhere(np.triu(labels[:, None] == labels[None, :], 1))[np.argmax(gen)]
    ii, ij = np.argwhere(np.triu(labels[:, None] != labels[None, :], 1))[np.argmin(imp)]
    r = model.verify(files[gi], files[gj])
    assert r.same and r.threshold_source.startswith("checkpoint")
    assert not model.verify(files[ii], files[ij]).same
    # and a threshold given for the call decides instead of the stored one
    assert not model.verify(files[gi], files[gj], threshold=min(1.0, r.similarity + 1e-3)).same


@needs_data
def test_sface_cli_verify_embed_and_export(tmp_path):
    """``--model sface`` in the CLI: verify (exit 0 same / 1 different), embed, and export to
    ONNX whose embeddings match the PyTorch module."""
    pytest.importorskip("onnxruntime")
    groups = _files(SHARED_DATA / "pins90", 2, 2)
    exe = [sys.executable, "-m", "siamface"]
    same = subprocess.run(
        [*exe, "verify", "--model", "sface", "--json", str(groups[0][0]), str(groups[0][1])],
        capture_output=True,
        text=True,
    )
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["same"] is True
    diff = subprocess.run(
        [*exe, "verify", "--model", "sface", "--json", str(groups[0][0]), str(groups[1][0])],
        capture_output=True,
        text=True,
    )
    assert diff.returncode == 1, diff.stderr
    out = tmp_path / "sface.onnx"
    exp = subprocess.run(
        [*exe, "export", "--model", "sface", "--out", str(out)], capture_output=True, text=True
    )
    assert exp.returncode == 0, exp.stderr
    import siamface

    files = [groups[0][0], groups[1][1]]
    a = siamface.load(out).embed(files)
    b = siamface.load("sface").embed(files)
    assert np.abs(a - b).max() < 1e-3


@needs_data
def test_sface_gallery_identifies(tmp_path):
    """Enroll 3 people with sface (one call, a folder per person) and identify a fourth photo
    of each; the gallery records the built-in model by name so identify needs no --model."""
    data = copy_identities(SHARED_DATA / "pins90", tmp_path / "people", 3, 4)
    probes = []
    for person in sorted(data.iterdir()):
        probe = sorted(person.iterdir())[3]
        probes.append(probe.rename(tmp_path / f"{person.name}.jpg"))
    gallery = tmp_path / "g"
    exe = [sys.executable, "-m", "siamface"]
    r = subprocess.run(
        [*exe, "gallery", "enroll", str(gallery), "--model", "sface", "--no-progress", str(data)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [*exe, "identify", str(gallery), "--json", *map(str, probes)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    found = [hit["identity"] for hit in json.loads(r.stdout)]
    assert found == [p.stem for p in probes]


@needs_data
def test_dlib_model_when_installed():
    pytest.importorskip("dlib", reason="dlib not installed (pip install 'siamface[dlib]')")
    import siamface

    model = siamface.load("dlib")
    groups = _files(SHARED_DATA / "pins90", 3, 2)
    emb = model.embed([f for g in groups for f in g])
    assert emb.shape == (6, 128)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T
    genuine = [sims[0, 1], sims[2, 3], sims[4, 5]]
    impostor = [sims[0, 2], sims[0, 4], sims[2, 4], sims[1, 3], sims[3, 5]]
    assert min(genuine) > max(impostor)
