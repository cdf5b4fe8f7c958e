"""``siamface centre``: a centred copy of a face model, written only when held-out people gain,
with a threshold measured on held-out scores; and the cross-fitting it rests on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, copy_identities

from siamface.cli.main import main
from siamface.embed.centring import held_out_scores


@pytest.fixture(scope="module")
def people(tmp_path_factory) -> Path:
    """10 people x 5 tight crops from pins90."""
    if not (SHARED_DATA / "pins90").is_dir():
        pytest.skip(f"sample data not found at {SHARED_DATA}")
    return copy_identities(SHARED_DATA / "pins90", tmp_path_factory.mktemp("c") / "p", 10, 5)


def _embed(model: str, folder: Path) -> dict[str, np.ndarray]:
    """{file name: embedding} as ``siamface embed`` writes them (the public path)."""
    from siamface.embed.load import create_embedder
    from siamface.scores.evaluate import collect_images

    imgs = collect_images([folder])
    emb, errors = create_embedder(model, device="cpu").embed_paths(imgs.paths, progress=False)
    assert not errors
    return {f"{p.parent.name}/{p.name}": e for p, e in zip(imgs.paths, emb, strict=True)}


def centre(capsys, *args) -> tuple[int, str]:
    """``siamface centre ARGS`` in this process: (exit status, what it printed)."""
    rc = main(["centre", "--no-progress", *map(str, args)])
    return rc, capsys.readouterr().out


def test_centre_writes_a_centred_sface_with_a_held_out_threshold(people, tmp_path, capsys):
    out = tmp_path / "sface_c.safetensors"
    args = ("--model", "sface", "--data", people, "--out", out)
    rc, printed = centre(capsys, *args, "--json")
    assert rc in (0, 1)
    m = json.loads(printed)
    h = m["held_out"]
    assert m["identities"] == 10 and m["images"] == 50
    # the decision is the held-out AUC's, and the exit status and the file say which it was
    assert m["kept"] == (h["centred"]["auc"] > h["plain"]["auc"])
    assert (rc == 0) == m["kept"] == out.is_file()
    if not m["kept"]:
        assert m["written"] is None
        rc, printed = centre(capsys, *args)
        assert rc == 1 and "nothing written" in printed and not out.is_file()
        rc, printed = centre(capsys, *args, "--force")
        assert rc == 0 and "written because of --force" in printed
    from siamface.model.checkpoint import load_checkpoint

    ck = load_checkpoint(out)
    assert ck.model_cfg.centred
    thr = ck.threshold
    assert "siamface centre" in thr["source"] and thr["target_far"] == 1e-3
    assert thr["value"] != pytest.approx(0.363, abs=1e-3)  # not SFace's own threshold
    # 10 people give ~500 held-out impostor pairs: FAR 1e-3 cannot be measured, and the
    # threshold falls back to the equal-error point, saying so
    assert thr["n_impostor"] < 1000 and thr["method"].startswith("eer")
    assert thr["far"] == pytest.approx(1 - thr["tar"], abs=0.05)
    # every command now embeds through the centre: normalise(plain - mean of plain faces)
    plain, centred = _embed("sface", people), _embed(str(out), people)
    u = np.stack(list(plain.values()))
    mean = u.mean(axis=0)
    assert np.linalg.norm(mean) == pytest.approx(ck.info["centring"]["mean_norm"], abs=1e-3)
    for k, p in plain.items():
        want = (p - mean) / np.linalg.norm(p - mean)
        assert np.abs(centred[k] - want).max() < 1e-4
    # centring a centred model measures from the plain one: the same people, the same centre
    again = tmp_path / "again.safetensors"
    rc, printed = centre(capsys, "--model", out, "--data", people, "--out", again, "--force")
    assert rc == 0 and "centred already" in printed, printed
    a, b = load_checkpoint(out).state_dict["centre"], load_checkpoint(again).state_dict["centre"]
    assert float((a - b).abs().max()) < 1e-5


def test_centre_with_a_condition_centres_on_faces_as_evaluate_degrades_them(
    people, tmp_path, capsys
):
    from siamface.embed.load import create_embedder
    from siamface.model.checkpoint import load_checkpoint
    from siamface.scores.compare import ConditionedEmbedder
    from siamface.scores.evaluate import collect_images
    from siamface.tensors.conditions import parse_condition

    out = tmp_path / "c.safetensors"
    spec = "lowres:16,jpeg:30"
    args = ("--model", "sface", "--data", people, "--force", "--json", "--out", out)
    rc, printed = centre(capsys, *args, "--condition", spec)
    assert rc == 0 and json.loads(printed)["condition"] == spec
    # the faces evaluate --condition would show (same condition, same seed)
    seen = ConditionedEmbedder(create_embedder("sface", device="cpu"), parse_condition(spec, 0))
    emb, errors = seen.embed_paths(collect_images([people]).paths, progress=False)
    assert not errors
    got = load_checkpoint(out).state_dict["centre"].numpy()
    assert np.abs(got - emb.mean(axis=0)).max() < 1e-4
    clean = np.stack(list(_embed("sface", people).values())).mean(axis=0)
    assert np.abs(got - clean).max() > 1e-2  # and not the clean faces' mean


@pytest.mark.parametrize(
    "model, extra, says",
    [
        ("sface", [], "give --out"),
        ("dlib", ["--out", "x.safetensors"], "cannot be rewritten"),
        ("sface+dlib", ["--out", "x.safetensors"], "fusion centres its members"),
        ("sface:tta=flip", ["--out", "x.safetensors"], "fusion centres its members"),
        ("missing.safetensors", [], "not found"),
    ],
)
def test_centre_refuses_what_it_cannot_rewrite_in_one_line(tmp_path, capsys, model, extra, says):
    rc = main(["centre", "--model", model, "--data", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and says in err and "Traceback" not in err


def test_centre_needs_people_to_hold_out(people, tmp_path, capsys):
    few = copy_identities(people, tmp_path / "few", 3, 5)
    out = tmp_path / "o.safetensors"
    rc = main(["centre", "--model", "sface", "--data", str(few), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "at least 4 people" in err and not out.exists()


def test_held_out_scores_never_use_a_mean_that_saw_the_faces():
    """Two halves of people with different mean faces: a half scored with its own mean would
    separate perfectly, with the other half's it cannot (the scores are cross-fitted)."""
    rng = np.random.default_rng(0)
    labels, emb = [], []
    for person in range(8):
        direction = rng.normal(size=16)
        for _ in range(4):
            labels.append(f"p{person}")
            emb.append(direction + 0.3 * rng.normal(size=16))
    emb = np.asarray(emb)
    h = held_out_scores(emb, labels, seed=0)
    assert h is not None and len(h.same) == 2
    scores, same = h.pooled("centred")
    assert len(scores) == len(same) == sum(len(s) for s in h.same)
    # recompute one half by hand with the *other* half's mean
    from siamface.embed.centring import halves

    a, b = halves(labels, 0)
    u = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    mean_b = u[b].mean(axis=0)
    x = u[a] - mean_b
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    got = np.sort(h.centred[0])
    iu = np.triu_indices(len(x), 1)
    assert np.allclose(got, np.sort(sims[iu]), atol=1e-9)
    assert held_out_scores(emb[:12], labels[:12]) is None  # three people: nothing to hold out


def test_centre_a_third_party_onnx_writes_the_centre_into_its_card(people, tmp_path, capsys):
    """OpenCV Zoo's SFace file as shipped, through its card: the centre and the new threshold
    go into the card, every command then embeds centred, and the fingerprint changes."""
    import shutil

    from test_model_bring_fuse import SFACE_CARD

    from siamface.embed.card import read_card
    from siamface.embed.load import create_embedder
    from siamface.model.zoo import sface_onnx_path

    onnx = tmp_path / "sface.onnx"
    shutil.copy2(sface_onnx_path(), onnx)
    card = tmp_path / "sface.onnx.card.yaml"
    card.write_text(SFACE_CARD)
    before = create_embedder(str(onnx), device="cpu").fingerprint
    plain = _embed(str(onnx), people)
    rc, printed = centre(capsys, "--model", onnx, "--data", people, "--force", "--json")
    assert rc == 0
    m = json.loads(printed)
    assert m["written"] == str(card) and m["previous_threshold"]["value"] == 0.363
    c = read_card(card)
    assert c.centre is not None and len(c.centre) == 128
    assert c.threshold == pytest.approx(m["threshold"]["value"])
    assert "siamface centre" in c.threshold_source and c.license == "Apache-2.0"
    u = np.stack(list(plain.values()))
    mean = u.mean(axis=0)
    assert np.abs(np.asarray(c.centre) - mean).max() < 1e-5
    after = create_embedder(str(onnx), device="cpu")
    assert after.fingerprint != before and after.info["centred"]
    centred = _embed(str(onnx), people)
    for k, p in plain.items():
        want = (p - mean) / np.linalg.norm(p - mean)
        assert np.abs(centred[k] - want).max() < 1e-4
    # a card whose centre does not fit the model is refused when the model is opened
    card.write_text(SFACE_CARD + "centre: [0.1, 0.2, 0.3]\n")
    from siamface.errors import SiamfaceError

    with pytest.raises(SiamfaceError, match="centre has 3 values, the model's embedding 128"):
        create_embedder(str(onnx), device="cpu")
