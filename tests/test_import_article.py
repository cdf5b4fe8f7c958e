"""`siamface import`: the article's .pth files (backbone.* + embedder.*) become checkpoints
that give the article's own cosine similarities, and hostile or foreign files are refused."""

from __future__ import annotations

import json
import os

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import TINY_BACKBONE, needs_data
from torch import nn

import siamface
from siamface.cli.main import main
from siamface.model.checkpoint import load_checkpoint, read_metadata


class ArticleSiameseNetwork(nn.Module):
    """The structure the article's training script saves (its class, as a reader has it)."""

    def __init__(self, backbone: str, embedding_dim: int = 512):
        super().__init__()
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0)
        self.embedder = nn.Linear(self.backbone.num_features, embedding_dim)

    def forward(self, x):
        return self.embedder(self.backbone(x))


@pytest.fixture(scope="module")
def article_pth(tmp_path_factory):
    torch.manual_seed(3)
    model = ArticleSiameseNetwork(TINY_BACKBONE, embedding_dim=24).eval()
    # a little training-like drift so BatchNorm statistics are not the defaults
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("article") / "model_epoch8_loss0.0010.pth"
    torch.save(model.state_dict(), path)  # exactly what the article's script does
    return path, model


def test_import_gives_the_articles_similarities(article_pth, tmp_path, capsys):
    path, article = article_pth
    out = tmp_path / "article.safetensors"
    rc = main(["import", str(path), "--out", str(out), "--backbone", TINY_BACKBONE,
               "--image-size", "64", "--json"])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["embedding_size"] == 24 and summary["threshold"] is None
    meta = read_metadata(out)
    assert meta["model"]["backbone"] == TINY_BACKBONE
    assert meta["preprocessing"]["image_size"] == 64 and meta["preprocessing"]["aligned"] is False
    assert meta["info"]["imported_from"] == str(path.resolve())
    net = load_checkpoint(out).build()
    x = torch.randn(6, 3, 64, 64)
    with torch.no_grad():
        ref = article(x)
        ours = net(x)
    want = F.cosine_similarity(ref[:3], ref[3:])  # the article's inference computation
    got = (ours[:3] * ours[3:]).sum(1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@needs_data
def test_imported_model_calibrates_and_verifies(article_pth, pins_small, tmp_path, capsys):
    path, _ = article_pth
    out = tmp_path / "a.safetensors"
    assert main(["import", str(path), "--out", str(out), "--backbone", TINY_BACKBONE,
                 "--image-size", "64"]) == 0  # fmt: skip
    a, b = sorted(sorted(pins_small.iterdir())[0].iterdir())[:2]
    assert main(["verify", "--model", str(out), str(a), str(b)]) == 2
    assert "no stored decision threshold" in capsys.readouterr().err
    assert main(["calibrate", "--model", str(out), "--data", str(pins_small), "--workers", "0",
                 "--no-progress", "--best-accuracy"]) == 0  # fmt: skip
    assert main(["verify", "--model", str(out), str(a), str(b)]) in (0, 1)
    assert siamface.load(out).threshold is not None


def test_wrong_backbone_is_refused_with_a_hint(article_pth, tmp_path, capsys):
    path, _ = article_pth
    out = tmp_path / "x.safetensors"
    assert main(["import", str(path), "--out", str(out)]) == 2  # default: tf_efficientnetv2_b0
    err = capsys.readouterr().err
    assert "do not match the declared model (tf_efficientnetv2_b0" in err and "--backbone" in err
    assert not out.exists()


def test_foreign_files_are_refused(tmp_path, capsys):
    plain = timm.create_model(TINY_BACKBONE, pretrained=False, num_classes=0)
    torch.save(plain.state_dict(), tmp_path / "plain.pth")
    assert main(["import", str(tmp_path / "plain.pth"), "--out", str(tmp_path / "o")]) == 2
    assert "not one of the article's models" in capsys.readouterr().err
    (tmp_path / "junk.pth").write_bytes(b"\x80\x04 not a pickle")
    assert main(["import", str(tmp_path / "junk.pth"), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read weight file" in capsys.readouterr().err


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['SIAMFACE_TEST_PWNED']}",))


def test_a_pickle_with_code_is_never_executed(tmp_path, monkeypatch, capsys):
    flag = tmp_path / "pwned"
    monkeypatch.setenv("SIAMFACE_TEST_PWNED", str(flag))
    torch.save({"backbone.w": torch.zeros(1), "embedder.weight": _Payload()}, tmp_path / "e.pth")
    assert main(["import", str(tmp_path / "e.pth"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "refused weight file" in err and "could run code" in err
    # One line in our own words: never PyTorch's page ending in "set weights_only=False".
    assert len(err.strip().splitlines()) == 1 and "weights_only" not in err
    assert not flag.exists()
