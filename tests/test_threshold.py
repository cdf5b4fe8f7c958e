"""The decision threshold as one value (siamface.decide.threshold) and the two decisions built
on it: stored records load and write back unchanged, one range rule, one description."""

from __future__ import annotations

import json

import numpy as np
import pytest

from siamface.decide.open_set import UNKNOWN, Candidate, decide_open_set
from siamface.decide.threshold import Threshold
from siamface.decide.verify import decide_pair
from siamface.errors import SiamfaceError
from siamface.scores.metrics import verification_metrics

#: A record as `siamface calibrate` writes it into a checkpoint header (key order matters).
CALIBRATED = {
    "value": 0.3125,
    "target_far": 0.001,
    "tar": 0.91,
    "method": "far",
    "source": "validation identities",
    "n_impostor": 4950,
    "far": 0.0008,
    "calibrated": "2026-01-02",
}


def test_stored_records_round_trip_byte_for_byte():
    for rec in (
        CALIBRATED,
        {"value": 0.363, "target_far": None, "far": None, "tar": None, "source": "card"},
        {"value": -0.25, "method": "best_accuracy", "source": "x", "note": "extra key kept"},
    ):
        t = Threshold.parse(rec)
        assert t is not None and t.value == rec["value"]
        assert json.dumps(t.to_record()) == json.dumps(rec)
    # records without a value (written by old files) and absent ones mean "no threshold"
    assert Threshold.parse({"value": None, "source": "old"}) is None
    assert Threshold.parse(None) is None


@pytest.mark.parametrize("bad", [1.5, -1.01, float("nan"), float("inf"), "high", True, [0.3]])
def test_one_range_rule_everywhere(bad, tmp_path):
    """Whatever the way in (given, stored record, gallery setting), the same values are
    refused with a one-line error that names the threshold."""
    for make in (
        Threshold.given,
        lambda v: Threshold.parse({"value": v}),
        lambda v: Threshold.of_gallery(v, tmp_path),
    ):
        with pytest.raises(SiamfaceError, match="threshold") as err:
            make(bad)
        assert "\n" not in str(err.value)
    from siamface.gallery import Gallery

    with pytest.raises(SiamfaceError, match="threshold"):
        Gallery.create(tmp_path / "g", fingerprint="f" * 16, embedding_size=4, threshold=bad)


def test_edges_and_text_are_accepted():
    assert Threshold.given("0.25").value == 0.25  # command lines and query strings
    assert Threshold.given(np.float32(1.0)).value == 1.0  # a score computed with numpy
    assert Threshold.given(-1).value == -1.0


def test_describe_says_where_it_came_from(tmp_path):
    assert Threshold.parse(CALIBRATED).describe() == (
        "checkpoint: FAR 0.001 on validation identities"
    )
    best = Threshold.parse({"value": 0.1, "method": "best_accuracy", "source": "lfw"})
    assert best.describe() == "checkpoint: best_accuracy on lfw"
    assert Threshold.parse({"value": 0.1}).describe() == "checkpoint"
    assert Threshold.given(0.4).describe() == "given"
    assert Threshold.given(0.4, source="given to load()").describe() == "given to load()"
    assert Threshold.of_gallery(0.4, tmp_path / "staff").describe() == (
        f"gallery {tmp_path / 'staff'}"
    )
    assert Threshold.given(0.4).to_record() == {"value": 0.4, "source": "given", "method": "given"}


def test_at_far_is_measured_or_falls_back_to_the_eer():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(200, bool), np.zeros(2000, bool)]
    scores = np.r_[rng.normal(0.6, 0.1, 200), rng.normal(0.1, 0.1, 2000)]
    m = verification_metrics(scores, labels, (1e-2, 1e-4))
    t = Threshold.at_far(m, 1e-2, "toy")
    # at the threshold at most 1% of the 2000 impostors are accepted, as asked, and the
    # stored TAR is the genuine pairs' acceptance there
    assert t.method == "far" and 0 < np.mean(scores[~labels] >= t.value) <= 1e-2
    rec = t.to_record()
    assert rec["tar"] == pytest.approx(np.mean(scores[labels] >= t.value), abs=1e-9)
    assert list(rec) == ["value", "target_far", "tar", "method", "source", "n_impostor"]
    # 1e-4 of 2000 impostors cannot be measured: the EER threshold, and it says so
    low = Threshold.at_far(m, 1e-4, "toy")
    assert low.value == pytest.approx(m.eer_threshold) and low.method.startswith("eer")
    more = t.with_fields(far=0.01, calibrated="today")
    assert list(more.to_record())[-2:] == ["far", "calibrated"] and more.value == t.value


def test_decide_pair_accepts_at_the_threshold():
    t = Threshold.parse(CALIBRATED)
    at = decide_pair(t.value, t, probability=np.float32(0.7))
    below = decide_pair(np.nextafter(t.value, -1), t)
    assert at.same and not below.same
    assert at.threshold == t.value and at.threshold_source == t.describe()
    assert type(at.probability) is float and below.probability is None


def test_decide_open_set_names_unknown_below_the_threshold():
    ranked = [Candidate(1, "ada", 0.5), Candidate(2, "bob", 0.2)]
    open_set = decide_open_set(ranked, Threshold.given(0.6))
    assert open_set.identity == UNKNOWN and open_set.score == 0.5 and open_set.threshold == 0.6
    assert [m.accepted for m in open_set.matches] == [False, False]
    at = decide_open_set(ranked, Threshold.given(0.5))
    assert at.identity == "ada" and [m.accepted for m in at.matches] == [True, False]
    closed = decide_open_set(ranked, None)
    assert closed.identity == "ada" and closed.threshold is None
    assert decide_open_set([], Threshold.given(0.1)).identity == UNKNOWN


def test_gallery_search_takes_a_threshold_not_a_sentinel(tmp_path):
    from siamface.gallery import Gallery

    v = np.eye(4, dtype=np.float32)
    with Gallery.create(tmp_path / "g", fingerprint="f" * 16, embedding_size=4) as g:
        g.enroll("ada", v[:1], fingerprint="f" * 16)
        probe = (v[0] + v[1]) / np.sqrt(2)  # cosine 0.707 with ada
        assert g.threshold is None
        assert g.search(probe, fingerprint="f" * 16)[0].identity == "ada"  # none: closed-set
        g.set_threshold(0.8)
        assert g.threshold.value == 0.8 and g.threshold.describe() == f"gallery {g.location}"
        assert g.search(probe, fingerprint="f" * 16)[0].identity == UNKNOWN  # its own
        given = Threshold.given(0.7)
        assert g.search(probe, fingerprint="f" * 16, threshold=given)[0].identity == "ada"
        assert g.search(probe, fingerprint="f" * 16, closed_set=True)[0].identity == "ada"
        for bad in ("gallery", 0.7):
            with pytest.raises(SiamfaceError, match="Threshold"):
                g.search(probe, fingerprint="f" * 16, threshold=bad)
        with pytest.raises(SiamfaceError, match="closed-set"):
            g.search(probe, fingerprint="f" * 16, threshold=given, closed_set=True)
