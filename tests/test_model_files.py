"""Damaged and hand-edited model files are refused, with the reason, by every command that
takes --model: one line naming the file and the field or tensor, exit code 2, no traceback."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import needs_data
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import siamface
from siamface.cli.main import main
from siamface.errors import SiamfaceError
from siamface.model.checkpoint import fingerprint, load_checkpoint, read_metadata
from siamface.model.validate import contract_digest

pytestmark = needs_data
FAST = ["--workers", "0", "--no-progress"]


def _parts(path):
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["siamface"])
    return load_file(str(path)), header


def _write(path, tensors, header, keep_integrity=True):
    """A checkpoint with these tensors and this header (dict, or raw text)."""
    if isinstance(header, dict):
        header = dict(header)
        if keep_integrity:
            header["integrity"] = contract_digest(header)  # as if written by siamface
        else:
            header.pop("integrity", None)  # an older file, without the digest
        raw = json.dumps(header)
    else:
        raw = header
    save_file(tensors, str(path), metadata={"siamface": raw})
    return path


def _edit(header, dotted, value):
    h = json.loads(json.dumps(header))
    *parents, last = dotted.split(".")
    node = h
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return h


_DELETE = object()


def _nan_all(t):
    return {k: torch.full_like(v, math.nan) if v.is_floating_point() else v for k, v in t.items()}


# name -> (function (tensors, header) -> (tensors, header, keep_integrity), expected words)
CASES = {
    "header is not JSON": (lambda t, h: (t, "{'model': oops", True), "not valid JSON"),
    "header is a JSON list": (lambda t, h: (t, json.dumps([h]), True), "JSON list"),
    "header misses the model": (
        lambda t, h: (t, _edit(h, "model", _DELETE), True),
        "'model' is missing",
    ),
    "header misses image_size": (
        lambda t, h: (t, _edit(h, "preprocessing.image_size", _DELETE), True),
        "preprocessing.image_size",
    ),
    "embedding size is a string": (
        lambda t, h: (t, _edit(h, "model.embedding_size", "32"), True),
        "model.embedding_size' must be int",
    ),
    "image size is a string": (
        lambda t, h: (t, _edit(h, "preprocessing.image_size", "64"), True),
        "preprocessing.image_size",
    ),
    "image size 100000 (memory attack)": (
        lambda t, h: (t, _edit(h, "preprocessing.image_size", 100000), True),
        "[16, 1024], got 100000",
    ),
    "std of zero": (
        lambda t, h: (t, _edit(h, "preprocessing.std", [0, 0, 0]), True),
        "preprocessing.std",
    ),
    "threshold of 5": (
        lambda t, h: (t, _edit(h, "threshold.value", 5), True),
        "threshold.value",
    ),
    "threshold NaN": (
        lambda t, h: (t, _edit(h, "threshold.value", math.nan), True),
        "threshold.value",
    ),
    "format version from the future": (
        lambda t, h: (t, _edit(h, "format_version", 99), True),
        "newer siamface",
    ),
    "format version a string": (
        lambda t, h: (t, _edit(h, "format_version", "1"), True),
        "format_version",
    ),
    "bad alignment setting": (
        lambda t, h: (t, _edit(h, "preprocessing.align", {"margin": 99}), True),
        "preprocessing.align",
    ),
    "embedding size edited": (
        lambda t, h: (t, _edit(h, "model.embedding_size", 64), False),
        "model.head.weight",
    ),
    "embedding size edited, digest kept": (
        lambda t, h: (t, json.dumps(_edit(h, "model.embedding_size", 64)), True),
        "integrity digest mismatch",
    ),
    "backbone edited": (
        lambda t, h: (t, _edit(h, "model.backbone", "resnet18"), False),
        "do not match the declared model (resnet18",
    ),
    "backbone unknown": (
        lambda t, h: (t, _edit(h, "model.backbone", "resnet_nope"), False),
        "cannot be built",
    ),
    "tensor missing": (
        lambda t, h: ({k: v for k, v in t.items() if k != "model.head.bias"}, h, True),
        "1 missing (model.head.bias)",
    ),
    "tensor reshaped": (
        lambda t, h: (t | {"model.head.weight": t["model.head.weight"].t().contiguous()}, h, True),
        "tensor model.head.weight has shape",
    ),
    "stray tensor": (
        lambda t, h: (t | {"optimizer.step": torch.zeros(1)}, h, True),
        "unexpected tensors in the file: optimizer.step",
    ),
    "all weights NaN": (lambda t, h: (_nan_all(t), h, True), "non-finite"),
    "one Inf": (
        lambda t, h: (t | {"model.head.bias": t["model.head.bias"] + math.inf}, h, True),
        "model.head.bias holds",
    ),
    "weights changed after writing": (
        lambda t, h: (t | {"model.head.bias": t["model.head.bias"] + 0.01}, h, True),
        "not the ones the header records",
    ),
}


@pytest.fixture(scope="module")
def damaged(tiny_checkpoint, tmp_path_factory):
    """{case name: path of a damaged copy of the tiny checkpoint}."""
    tensors, header = _parts(tiny_checkpoint)
    assert header["integrity"] == contract_digest(header)  # written by save_checkpoint
    out = tmp_path_factory.mktemp("damaged")
    files = {}
    for k, (name, (make, _)) in enumerate(CASES.items()):
        t, h, keep = make(dict(tensors), header)
        files[name] = _write(out / f"case{k}.safetensors", t, h, keep_integrity=keep)
    trunc = out / "truncated.safetensors"
    trunc.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    files["truncated file"] = trunc
    return files


EXPECTED = {name: words for name, (_, words) in CASES.items()} | {
    "truncated file": "not a readable siamface checkpoint"
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_damaged_checkpoint_refused_by_loader_and_verify(case, damaged, pins_small, capsys):
    path = damaged[case]
    with pytest.raises(SiamfaceError) as info:
        load_checkpoint(path)
    assert EXPECTED[case] in str(info.value) and str(path) in str(info.value)
    with pytest.raises(SiamfaceError):
        siamface.load(path)
    a, b = sorted(sorted(pins_small.iterdir())[0].iterdir())[:2]
    rc = main(["verify", "--model", str(path), str(a), str(b)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert EXPECTED[case] in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def _commands(path, data, tmp, gallery):
    a = sorted(sorted(data.iterdir())[0].iterdir())[0]
    return {
        "embed": ["embed", "--model", path, "--data", data, "--out", tmp / "e.npz", *FAST],
        "evaluate": ["evaluate", "--model", path, "--data", data, "--out", tmp / "ev", *FAST],
        "calibrate": ["calibrate", "--model", path, "--data", data, "--out", tmp / "c", *FAST],
        "export": ["export", "--model", path, "--out", tmp / "m.onnx"],
        "serve": ["serve", "--model", path, "--port", "0"],
        "gallery enroll": ["gallery", "enroll", tmp / "g", data, "--model", path],
        "identify": ["identify", gallery, a, "--model", path],
        "evaluate-1n": ["evaluate-1n", "--model", path, "--data", data, "--no-progress"],
        "train init=": [
            "train",
            "--data",
            data,
            "--out",
            tmp / "run",
            "--no-progress",
            f"init={path}",
            "epochs=1",
            "num_workers=0",
        ],  # fmt: skip
    }


@pytest.fixture(scope="module")
def gallery(tiny_checkpoint, pins_small, tmp_path_factory):
    g = tmp_path_factory.mktemp("gal") / "g"
    assert (
        main(["gallery", "enroll", str(g), str(pins_small), "--model", str(tiny_checkpoint)]) == 0
    )
    return g


@pytest.mark.parametrize(
    "case", ["image size 100000 (memory attack)", "all weights NaN", "tensor reshaped"]
)
def test_every_model_command_refuses_a_damaged_checkpoint(
    case, damaged, pins_small, gallery, tmp_path, capsys
):
    for name, argv in _commands(damaged[case], pins_small, tmp_path, gallery).items():
        capsys.readouterr()
        rc = main([str(x) for x in argv])
        err = capsys.readouterr().err
        assert rc == 2, (name, err)
        assert EXPECTED[case] in err and "Traceback" not in err, (name, err)
    assert not (tmp_path / "e.npz").exists() and not (tmp_path / "m.onnx").exists()


def test_old_checkpoints_without_integrity_still_load(tiny_checkpoint, tmp_path):
    tensors, header = _parts(tiny_checkpoint)
    old = _write(tmp_path / "old.safetensors", tensors, header, keep_integrity=False)
    ck = load_checkpoint(old)
    assert ck.fingerprint == header["fingerprint"] and "integrity" not in read_metadata(old)


def test_valid_threshold_edit_is_accepted(tiny_checkpoint, tmp_path):
    """The threshold is not part of the digest: it is meant to be recalibrated."""
    tensors, header = _parts(tiny_checkpoint)
    h = _edit(header, "threshold.value", 0.25) | {"integrity": header["integrity"]}
    path = _write(tmp_path / "t.safetensors", tensors, json.dumps(h))
    assert load_checkpoint(path).threshold["value"] == 0.25


def test_nan_producing_model_is_refused_not_answered(tiny_checkpoint, pins_small, tmp_path):
    """Finite but absurd weights (overflow to Inf/NaN inside the network): the embedder
    refuses its outputs instead of answering 'different people, similarity nan'."""
    tensors, header = _parts(tiny_checkpoint)
    t = dict(tensors)
    t["model.backbone.conv_stem.weight"] = torch.full_like(
        t["model.backbone.conv_stem.weight"], 3e38
    )
    header["fingerprint"] = fingerprint({k[6:]: v for k, v in t.items()})
    path = _write(tmp_path / "huge.safetensors", t, header)
    a, b = sorted(sorted(pins_small.iterdir())[0].iterdir())[:2]
    with pytest.raises(SiamfaceError, match="non-finite embeddings"):
        siamface.load(path)  # refused at load, by a probe face
    assert main(["verify", "--model", str(path), str(a), str(b)]) == 2


def test_degenerate_model_is_refused_at_load(tiny_checkpoint, pins_small, tmp_path, capsys):
    """Finite weights whose output is all-zero embeddings (head x 1e30: the norm overflows
    and normalising gives zeros) are refused at load, not 'different people, similarity 0'."""
    tensors, header = _parts(tiny_checkpoint)
    t = dict(tensors)
    t["model.head.weight"] = t["model.head.weight"] * 1e30
    header["fingerprint"] = fingerprint({k[6:]: v for k, v in t.items()})
    path = _write(tmp_path / "degenerate.safetensors", t, header)
    with pytest.raises(SiamfaceError, match="degenerate embeddings"):
        siamface.load(path)
    a, b = sorted(sorted(pins_small.iterdir())[0].iterdir())[:2]
    capsys.readouterr()
    assert main(["verify", "--model", str(path), str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "degenerate" in err and str(path) in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def onnx_model(tiny_checkpoint, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("onnx") / "m.onnx"
    assert main(["export", "--model", str(tiny_checkpoint), "--out", str(out)]) == 0
    return out


def _onnx_with(src, dst, edit):
    import onnx

    from siamface.embed.onnx_backend import METADATA_KEY

    m = onnx.load(str(src))
    props = {p.key: p.value for p in m.metadata_props}
    props[METADATA_KEY] = edit(json.loads(props[METADATA_KEY]))
    if not isinstance(props[METADATA_KEY], str):
        props[METADATA_KEY] = json.dumps(props[METADATA_KEY])
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(dst))
    return dst


@pytest.mark.parametrize(
    "edit,words",
    [
        (lambda m: "[not json", "not valid JSON"),
        (lambda m: json.dumps([m]), "JSON list"),
        (lambda m: m | {"preprocessing": m["preprocessing"] | {"image_size": 100000}}, "1024"),
        (lambda m: m | {"preprocessing": m["preprocessing"] | {"image_size": 96}}, "metadata"),
        (lambda m: m | {"embedding_size": "32"}, "embedding_size"),
        (lambda m: m | {"embedding_size": 64}, "metadata says 64"),
        (lambda m: m | {"threshold": {"value": 5}}, "threshold.value"),
        (lambda m: m | {"pair_head": {"scale": "x", "bias": 0}}, "pair_head"),
        (lambda m: {k: v for k, v in m.items() if k != "fingerprint"}, "fingerprint"),
    ],
)
def test_damaged_onnx_metadata_refused(onnx_model, tmp_path, pins_small, capsys, edit, words):
    bad = _onnx_with(onnx_model, tmp_path / "bad.onnx", edit)
    a, b = sorted(sorted(pins_small.iterdir())[0].iterdir())[:2]
    rc = main(["verify", "--model", str(bad), str(a), str(b)])
    err = capsys.readouterr().err
    assert rc == 2 and words in err and "Traceback" not in err, err


def test_onnx_with_nan_weights_refused_at_load(onnx_model, tmp_path):
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(onnx_model))
    for init in m.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.size > 1:
            init.CopyFrom(numpy_helper.from_array(np.full_like(arr, np.nan), init.name))
    bad = tmp_path / "nan.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(SiamfaceError, match="non-finite embeddings"):
        siamface.load(bad)
