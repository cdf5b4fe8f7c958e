"""1:N identification metrics: closed-set rank-k and open-set DIR at a false-alarm rate.

Protocol (the usual open-set identification one): the identities are split into *enrolled*
people and *strangers*. Each enrolled person contributes a few images to a gallery; their
other images are *genuine* probes. Every image of a stranger is a *non-enrolled* probe.

* Closed-set rank-k (CMC): how often a genuine probe's own identity is among the k best
  gallery matches.
* Open-set DIR@FAR (detection-and-identification rate at a false-alarm rate): pick the
  threshold at which a fraction FAR of the strangers' probes would be accepted as *someone*
  (their best score reaches the threshold; also called FPIR); DIR is the fraction of genuine
  probes whose best match is their own identity *and* reaches that threshold. A FAR below
  1 / (number of stranger probes) cannot be measured and is reported as None.

The probes are searched through a real :class:`~siamface.gallery.Gallery` (temporary folder),
so the numbers measure the code users run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from siamface.decide.open_set import SearchResult
from siamface.errors import SiamfaceError
from siamface.gallery.gallery import Gallery
from siamface.gallery.records import NewPerson
from siamface.scores.metrics import far_key

DEFAULT_FARS = (0.01, 0.05, 0.1)
RANKS = (1, 5, 10)


@dataclass
class OpenSetSplit:
    """Which rows (of an embedding matrix) enroll whom, and which are probes."""

    enrolled: dict[str, list[int]]
    genuine: list[tuple[int, str]]  # (row, true identity)
    strangers: list[str]
    stranger_rows: list[int]

    def summary(self) -> dict:
        return {
            "enrolled_identities": len(self.enrolled),
            "enrolled_images": sum(len(v) for v in self.enrolled.values()),
            "genuine_probes": len(self.genuine),
            "stranger_identities": len(self.strangers),
            "stranger_probes": len(self.stranger_rows),
            "strangers": self.strangers,
        }


def split_open_set(
    labels: Sequence[str],
    strangers: float = 1 / 3,
    enroll_images: int = 5,
    max_probes_per_id: int | None = None,
    seed: int = 0,
) -> OpenSetSplit:
    """Split labelled rows into gallery, genuine probes and stranger probes (seeded).

    ``strangers`` is a fraction of identities (< 1) or a count (>= 1). Identities with no
    image left after enrollment cannot give a genuine probe and are enrolled anyway (they
    still act as distractors)."""
    rng = np.random.default_rng(seed)
    by_id: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_id.setdefault(lab, []).append(i)
    ids = sorted(by_id)
    if len(ids) < 3:
        raise SiamfaceError(f"need at least 3 identities for open-set evaluation, got {len(ids)}")
    if enroll_images < 1:
        raise SiamfaceError(f"--enroll-images must be at least 1, got {enroll_images}")
    n_str = int(round(strangers * len(ids))) if strangers < 1 else int(strangers)
    if not 1 <= n_str <= len(ids) - 2:
        raise SiamfaceError(
            f"strangers={strangers} gives {n_str} of {len(ids)} identities; need at least 1 "
            "stranger and 2 enrolled people"
        )
    order = [ids[i] for i in rng.permutation(len(ids))]
    stranger_ids, enrolled_ids = sorted(order[:n_str]), sorted(order[n_str:])
    enrolled: dict[str, list[int]] = {}
    genuine: list[tuple[int, str]] = []
    for name in enrolled_ids:
        rows = [by_id[name][j] for j in rng.permutation(len(by_id[name]))]
        enrolled[name] = sorted(rows[:enroll_images])
        probes = sorted(rows[enroll_images:])[:max_probes_per_id]
        genuine += [(r, name) for r in probes]
    stranger_rows: list[int] = []
    for name in stranger_ids:
        stranger_rows += sorted(by_id[name])[:max_probes_per_id]
    if not genuine:
        raise SiamfaceError(
            f"no genuine probes: every enrolled person has at most {enroll_images} images; "
            "lower --enroll-images"
        )
    return OpenSetSplit(enrolled, genuine, stranger_ids, stranger_rows)


@dataclass
class IdentificationMetrics:
    """Closed- and open-set results of one gallery configuration."""

    aggregation: str
    rank: dict[str, float]  # {"1": rate, "5": rate, ...}
    dir_at_far: dict[str, float | None]
    threshold_at_far: dict[str, float | None]
    at_threshold: dict | None  # DIR and FAR at the gallery's own threshold
    n_genuine: int
    n_stranger: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def headline(self) -> str:
        d = ", ".join(
            f"DIR@FAR={k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in self.dir_at_far.items()
        )
        r = ", ".join(f"rank-{k} {v:.3f}" for k, v in self.rank.items())
        return f"[{self.aggregation}] {r}; {d}"


def identification_metrics(
    genuine: Sequence[SearchResult],
    genuine_labels: Sequence[str],
    strangers: Sequence[SearchResult],
    aggregation: str,
    fars: Sequence[float] = DEFAULT_FARS,
    ranks: Sequence[int] = RANKS,
    threshold: float | None = None,
) -> IdentificationMetrics:
    """Rank-k rates and DIR@FAR from search results (searched closed-set, with enough
    candidates for the largest rank)."""
    if not genuine or not strangers:
        raise SiamfaceError("need genuine probes and stranger probes")
    pos = np.array(
        [
            next((i for i, m in enumerate(r.matches) if m.name == lab), 10**9)
            for r, lab in zip(genuine, genuine_labels, strict=True)
        ]
    )
    g_top = np.array([r.matches[0].score if r.matches else -np.inf for r in genuine])
    g_hit = pos == 0
    s_top = np.sort([r.matches[0].score if r.matches else -np.inf for r in strangers])[::-1]
    n_s = len(s_top)
    rank = {str(k): float(np.mean(pos < k)) for k in ranks}
    dirs: dict[str, float | None] = {}
    thrs: dict[str, float | None] = {}
    notes: list[str] = []
    for far in fars:
        key = far_key(far)
        allowed = int(np.floor(far * n_s + 1e-9))  # strangers that may be accepted
        if allowed < 1:
            dirs[key] = thrs[key] = None
            notes.append(f"FAR {key} is below 1/{n_s} stranger probes and cannot be measured")
            continue
        # accept score >= t; t just above the (allowed+1)-th best stranger score
        t = float(np.nextafter(s_top[allowed], np.inf)) if allowed < n_s else float(s_top[-1])
        thrs[key] = t
        dirs[key] = float(np.mean(g_hit & (g_top >= t)))
    at_thr = None
    if threshold is not None:
        at_thr = {
            "threshold": threshold,
            "dir": float(np.mean(g_hit & (g_top >= threshold))),
            "far": float(np.mean(s_top >= threshold)),
        }
    return IdentificationMetrics(
        aggregation=aggregation,
        rank=rank,
        dir_at_far=dirs,
        threshold_at_far=thrs,
        at_threshold=at_thr,
        n_genuine=len(genuine),
        n_stranger=n_s,
        notes=notes,
    )


def evaluate_open_set(
    embeddings: np.ndarray,
    split: OpenSetSplit,
    fingerprint: str,
    aggregation: str = "mean",
    threshold: float | None = None,
    fars: Sequence[float] = DEFAULT_FARS,
    ranks: Sequence[int] = RANKS,
    workdir: str | Path | None = None,
    refs: Sequence[str] | None = None,
) -> IdentificationMetrics:
    """Enroll ``split`` into a fresh gallery with ``aggregation`` and score all probes."""
    emb = np.asarray(embeddings, dtype=np.float32)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="siamface-1n-") as d:
        g = Gallery.create(
            Path(d) / "gallery",
            fingerprint=fingerprint,
            embedding_size=emb.shape[1],
            threshold=threshold,
            aggregation=aggregation,
        )
        with g:
            people = [
                NewPerson(name, emb[rows], [refs[r] for r in rows] if refs else ())
                for name, rows in split.enrolled.items()
            ]
            g.enroll_many(people, fingerprint=fingerprint)
            k = min(max(ranks), len(split.enrolled))
            g_rows = [r for r, _ in split.genuine]
            gen = g.search(emb[g_rows], k, fingerprint=fingerprint, closed_set=True)
            strg = g.search(emb[split.stranger_rows], k, fingerprint=fingerprint, closed_set=True)
    return identification_metrics(
        gen, [lab for _, lab in split.genuine], strg, aggregation, fars, ranks, threshold
    )
