"""A track's identity: decided from all its faces so far, weighted by quality, revised as
evidence comes in, and never from one poor frame.

The track keeps the quality-weighted sum of its (unit) embeddings. Its template is that sum
normalised: one sharp frontal face outweighs several blurred profiles, and the template only
settles as faces accumulate. The template is searched in the gallery at the gallery's open-set
threshold; the track is named only when, in addition,

* it has at least ``min_faces`` faces and a total quality of ``min_weight`` (so a single face,
  however good, names nobody), and
* the decision held on ``confirm`` consecutive searches (a borderline template that flickers
  across the threshold stays unknown, and a named track changes name only after the new name
  has won that many searches in a row: at most one switch when evidence really changes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from siamface.gallery import UNKNOWN


@dataclass(frozen=True)
class IdentityRules:
    min_faces: int = 3
    min_weight: float = 0.25
    confirm: int = 2


@dataclass
class TrackIdentity:
    """Evidence and the current decision for one track."""

    rules: IdentityRules = field(default_factory=IdentityRules)
    weighted_sum: np.ndarray | None = None
    weight: float = 0.0
    faces: int = 0
    name: str = UNKNOWN
    score: float | None = None
    candidate: str = UNKNOWN
    streak: int = 0
    switches: int = 0
    history: list[str] = field(default_factory=list)

    def add(self, embedding: np.ndarray, quality: float) -> None:
        """Add one face's embedding with its quality as weight."""
        w = max(float(quality), 1e-3)  # a face still counts (a little) toward min_faces
        e = np.asarray(embedding, dtype=np.float64)
        self.weighted_sum = e * w if self.weighted_sum is None else self.weighted_sum + e * w
        self.weight += w
        self.faces += 1

    @property
    def ready(self) -> bool:
        """Enough evidence to name the track at all."""
        return self.faces >= self.rules.min_faces and self.weight >= self.rules.min_weight

    def template(self) -> np.ndarray | None:
        """The quality-weighted mean embedding, unit length (None before any face)."""
        if self.weighted_sum is None:
            return None
        v = self.weighted_sum / max(float(np.linalg.norm(self.weighted_sum)), 1e-12)
        return v.astype(np.float32)

    def decide(self, best: str, score: float | None) -> bool:
        """Apply one gallery answer (``best`` is a name or UNKNOWN) for the current template;
        True when the track's name changed."""
        proposal = best if self.ready else UNKNOWN
        if proposal == self.candidate:
            self.streak += 1
        else:
            self.candidate, self.streak = proposal, 1
        if proposal == self.name:
            self.score = score
            return False
        if self.streak < self.rules.confirm:
            return False
        if self.name != UNKNOWN and proposal != UNKNOWN:
            self.switches += 1
        self.name, self.score = proposal, score
        self.history.append(proposal)
        return True
