"""`siamface data check DIR...`: the dataset report without training."""

from __future__ import annotations

import json
import shutil
from math import comb

from conftest import needs_data

from siamface.cli.main import main
from siamface.folders.marker import read_marker, write_marker

pytestmark = needs_data


def test_report_counts_pairs_duplicates_and_guidance(pins_small, tmp_path, capsys):
    data = tmp_path / "d"
    shutil.copytree(pins_small, data)
    people = sorted(data.iterdir())
    shutil.copy(next(people[0].iterdir()), people[1] / "same_file_other_person.jpg")
    shutil.copy(next(people[2].iterdir()), people[2] / "copy.jpg")
    (people[3] / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    assert main(["data", "check", str(data), "--json", "--no-progress"]) == 0
    rep = json.loads(capsys.readouterr().out)
    counts = {p.name: sum(1 for f in p.iterdir() if f.name != "broken.jpg") for p in people}
    n = sum(counts.values())
    assert rep["identities"] == len(people) and rep["images"] == n
    assert rep["positive_pairs"] == sum(comb(c, 2) for c in counts.values())
    assert rep["negative_pairs"] == comb(n, 2) - rep["positive_pairs"]
    assert [u["path"] for u in rep["unreadable"]] == [str(people[3] / "broken.jpg")]
    assert len(rep["duplicates_across_identities"]) == 1
    assert rep["duplicates_within_identity"][0][0].startswith(str(people[2]))
    assert any("below the article's small-task scale" in w for w in rep["warnings"])
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before  # nothing written


def test_two_roots_and_text_output(pins_small, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(pins_small, a)
    shutil.copytree(pins_small, b)
    assert main(["data", "check", str(a), str(b), "--no-progress", "--no-duplicates"]) == 0
    out = capsys.readouterr().out
    assert "identities: 24" in out and "pairs:" in out


def test_not_enough_identities_exits_2(pins_small, tmp_path, capsys):
    one = tmp_path / "one"
    shutil.copytree(sorted(pins_small.iterdir())[0], one / "only_person")
    assert main(["data", "check", str(one), "--no-progress"]) == 2
    assert "only 1 identities" in capsys.readouterr().err
    assert main(["data", "check", str(tmp_path / "missing"), "--no-progress"]) == 2
    assert main(["data", "check", str(one), "--min-images", "1"]) == 2


def test_unfinished_prepare_is_flagged(pins_small, tmp_path, capsys):
    data = tmp_path / "prepared"
    shutil.copytree(pins_small, data)
    write_marker(data, {"format": "siamface-prepare", "version": 1, "complete": False})
    assert read_marker(data)["complete"] is False
    assert main(["data", "check", str(data), "--json", "--no-progress"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert any("not finished by 'siamface prepare'" in w for w in rep["warnings"])
    assert not any("siamface_prepare.json" in u["path"] for u in rep["ignored_files"])
