"""The watch's decision rules on their own: quality factors and a track's naming."""

from __future__ import annotations

import numpy as np
import pytest

from siamface.video.identity import IdentityRules, TrackIdentity
from siamface.video.quality import face_quality, yaw_of
from siamface.video.tracking import center_distance

FRONTAL = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]])


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_yaw_is_zero_frontal_and_grows_with_turn_not_roll():
    assert abs(yaw_of(FRONTAL)) < 0.02
    turned = FRONTAL.copy()
    turned[2, 0] += 14  # nose 14 px to the side, eyes 35 px apart
    assert yaw_of(turned) == pytest.approx(14 / 35.2, abs=0.02)
    angle = np.radians(30)  # the same frontal face rolled by 30 degrees: still frontal
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    assert abs(yaw_of(FRONTAL @ rot.T)) < 0.02


def test_quality_drops_with_each_defect():
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
    blurred = np.full((112, 112, 3), 128, dtype=np.uint8)
    good = face_quality(90, 0.95, FRONTAL, sharp)["quality"]
    assert good > 0.8
    assert face_quality(30, 0.95, FRONTAL, sharp)["quality"] < 0.2 * good  # tiny
    assert face_quality(90, 0.55, FRONTAL, sharp)["quality"] < 0.2 * good  # unsure detection
    assert face_quality(90, 0.95, FRONTAL, blurred)["quality"] < 0.05  # no detail at all
    profile = FRONTAL.copy()
    profile[2, 0] += 17
    assert face_quality(90, 0.95, profile, sharp)["quality"] < 0.05


def test_a_track_is_never_named_from_one_face_and_switches_need_confirmation():
    rules = IdentityRules(min_faces=3, min_weight=0.25, confirm=2)
    ident = TrackIdentity(rules)
    e = unit([1, 0, 0])
    ident.add(e, 1.0)  # one perfect face
    assert not ident.decide("ada", 0.9)
    assert ident.name == "unknown"
    ident.add(e, 1.0)
    assert not ident.decide("ada", 0.9)
    ident.add(e, 1.0)  # third face: ready, first agreeing search
    assert not ident.decide("ada", 0.9)
    ident.add(e, 1.0)
    assert ident.decide("ada", 0.9) and ident.name == "ada"  # second agreeing search
    # one search saying someone else changes nothing; two in a row do (one switch)
    assert not ident.decide("bob", 0.5)
    assert not ident.decide("ada", 0.9)
    assert not ident.decide("bob", 0.5)
    assert ident.decide("bob", 0.5) and ident.name == "bob" and ident.switches == 1


def test_poor_faces_alone_do_not_name_a_track():
    ident = TrackIdentity(IdentityRules(min_faces=3, min_weight=0.25, confirm=1))
    for _ in range(10):
        ident.add(unit([0, 1, 0]), 0.01)  # ten poor faces: total quality 0.1
        assert not ident.decide("ada", 0.8)
    ident.add(unit([0, 1, 0]), 0.3)
    assert ident.decide("ada", 0.8)


def test_template_is_quality_weighted():
    ident = TrackIdentity()
    ident.add(unit([1, 0]), 0.9)
    ident.add(unit([0, 1]), 0.1)
    t = ident.template()
    assert t[0] > 0.99 * np.cos(np.arctan(0.1 / 0.9)) and t[0] > t[1] * 8


def test_center_distance_in_face_sizes():
    tracks = np.array([[0, 0, 100, 100], [500, 500, 520, 520]], dtype=np.float64)
    dets = np.array([[50, 0, 150, 100]], dtype=np.float64)
    d = center_distance(dets, tracks)
    assert d.shape == (1, 2)
    assert d[0, 0] == pytest.approx(0.5)  # moved half its size
    assert d[0, 1] > 10
