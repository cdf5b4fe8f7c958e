"""Identity-disjoint train/validation split.

The article split images at random, so the same people appeared in training and validation
and the numbers said nothing about strangers. Verification is about people the model never
saw, so we split by identity, seeded, and the split is recorded in the run directory.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from siamface.errors import SiamfaceError


def split_identities(
    identities: Sequence[str], val: float | int, seed: int
) -> tuple[list[str], list[str]]:
    """Return ``(train_ids, val_ids)``, disjoint, chosen reproducibly from ``seed``.

    ``val`` is a fraction in (0, 1) or a count >= 1 of identities to hold out; 0 disables
    validation. At least two identities must remain on each non-empty side, because
    verification needs impostor pairs.
    """
    ids = sorted(set(identities))
    if isinstance(val, bool) or val < 0:
        raise SiamfaceError(f"val_identities must be >= 0, got {val!r}")
    if val == 0:
        return ids, []
    n_val = round(len(ids) * val) if val < 1 else int(val)
    n_val = max(n_val, 2)
    if len(ids) - n_val < 2:
        raise SiamfaceError(
            f"cannot hold out {n_val} validation identities from {len(ids)}: "
            "at least 2 must remain for training"
        )
    rng = random.Random(seed)
    shuffled = ids[:]
    rng.shuffle(shuffled)
    val_ids = sorted(shuffled[:n_val])
    train_ids = sorted(shuffled[n_val:])
    return train_ids, val_ids


def keep_share(identities: Sequence[str], share: float | int, seed: int) -> list[str]:
    """A seeded subset of ``identities``: a fraction (``share`` <= 1; 1 keeps all) or a count.

    For a learning curve: train on fewer people while the validation and test people stay the
    ones the full run has, so the curve's points differ only in how many people trained. The
    subset is drawn with its own seed from the sorted list, so a smaller count's people are not
    a prefix of a larger one's, but the same arguments always give the same people.
    """
    ids = sorted(set(identities))
    if isinstance(share, bool) or share <= 0:
        raise SiamfaceError(f"train_identities must be > 0, got {share!r}")
    if share == 1:
        return ids
    n = round(len(ids) * share) if share < 1 else int(share)
    if n > len(ids):
        raise SiamfaceError(
            f"train_identities={share:g} asks for {n} training identities, but only {len(ids)} "
            "remain after the validation and test people; lower it or add identities"
        )
    if n < 2:
        raise SiamfaceError(
            f"train_identities={share:g} leaves {n} of {len(ids)} training identities; at "
            "least 2 must train"
        )
    return sorted(random.Random(seed).sample(ids, n))
