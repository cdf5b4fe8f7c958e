"""1:1 verification: two faces -> cosine similarity -> same person or not.

The article's inference script printed a similarity and left the decision to the reader. A
decision needs a threshold, and a threshold only means something together with the error
rate it was chosen for: checkpoints carry one calibrated on validation identities at a target
false-accept rate (``siamface train`` / ``siamface calibrate``), and every decision here says
which threshold it used and where it came from. The rule is ``similarity >= threshold``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from siamface.decide.threshold import Threshold
from siamface.errors import SiamfaceError
from siamface.folders.images import is_image_path

__all__ = [
    "ClaimVerification",
    "Verification",
    "claim_threshold",
    "decide_pair",
    "pair_threshold",
    "verify_claim",
]


@dataclass(frozen=True)
class Verification:
    """One decision and everything needed to interpret it.

    ``probability``: the same-person probability from the model's BCE pair head (models
    trained with ``loss=bce``), reported beside the cosine; None for other models. The
    decision is always ``similarity >= threshold``.
    """

    similarity: float
    same: bool
    threshold: float
    threshold_source: str
    probability: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ClaimVerification(Verification):
    """A 1:1 decision against a claimed identity enrolled in a gallery: is this ``person``?

    ``similarity`` is the probe's score against that person as the gallery scores people
    (their mean template, or their best image with ``aggregation=max``).
    """

    person: str = ""
    gallery: str = ""


def pair_threshold(given: Threshold | None, stored: Threshold | None, model: str) -> Threshold:
    """The threshold to decide a pair with: the given one, else the model's stored one; a
    model without one cannot decide (an error that says how to get one)."""
    if given is not None:
        return given
    if stored is not None:
        return stored
    raise SiamfaceError(
        f"{model} has no stored decision threshold; pass a threshold (--threshold T), or store "
        f"one with 'siamface calibrate --model {model} --data VALIDATION_DIR'"
    )


def decide_pair(
    similarity: float, threshold: Threshold, probability: float | None = None
) -> Verification:
    """One 1:1 decision at ``threshold``, reported with the threshold's provenance."""
    p = None if probability is None else float(probability)
    return Verification(
        float(similarity), threshold.accepts(similarity), threshold.value, threshold.describe(), p
    )


# ----------------------------------------------------------------------------- claimed identity
def claimed_score(gallery, embedding: np.ndarray, person: str, fingerprint: str) -> float:
    """The probe's score against ``person`` in ``gallery``, as the gallery's own search
    scores people (template or best image, any index kind), through its public API."""
    if gallery.person(person) is None:
        raise SiamfaceError(f"{person!r} is not enrolled in gallery {gallery.location}")
    n = len(gallery)
    k = min(n, 16)
    probe = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
    while True:
        result = gallery.search(probe, k, fingerprint=fingerprint, closed_set=True)[0]
        for m in result.matches:
            if m.name == person:
                return float(m.score)
        if k >= n:
            raise SiamfaceError(f"{person!r} was removed from gallery {gallery.location} meanwhile")
        k = min(n, k * 8)


def claim_threshold(gallery, given: Threshold | None, stored: Threshold | None) -> Threshold:
    """Threshold for a claimed identity: the given one, else the gallery's (its open-set
    threshold, normally the model's calibrated one), else the model's stored one."""
    if given is not None:
        return given
    own = gallery.threshold
    if own is not None:
        return own
    if stored is not None:
        return stored
    raise SiamfaceError(
        f"gallery {gallery.location} has no threshold (closed-set) and the model stores none; pass "
        f"--threshold T or set one with 'siamface gallery set {gallery.location} --threshold T'"
    )


def verify_claim(
    embedder, gallery, embedding: np.ndarray, person: str, threshold: Threshold | None = None
) -> ClaimVerification:
    """Is the face with ``embedding`` the enrolled ``person``? Decided at the gallery's
    threshold (or ``threshold``); the gallery refuses embeddings of another model."""
    thr = claim_threshold(gallery, threshold, Threshold.parse(embedder.threshold))
    score = claimed_score(gallery, embedding, person, embedder.fingerprint)
    v = decide_pair(score, thr, embedder.probability(score))
    return ClaimVerification(**v.to_dict(), person=person, gallery=str(gallery.location))


# ----------------------------------------------------------------------------- many pairs
@dataclass(frozen=True)
class PairRow:
    a: Path
    b: Path
    line: int


def read_pairs_csv(path: str | Path, root: str | Path | None = None) -> list[PairRow]:
    """Rows ``image1,image2`` (an optional header row is skipped; ``#`` lines are comments).

    Relative paths are resolved against ``root`` (default: the CSV file's folder, so a CSV
    and its images can move together). Missing images and malformed rows raise
    :class:`SiamfaceError` naming the file and line, before any model work.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise SiamfaceError(f"pairs CSV not found: {path}")
    base = Path(root).expanduser() if root is not None else path.parent
    rows: list[PairRow] = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as err:
        raise SiamfaceError(f"{path} is not a readable CSV file: {err}") from err
    for n, cells in enumerate(lines, start=1):
        cells = [c.strip() for c in cells]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) != 2:
            raise SiamfaceError(
                f"{path}, line {n}: expected 2 columns (image1,image2), got {len(cells)}"
            )
        a, b = (base / c if not Path(c).is_absolute() else Path(c) for c in cells)
        if not rows and not any(is_image_path(Path(c)) or (base / c).exists() for c in cells):
            continue  # a header row such as "image1,image2"
        for cell, p in zip(cells, (a, b), strict=True):
            if not p.is_file():
                hint = ""
                if root is None and not Path(cell).is_absolute():
                    hint = " (relative paths are read from the CSV's folder; see --root)"
                raise SiamfaceError(f"{path}, line {n}: image not found: {p}{hint}")
        rows.append(PairRow(a, b, n))
    if not rows:
        raise SiamfaceError(f"{path} lists no image pairs")
    return rows


def verify_pairs(
    embedder,
    pairs: Sequence[tuple[Path, Path]],
    threshold: Threshold,
    batch_size: int = 64,
    workers: int | None = None,
    progress: bool = False,
    where: Callable[[int], str] | None = None,
) -> list[Verification]:
    """Decide every pair, embedding each distinct image once (batched, parallel decoding).

    ``where(k)`` names pair ``k`` in error messages (e.g. 'pairs.csv, line 7').
    """
    unique = list(dict.fromkeys(p for ab in pairs for p in ab))
    pos = {p: i for i, p in enumerate(unique)}
    emb, errors = embedder.embed_paths(
        unique, batch_size=batch_size, workers=workers, progress=progress
    )
    if errors:
        i, reason = next(iter(errors.items()))
        bad = unique[i]
        k = next(k for k, ab in enumerate(pairs) if bad in ab)
        at = f"{where(k)}: " if where else ""
        more = f" ({len(errors)} unreadable images in all)" if len(errors) > 1 else ""
        raise SiamfaceError(f"{at}cannot read {bad}: {reason}{more}")
    sims = embedder.similarity(emb[[pos[a] for a, _ in pairs]], emb[[pos[b] for _, b in pairs]])
    probs = embedder.pair_probability(sims)
    return [
        decide_pair(float(s), threshold, None if probs is None else probs[k])
        for k, s in enumerate(sims)
    ]
