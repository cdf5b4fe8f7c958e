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
