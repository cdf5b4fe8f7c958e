"""Person names people can read: one rule (siamface.names) for the API, the CLI and REST.
Look-alike names (NFC/NFD, other scripts, fullwidth, invisible characters) and path-like
names are refused with the reason, or found as the same person."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from test_serve_api import KEY, jpeg, running

from siamface.cli.main import main
from siamface.errors import SiamfaceError
from siamface.gallery import Gallery, NewPerson
from siamface.names import check_person_name, skeleton

FP = "f" * 16


def _vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((1, 8)).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def gallery(tmp_path):
    with Gallery.create(tmp_path / "g", fingerprint=FP, embedding_size=8, threshold=0.5) as g:
        yield g


def _enroll(g, name: str, seed: int = 0):
    return g.enroll_many([NewPerson(name, _vec(seed))], fingerprint=FP)[0]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        (".", "folders"),
        ("..", "folders"),
        ("a/b", "'/'"),
        ("a\\b", "'/'"),
        ("Ada\u200b", "ZERO WIDTH SPACE"),
        ("\u202eAda", "RIGHT-TO-LEFT OVERRIDE"),
        ("Ada\u00a0Byron", "NO-BREAK SPACE"),
        ("Ada\ufeff", "ZERO WIDTH NO-BREAK SPACE"),
        ("Ada\u2028", "LINE SEPARATOR"),
        ("Ada\x07", "invisible"),
        (" Ada", "space"),
        ("", "non-empty"),
    ],
)
def test_unusable_names_are_refused_with_the_reason(gallery, name, why):
    with pytest.raises(SiamfaceError) as info:
        _enroll(gallery, name)
    assert why in str(info.value)
    assert len(gallery) == 0


def test_nfc_and_nfd_are_one_person(gallery):
    nfc, nfd = unicodedata.normalize("NFC", "Zoë"), unicodedata.normalize("NFD", "Zoë")
    assert nfc != nfd
    rec = _enroll(gallery, nfd)
    assert rec.name == nfc  # stored in NFC
    assert nfc in gallery and nfd in gallery and gallery.person(nfd).name == nfc
    with pytest.raises(SiamfaceError, match="already enrolled"):
        _enroll(gallery, nfc, 1)
    assert gallery.remove(nfd) == [nfc] and len(gallery) == 0


@pytest.mark.parametrize(
    ("first", "second", "why"),
    [
        ("Ada", "\u0410da", "Cyrillic and Latin"),  # Cyrillic capital A
        ("\u0410da", "Ada", "Cyrillic and Latin"),  # the other order
        ("Ada", "\uff21da", "fullwidth"),
        ("Ivan", "\u0406van", "Cyrillic"),  # Ukrainian I
        ("Poppy", "\u0420\u043e\u0440\u0440\u0443", "Cyrillic"),  # a whole-script look-alike
        ("Olga", "\u039flga", "Greek"),  # Greek capital omicron
    ],
)
def test_lookalike_of_an_enrolled_name_is_refused(gallery, first, second, why):
    _enroll(gallery, first)
    with pytest.raises(SiamfaceError) as info:
        _enroll(gallery, second, 1)
    msg = str(info.value)
    assert "looks like" in msg and repr(first) in msg and why.lower() in msg.lower()
    assert [p.name for p in gallery.people()] == [first]


def test_lookalikes_in_one_batch_and_distinct_names_that_stay_distinct(gallery):
    with pytest.raises(SiamfaceError, match="looks like"):
        gallery.enroll_many(
            [NewPerson("Ada", _vec(0)), NewPerson("\u0410da", _vec(1))], fingerprint=FP
        )
    for i, n in enumerate(["José", "Jose", "ada", "Ada", "Олег", "王芳", "Zoë", "Zoe"]):
        _enroll(gallery, n, i)  # told apart on a page: all accepted
    assert len(gallery) == 8
    assert skeleton("\uff21da") == skeleton("\u0410da") == "Ada"
    assert check_person_name("Ada Lovelace") == "Ada Lovelace"


def test_cli_refuses_bad_names_before_embedding(capsys, tiny_checkpoint, pins_small, tmp_path):
    img = str(sorted(sorted(pins_small.iterdir())[0].iterdir())[0])
    g = str(tmp_path / "g")
    assert main(["gallery", "enroll", g, "--model", str(tiny_checkpoint), "--name", "..", img]) == 2
    err = capsys.readouterr().err
    assert "'..'" in err and "folders" in err and len(err.strip().splitlines()) == 1
    people = tmp_path / "people"
    (people / "Ada\u200b").mkdir(parents=True)
    (people / "Ada\u200b" / "a.jpg").write_bytes(Path(img).read_bytes())
    assert main(["gallery", "enroll", g, "--model", str(tiny_checkpoint), str(people)]) == 2
    assert "ZERO WIDTH SPACE" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()  # refused before the gallery was created


def test_rest_enroll_names_and_metadata_bounds(tiny_checkpoint, tmp_path):
    from siamface.serve import create_app

    app = create_app(tiny_checkpoint, tmp_path / "g", api_key=KEY)
    with running(app) as c:
        h = {"X-API-Key": KEY}

        def enroll(name: str, metadata: str | None = None):
            data = {"name": name} | ({"metadata": metadata} if metadata is not None else {})
            return c.post(
                "/gallery/people", data=data, files={"images": ("a.jpg", jpeg(1))}, headers=h
            )

        assert enroll("Ada").status_code == 201
        for bad in ("..", "a/b", "\u0410da", "Ada\u200b"):
            r = enroll(bad)
            assert r.status_code == 422 and r.json()["code"] == "invalid_name", r.text
        r = enroll("Bob", "[" * 100_000 + "]" * 100_000)  # was: 500 RecursionError
        assert r.status_code == 422 and r.json()["code"] == "invalid_metadata"
        r = enroll("Bob", '{"a":' * 5_000 + "1" + "}" * 5_000)
        assert r.status_code == 422 and "deeper than 16" in r.json()["detail"]
        r = enroll("Bob", '{"a": "' + "x" * 200_000 + '"}')
        assert r.status_code == 422 and "bytes" in r.json()["detail"]
        nested = json.dumps({"a": {"b": {"c": [1, 2, {"d": "}}}}]]"}]}}})
        assert enroll("Bob", nested).status_code == 201  # brackets inside strings: not depth
        names = [p["name"] for p in c.get("/gallery/people").json()["people"]]
        assert names == ["Ada", "Bob"]


def test_api_metadata_depth_is_bounded(gallery):
    deep: dict = {}
    cur = deep
    for _ in range(10_000):
        cur["x"] = {}
        cur = cur["x"]
    with pytest.raises(SiamfaceError, match="deeper"):
        gallery.enroll_many([NewPerson("Ada", _vec(0), metadata=deep)], fingerprint=FP)
