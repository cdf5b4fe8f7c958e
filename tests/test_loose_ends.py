"""Loose ends found by trying siamface as a clumsy user would: duplicate keys in a config file,
everything --skip-bad skipped reported, a read-only gallery refused before any embedding."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import needs_data
from test_faces_prepare import raw_tree  # noqa: F401 - a fixture
from test_outputs import read_only_dir  # noqa: F401 - a fixture

from siamface.cli.main import main
from siamface.errors import ConfigError
from siamface.train.config import make_config


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    "text",
    [
        "lr: 0.1\nepochs: 3\nlr: 0.001\n",
        "epochs: 2\naugment:\n  flip: true\n  flip: false\n",  # nested mapping too
    ],
)
def test_duplicate_yaml_keys_are_refused(tmp_path, capsys, text):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match="given twice") as info:
        make_config(cfg)
    assert "lines" in str(info.value) and str(cfg) in str(info.value)
    rc, _, err = _cli(capsys, "train", "--config", cfg, "--data", tmp_path, "--out", tmp_path / "r")
    assert rc == 2 and "given twice" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_yaml_without_duplicates_still_loads(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("lr: 0.01\nepochs: 3\n")
    c = make_config(cfg)
    assert c.lr == 0.01 and c.epochs == 3


@needs_data
def test_skip_bad_reports_everything_skipped(capsys, tiny_checkpoint, pins_small, tmp_path):
    people = tmp_path / "people"
    ids = sorted(pins_small.iterdir())[:2]
    for d in ids:
        shutil.copytree(d, people / d.name)
    (people / "Empty Person").mkdir()  # no images at all
    (people / ids[0].name / "notes.txt").write_text("not an image")
    (people / ids[1].name / "broken.jpg").write_bytes(b"\xff\xd8 broken")
    g = tmp_path / "g"
    rc, out, err = _cli(
        capsys, "gallery", "enroll", g, "--model", tiny_checkpoint, people, "--skip-bad"
    )
    assert rc == 0, err
    assert "Empty Person" in err and "notes.txt" in err and "broken.jpg" in err
    rc, out, err = _cli(
        capsys,
        "gallery",
        "enroll",
        tmp_path / "g2",
        "--model",
        tiny_checkpoint,
        people,
        "--skip-bad",
        "--json",
    )
    report = json.loads(out)
    ignored = {p["path"].rsplit("/", 1)[-1] for p in report["ignored_files"]}
    assert {"Empty Person", "notes.txt"} <= ignored
    assert [s["path"].rsplit("/", 1)[-1] for s in report["skipped_images"]] == ["broken.jpg"]
    # one person's folder given directly: its non-image files are reported too
    rc, out, err = _cli(
        capsys,
        "gallery",
        "enroll",
        tmp_path / "g3",
        "--model",
        tiny_checkpoint,
        people / ids[0].name,
    )
    assert rc == 0 and "notes.txt" in err


@needs_data
def test_read_only_gallery_is_refused_before_embedding(
    capsys,
    tiny_checkpoint,
    pins_small,
    tmp_path,
    read_only_dir,  # noqa: F811
):
    people = tmp_path / "people"
    shutil.copytree(sorted(pins_small.iterdir())[0], people / "Ada")
    # An unreadable image aborts embedding (no --skip-bad): had the embedding run first, that
    # would be the error; the read-only place must be named first.
    (people / "Ada" / "zz-broken.jpg").write_bytes(b"\xff\xd8 broken")
    rc, _, err = _cli(
        capsys, "gallery", "enroll", read_only_dir / "g", "--model", tiny_checkpoint, people
    )
    assert rc == 2 and ("read-only" in err.lower() or "permission" in err.lower())
    assert str(read_only_dir / "g") in err
    assert "zz-broken" not in err and len(err.strip().splitlines()) == 1


@needs_data
def test_prepare_killed_before_logging_keeps_every_record(raw_tree, tmp_path):  # noqa: F811
    """A kill between a worker saving crops and the log line recording them: on resume the
    report still has every photo's full record (score, box, problems), not a bare stub."""
    from siamface.faces.prepare import LOG_NAME, PrepareOptions, prepare_folders

    out = tmp_path / "aligned"
    first = prepare_folders(raw_tree, out, PrepareOptions(workers=1), progress=False)
    log = out / LOG_NAME
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-5]))  # the last five records never reached the log
    again = prepare_folders(raw_tree, out, PrepareOptions(workers=1), progress=False)
    ok = [r for r in again["images"] if r["status"] == "ok"]
    assert ok and all("score" in r and "box" in r for r in ok)
    assert again["problems"] == first["problems"]
    strip = [{k: v for k, v in r.items() if k != "resumed"} for r in again["images"]]
    assert strip == first["images"]
