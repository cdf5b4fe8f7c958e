"""data.train_identities: fewer training people, the same validation and test people."""

from __future__ import annotations

import pytest

from siamface.errors import ConfigError, SiamfaceError
from siamface.folders.split import keep_share
from siamface.train.config import make_config

FAST = ["batch_size=16", "num_workers=0", "precision=fp32", "val_identities=3"]


def test_keep_share_is_seeded_sized_and_checked():
    ids = [f"p{i:02d}" for i in range(20)]
    assert keep_share(ids, 1, seed=0) == ids
    half = keep_share(ids, 0.5, seed=3)
    assert len(half) == 10 and set(half) < set(ids) and half == sorted(half)
    assert keep_share(list(reversed(ids)), 0.5, seed=3) == half  # order of input is irrelevant
    assert keep_share(ids, 0.5, seed=4) != half
    assert len(keep_share(ids, 7, seed=0)) == 7
    with pytest.raises(SiamfaceError, match="only 20 remain"):
        keep_share(ids, 21, seed=0)
    with pytest.raises(SiamfaceError, match="at least 2"):
        keep_share(ids, 0.05, seed=0)


def test_train_identities_keeps_validation_and_test_people(pins_small):
    from siamface.train.data import prepare_run_data

    full = prepare_run_data(
        make_config(overrides=[*FAST, "test_identities=3"]), [str(pins_small)], progress=False
    )
    part = prepare_run_data(
        make_config(overrides=[*FAST, "test_identities=3", "data.train_identities=4"]),
        [str(pins_small)],
        progress=False,
    )
    assert len(full.train_identities) == 6 and full.unused_train_identities == 0
    assert len(part.train_identities) == 4 and part.unused_train_identities == 2
    assert set(part.train_identities) < set(full.train_identities)
    assert part.val_identities == full.val_identities
    assert part.test_identities == full.test_identities
    assert sorted(set(part.train.labels.tolist())) == [0, 1, 2, 3]
    assert len(part.train) < len(full.train)
    with pytest.raises(SiamfaceError, match="only 6 remain"):
        prepare_run_data(
            make_config(overrides=[*FAST, "test_identities=3", "data.train_identities=7"]),
            [str(pins_small)],
            progress=False,
        )


def test_train_identities_count_must_be_whole():
    with pytest.raises(ConfigError, match="whole number"):
        make_config(overrides=["data.train_identities=2.5"])
    assert make_config(overrides=["data.train_identities=1"]).data.train_identities == 1
