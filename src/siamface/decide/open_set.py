"""1:N decisions: ranked :class:`Match` candidates and the open-set :class:`SearchResult`.

Gallery backends only rank (person, score) pairs; turning them into a decision at the
threshold is done here, once (:func:`decide_open_set`), beside the 1:1 one
(:func:`~siamface.decide.verify.decide_pair`), so every backend decides "unknown" the same
way and by the same rule (:meth:`Threshold.accepts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from siamface.decide.threshold import Threshold

#: The name reported for a probe whose best score is below the threshold.
UNKNOWN = "unknown"


@dataclass
class Match:
    """One enrolled person as a candidate for a probe."""

    name: str
    score: float  # cosine similarity (best image for "max", template for "mean"); exact for
    # exact indexes, within ~1e-4 for compressed ones (re-scored from float16 vectors)
    person_id: int
    accepted: bool  # score >= threshold (always True without a threshold)
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "score": round(self.score, 6),
            "accepted": self.accepted,
            "metadata": self.metadata,
        }


@dataclass
class SearchResult:
    """The answer for one probe: ranked candidates and the open-set decision."""

    identity: str  # best match's name, or UNKNOWN when below the threshold / empty gallery
    score: float | None  # best match's score
    matches: list[Match]
    threshold: float | None

    @property
    def known(self) -> bool:
        return self.identity != UNKNOWN

    def to_dict(self) -> dict:
        return {
            "identity": self.identity,
            "known": self.known,
            "score": None if self.score is None else round(self.score, 6),
            "threshold": self.threshold,
            "matches": [m.to_dict() for m in self.matches],
        }


@dataclass
class Candidate:
    """What a backend's search returns for one person: id, name, score, metadata."""

    person_id: int
    name: str
    score: float
    metadata: dict = field(default_factory=dict)


def decide_open_set(ranked: Sequence[Candidate], threshold: Threshold | None) -> SearchResult:
    """Candidates (best first) -> the open-set answer at ``threshold``; None decides
    closed-set (the best candidate is always named)."""
    matches = [
        Match(
            c.name,
            float(c.score),
            c.person_id,
            threshold is None or threshold.accepts(c.score),
            c.metadata,
        )
        for c in ranked
    ]
    value = None if threshold is None else threshold.value
    if matches and matches[0].accepted:
        return SearchResult(matches[0].name, matches[0].score, matches, value)
    return SearchResult(UNKNOWN, matches[0].score if matches else None, matches, value)
