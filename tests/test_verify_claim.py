"""The article's 1:1 use case against a claimed identity (`verify --gallery G --as NAME`,
`FaceModel.verify_identity`) and the BCE pair head's same-person probability."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import needs_data

import siamface
from siamface.cli.main import main
from siamface.errors import SiamfaceError
from siamface.gallery import Gallery
from siamface.model.checkpoint import load_checkpoint, save_checkpoint

pytestmark = needs_data


@pytest.fixture(scope="module")
def people(pins_small):
    return sorted(p for p in pins_small.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def gallery(tiny_checkpoint, pins_small, tmp_path_factory):
    g = tmp_path_factory.mktemp("claim") / "staff"
    assert (
        main(["gallery", "enroll", str(g), str(pins_small), "--model", str(tiny_checkpoint)]) == 0
    )
    return g


def _score_by_identify(gallery, image, person, capsys) -> float:
    """The person's score as 1:N identification reports it (the reference)."""
    n = len(Gallery.open(gallery))
    assert main(["identify", str(gallery), str(image), "--top-k", str(n), "--json"]) == 0
    matches = json.loads(capsys.readouterr().out)["matches"]
    return next(m["score"] for m in matches if m["name"] == person)


def test_verify_as_decides_at_the_gallery_threshold(gallery, people, capsys, tiny_checkpoint):
    probe = sorted(people[0].iterdir())[0]
    name = people[3].name  # a claim about somebody else, somewhere down the ranking
    s = _score_by_identify(gallery, probe, name, capsys)
    base = ["verify", "--gallery", str(gallery), "--as", name, str(probe), "--json"]
    for thr, rc_want in ((s - 1e-4, 0), (min(1.0, s + 1e-4), 1)):
        assert main(["gallery", "set", str(gallery), "--threshold", str(thr)]) == 0
        capsys.readouterr()
        assert main(base) == rc_want
        r = json.loads(capsys.readouterr().out)
        assert r["person"] == name and r["same"] is (rc_want == 0)
        assert r["similarity"] == pytest.approx(s, abs=1e-5)
        assert r["threshold"] == pytest.approx(thr) and r["threshold_source"].startswith("gallery")
        assert r["probability"] is None  # this model has no pair head
    # the API agrees, and an explicit threshold wins over the gallery's
    m = siamface.load(tiny_checkpoint)
    c = m.verify_identity(probe, name, gallery)
    assert c.similarity == pytest.approx(s, abs=1e-5) and c.same is False
    c2 = m.verify_identity(probe, name, gallery, threshold=-1.0)
    assert c2.same is True and c2.threshold_source == "given"
    with Gallery.open(gallery) as g:  # an open Gallery works too
        assert m.verify_identity(probe, name, g).similarity == pytest.approx(s, abs=1e-5)
    assert main(["verify", "--gallery", str(gallery), "--as", name, str(probe)]) == 1
    assert capsys.readouterr().out.startswith(f"is not {name}: similarity")


def test_max_aggregation_scores_the_best_image(gallery, people, tmp_path, capsys, tiny_checkpoint):
    g2 = tmp_path / "g2"
    assert main(["gallery", "enroll", str(g2), str(people[1].parent), "--model",
                 str(tiny_checkpoint), "--aggregation", "max"]) == 0  # fmt: skip
    m = siamface.load(tiny_checkpoint)
    probe = sorted(people[0].iterdir())[0]
    own = m.embed(sorted(people[2].iterdir()))
    best = float((own @ m.embed(probe)).max())
    c = m.verify_identity(probe, people[2].name, g2, threshold=0.0)
    assert c.similarity == pytest.approx(best, abs=1e-4)


def test_claims_that_cannot_be_decided_exit_2(gallery, people, tmp_path, capsys):
    probe = str(sorted(people[0].iterdir())[0])
    cases = [
        (["--gallery", str(gallery), "--as", "Nobody Enrolled", probe], "not enrolled"),
        (["--as", people[0].name, probe], "--gallery and --as go together"),
        (["--gallery", str(gallery), "--as", people[0].name, probe, probe], "exactly one"),
        (["--gallery", str(tmp_path / "none"), "--as", "x", probe], "gallery not found"),
    ]
    for argv, words in cases:
        assert main(["verify", *argv]) == 2
        assert words in capsys.readouterr().err


def test_a_gallery_of_another_model_is_refused(gallery, people, tiny_checkpoint, tmp_path):
    ck = load_checkpoint(tiny_checkpoint)
    ck.state_dict = {k: v + 0.01 if v.is_floating_point() else v for k, v in ck.state_dict.items()}
    other = save_checkpoint(ck, tmp_path / "other.safetensors")
    probe = sorted(people[0].iterdir())[0]
    with pytest.raises(SiamfaceError, match="built with model"):
        siamface.load(other).verify_identity(probe, people[0].name, gallery)
    assert main(["verify", "--gallery", str(gallery), "--as", people[0].name, str(probe),
                 "--model", str(other)]) == 2  # fmt: skip


# ----------------------------------------------------------------------------- pair head
@pytest.fixture(scope="module")
def bce_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny model with a trained-looking BCE pair head (as loss=bce saves it)."""
    ck = load_checkpoint(tiny_checkpoint)
    ck.pair_head = {"scale": torch.tensor(120.0), "bias": torch.tensor(0.9995)}
    return save_checkpoint(ck, tmp_path_factory.mktemp("bce") / "bce.safetensors")


def test_pair_probability_matches_the_training_head(bce_checkpoint, people, capsys):
    ck = load_checkpoint(bce_checkpoint)
    head = ck.build_pair_head()  # the module the BCE loss trains
    m = siamface.load(bce_checkpoint)
    a, b = sorted(people[0].iterdir())[:2]
    r = m.verify(a, b)
    with torch.no_grad():
        want = float(head(torch.tensor(r.similarity)))
    assert r.probability == pytest.approx(want, abs=1e-6) and 0.0 < r.probability < 1.0
    sims = np.linspace(-1, 1, 9)
    with torch.no_grad():
        ref = head(torch.tensor(sims, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(m.embedder.pair_probability(sims), ref, atol=1e-6)
    assert main(["verify", "--model", str(bce_checkpoint), str(a), str(b), "--json"]) in (0, 1)
    # the CLI embeds through the batched file loader: same model, float-rounding apart
    cli_p = json.loads(capsys.readouterr().out)["probability"]
    assert cli_p == pytest.approx(want, abs=1e-4)
    main(["verify", "--model", str(bce_checkpoint), str(a), str(b)])
    assert f"same-person probability {cli_p:.3f}" in capsys.readouterr().out


def test_models_without_a_pair_head_report_none(tiny_checkpoint, people):
    m = siamface.load(tiny_checkpoint)
    assert m.embedder.pair_probability(np.array([0.3])) is None
    assert m.verify(*sorted(people[0].iterdir())[:2]).probability is None


def test_onnx_export_carries_the_pair_head(bce_checkpoint, tmp_path, people):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bce.onnx"
    assert main(["export", "--model", str(bce_checkpoint), "--out", str(out)]) == 0
    a, b = sorted(people[0].iterdir())[:2]
    rt, pt = siamface.load(out).verify(a, b), siamface.load(bce_checkpoint).verify(a, b)
    assert rt.probability == pytest.approx(pt.probability, abs=1e-3)


# ----------------------------------------------------------------------------- REST
def test_rest_verify_against_a_claimed_person(gallery, people, tiny_checkpoint, capsys):
    from test_serve_api import running

    from siamface.serve import create_app

    probe = sorted(people[0].iterdir())[0]
    own, other = people[0].name, people[3].name
    app = create_app(tiny_checkpoint, gallery)
    with running(app) as client:
        for name in (own, other):
            assert main(
                ["verify", "--gallery", str(gallery), "--as", name, str(probe), "--json"]
            ) in (0, 1)
            want = json.loads(capsys.readouterr().out)
            files = {"image1": (probe.name, probe.read_bytes(), "image/jpeg")}
            r = client.post("/verify", files=files, data={"person": name})
            assert r.status_code == 200, r.text
            got = r.json()
            assert got["person"] == name and got["same"] is want["same"]
            assert got["similarity"] == pytest.approx(want["similarity"], abs=1e-4)
            assert got["threshold"] == pytest.approx(want["threshold"])
            assert got["threshold_source"] == want["threshold_source"]
        files = {"image1": (probe.name, probe.read_bytes(), "image/jpeg")}
        r = client.post("/verify", files=files, data={"person": "Nobody At All"})
        assert r.status_code == 404 and r.json()["code"] == "not_enrolled"
        both = {**files, "image2": (probe.name, probe.read_bytes(), "image/jpeg")}
        r = client.post("/verify", files=both, data={"person": own})
        assert r.status_code == 400 and "either image2" in r.json()["detail"]
        r = client.post("/verify", files=files)  # neither a second photo nor a claim
        assert r.status_code == 422 and r.json()["field"] == "image2"


def test_rest_verify_reports_the_pair_probability(bce_checkpoint, people):
    from test_serve_api import running

    from siamface.serve import create_app

    a, b = sorted(people[0].iterdir())[:2]
    want = siamface.load(bce_checkpoint).verify(a, b).probability
    with running(create_app(bce_checkpoint, None)) as client:
        files = {
            "image1": (a.name, a.read_bytes(), "image/jpeg"),
            "image2": (b.name, b.read_bytes(), "image/jpeg"),
        }
        r = client.post("/verify", files=files)
        assert r.status_code == 200, r.text
        assert r.json()["probability"] == pytest.approx(want, abs=1e-4)
