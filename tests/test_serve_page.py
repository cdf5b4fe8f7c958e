"""The page's server side, over HTTP on a real uvicorn server: the page and its static files,
the model card (what a model records, and nothing when it records nothing), the evaluation
report's plots, batching modes, and the texts of both languages."""

from __future__ import annotations

import json
import re
import shutil
from importlib import resources
from pathlib import Path

import pytest
import torch
from test_serve_api import jpeg, running

from siamface.cli.main import main as cli
from siamface.errors import SiamfaceError
from siamface.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from siamface.model.network import ModelConfig, build_model
from siamface.serve import create_app
from siamface.tensors.transforms import Preprocessing

STATIC = resources.files("siamface.serve") / "static"


def checkpoint(path: Path, info: dict | None = None, threshold: dict | None = None) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="test_efficientnet", embedding_size=16)
    ckpt = Checkpoint(
        cfg, Preprocessing(image_size=48), build_model(cfg).state_dict(), threshold, info=info or {}
    )
    return save_checkpoint(ckpt, path)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, pins_small) -> tuple[Path, Path]:
    """A real ``siamface evaluate`` report of a tiny model on sample faces."""
    root = tmp_path_factory.mktemp("page")
    model = checkpoint(root / "m.safetensors", threshold={"value": 0.9, "target_far": 1e-3})
    data = root / "data"
    for person in sorted(pins_small.iterdir())[:4]:
        shutil.copytree(person, data / person.name)
    out = root / "report"
    assert cli(["evaluate", "--model", str(model), "--data", str(data), "--out", str(out),
                "--no-progress", "--workers", "1"]) == 0  # fmt: skip
    return model, out


def test_page_and_static_files_are_served(tiny_checkpoint):
    with running(create_app(tiny_checkpoint, device="cpu")) as c:
        r = c.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert '<script src="/static/app.js"' in r.text
        for name, kind in (("app.js", "javascript"), ("i18n.js", "javascript"),
                           ("style.css", "text/css")):  # fmt: skip
            s = c.get(f"/static/{name}")
            assert s.status_code == 200 and kind in s.headers["content-type"], name
            assert s.text == (STATIC / name).read_text(encoding="utf-8")
        assert c.get("/static/../app.py").status_code == 404


def _texts() -> dict[str, set[str]]:
    """The keys of each language in i18n.js (``key:`` at the dictionaries' indentation)."""
    src = (STATIC / "i18n.js").read_text(encoding="utf-8")
    parts = re.split(r"^  (en|ja): \{$", src, flags=re.M)
    return {parts[i]: set(re.findall(r"^    (\w+):", parts[i + 1], re.M)) for i in (1, 3)}


def test_both_languages_have_every_text_the_page_uses():
    texts = _texts()
    assert texts["en"] and texts["en"] == texts["ja"], texts["en"] ^ texts["ja"]
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    js = (STATIC / "app.js").read_text(encoding="utf-8")
    used = set(re.findall(r'data-i18n(?:-aria)?="(\w+)"', html))
    used |= set(re.findall(r'\bt\("(\w+)"', js))
    missing = used - texts["en"]
    assert not missing, f"texts used by the page but not defined: {sorted(missing)}"
    for prefix in ("slot_", "where_", "plot_"):  # built from names at run time
        assert any(k.startswith(prefix) for k in texts["en"])


def test_model_card_shows_what_the_model_records(tmp_path):
    info = {
        "init": {"name": "/home/me/models/sface-base.safetensors", "fingerprint": "ab" * 8},
        "train_identities": 70,
        "train_images": 4200,
        "val_identities": 18,
        "data": ["/srv/faces/pins90", "/srv/faces/celeba"],
        "val_metrics": {"auc": 0.97, "eer": 0.08, "tar_at_far": {"1e-03": 0.61}, "notes": []},
        "config": {"lr": 0.001},  # not for the card
    }
    thr = {"value": 0.41, "target_far": 1e-3, "method": "far", "source": "/srv/faces/val, /x/y"}
    model = checkpoint(tmp_path / "full.safetensors", info, thr)
    with running(create_app(model, device="cpu")) as c:
        card = c.get("/model-card").json()
    assert card["backbone"] == "test_efficientnet" and card["embedding_size"] == 16
    assert card["image_size"] == 48 and card["aligned"] is False and card["pair_head"] is False
    assert card["training"] == {
        "init": {"name": "sface-base.safetensors", "fingerprint": "ab" * 8},
        "train_identities": 70,
        "train_images": 4200,
        "val_identities": 18,
        "data": ["pins90", "celeba"],
    }
    assert card["validation"] == {"auc": 0.97, "eer": 0.08, "tar_at_far": {"1e-03": 0.61}}
    assert card["threshold"]["value"] == 0.41 and card["threshold"]["source"] == "val, y"
    assert card["report"] is None


def test_model_card_of_a_model_that_records_nothing(tmp_path):
    bare = checkpoint(tmp_path / "bare.safetensors")
    with running(create_app(bare, device="cpu")) as c:
        card = c.get("/model-card").json()
        assert card["threshold"] is None and card["training"] == {}
        assert card["validation"] is None and card["report"] is None
        r = c.post("/verify", files={"image1": ("a.jpg", jpeg(1)), "image2": ("b.jpg", jpeg(2))})
        assert r.status_code == 400 and r.json()["code"] == "no_threshold"
    with running(create_app(bare, threshold=0.2, device="cpu")) as c:
        assert c.get("/model-card").json()["threshold"] == {
            "value": 0.2,
            "source": "given",
            "method": "given",
        }


def test_report_plots_and_summary(report_dir, tmp_path):
    model, report = report_dir
    with running(create_app(model, report=report, device="cpu")) as c:
        card = c.get("/model-card").json()
        rep = card["report"]
        assert rep["same_model"] is True and rep["data"]["identities"] == 4
        assert rep["plots"] == {
            "roc": "/report/roc.png",
            "det": "/report/det.png",
            "histogram": "/report/histogram.png",
        }
        assert rep["data"]["roots"] == ["data"]  # folder names only
        written = json.loads((report / "report.json").read_text())
        assert rep["metrics"]["auc"] == written["metrics"]["auc"]
        # the slider's table: TAR/FAR every 0.005 of cosine, as the report measured them
        assert rep["rates"] == written["rates_by_threshold"]
        assert len(rep["rates"]["threshold"]) == 401
        for kind, name in (("roc", "roc.png"), ("det", "det.png"), ("histogram", "scores.png")):
            r = c.get(f"/report/{kind}.png")
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            assert r.content == (report / name).read_bytes()
        r = c.get("/report/report.png")
        assert r.status_code == 404 and r.json()["code"] == "no_report"
    # a report of another model is served, and flagged
    other = checkpoint(tmp_path / "other.safetensors")
    sd = load_checkpoint(other)
    sd.state_dict = {k: v + 1e-3 if v.is_floating_point() else v for k, v in sd.state_dict.items()}
    other = save_checkpoint(sd, tmp_path / "other.safetensors")
    with running(create_app(other, report=report, device="cpu")) as c:
        assert c.get("/model-card").json()["report"]["same_model"] is False


def test_report_folder_is_checked_at_start(report_dir, tmp_path):
    model, report = report_dir
    with pytest.raises(SiamfaceError, match="no report.json"):
        create_app(model, report=tmp_path)
    (tmp_path / "report.json").write_text("[1, 2]")
    with pytest.raises(SiamfaceError, match="not a siamface evaluation report"):
        create_app(model, report=tmp_path)
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(SiamfaceError, match="cannot read"):
        create_app(model, report=tmp_path)
    # listed plots that are missing, or that point outside the folder, are not served
    data = json.loads((report / "report.json").read_text())
    data["plots"] = {"roc": "../../etc/passwd.png", "det": "missing.png", "histogram": "x.txt"}
    data["roc"]["threshold"][0] = float("inf")  # written as Infinity, as sklearn's ROC can
    data["metrics"]["eer"] = float("nan")
    data["rates_by_threshold"]["tar"][3] = float("nan")  # a damaged table: no rates shown
    (tmp_path / "report.json").write_text(json.dumps(data))
    with running(create_app(model, report=tmp_path, device="cpu")) as c:
        rep = c.get("/model-card").json()["report"]  # valid JSON: no 500
        assert rep["plots"] == {}
        assert rep["roc"]["threshold"][0] is None and rep["metrics"]["eer"] is None
        assert rep["rates"] is None
        assert c.get("/report/roc.png").status_code == 404
    assert cli(["serve", "--model", str(model), "--report", str(tmp_path / "nope")]) == 2


def test_batching_is_off_on_cpu_unless_asked(tiny_checkpoint):
    for mode, enabled, label in (("auto", False, "auto (off)"), ("on", True, "on"),
                                 ("off", False, "off")):  # fmt: skip
        with running(create_app(tiny_checkpoint, batching=mode, device="cpu")) as c:
            b = c.get("/health").json()["batching"]
            assert (b["enabled"], b["mode"]) == (enabled, label), mode
            assert b["max_batch"] == (32 if enabled else 1)
    with pytest.raises(SiamfaceError, match="batching must be one of"):
        create_app(tiny_checkpoint, batching="sometimes")
