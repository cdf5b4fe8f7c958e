"""Copy a gallery to another place or backend (``siamface gallery migrate SRC DST``).

Resumable: people are copied in batches, each person all-or-nothing on every backend, and
people already in the destination are skipped, so an interrupted migration is finished by
running it again. Verified at the end: the destination must hold the same number of people
and images, and a seeded sample of stored image embeddings must get identical answers from
both galleries (same best match, same score within ``SCORE_TOLERANCE``; agreement on the
whole top k is reported, as approximate indexes may order near-equal impostors differently).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from siamface.errors import SiamfaceError
from siamface.gallery.backends import backend_class, backend_name
from siamface.gallery.gallery import Gallery
from siamface.gallery.validation import ModelMismatchError

#: Scores may differ this much between backends (float16 re-scoring, server arithmetic).
SCORE_TOLERANCE = 2e-3


@dataclass
class MigrationReport:
    source: str
    destination: str
    created: bool
    copied_people: int = 0
    copied_images: int = 0
    skipped_existing: int = 0
    counts: dict = field(default_factory=dict)
    sample: int = 0
    top1_identical: int = 0
    topk_identical: int = 0
    max_score_diff: float = 0.0
    verified: bool = False
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _settings_for(dst_spec: object, src: Gallery) -> dict:
    s = src._settings(fresh=True)
    kind = s["index_kind"]
    same_kinds = kind in backend_class(backend_name(dst_spec)).index_kinds
    return {
        "fingerprint": s["fingerprint"],
        "embedding_size": s["embedding_size"],
        "threshold": s["threshold"],
        "model_source": s["model_source"],
        "aggregation": s["aggregation"],
        "index_kind": kind if same_kinds else "auto",
        "index_params": s["index_params"] if same_kinds else {},
    }


def migrate(
    src_spec: object,
    dst_spec: object,
    batch: int = 500,
    sample: int = 100,
    top_k: int = 5,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> MigrationReport:
    """Copy everyone from ``src_spec`` to ``dst_spec`` (created with the source's settings
    if missing), then verify. ``progress(done, total)`` is called after each batch."""
    if str(src_spec) == str(dst_spec):
        raise SiamfaceError("source and destination are the same gallery")
    if batch < 1 or sample < 0 or top_k < 1:
        raise SiamfaceError("batch and top_k must be positive, sample at least 0")
    with Gallery.open(src_spec) as src:
        created = not Gallery.exists(dst_spec)
        if created:
            dst = Gallery.create(dst_spec, **_settings_for(dst_spec, src))
        else:
            dst = Gallery.open(dst_spec)
        with dst:
            try:
                dst.check_model(src.fingerprint, src.embedding_size)
            except ModelMismatchError as err:
                raise SiamfaceError(f"cannot migrate into {dst_spec}: {err}") from None
            rep = MigrationReport(str(src_spec), str(dst_spec), created)
            names = [p.name for p in src.people()]
            for i in range(0, len(names), batch):
                chunk = names[i : i + batch]
                present = dst.existing(chunk)
                todo = [n for n in chunk if n not in present]
                rep.skipped_existing += len(present)
                if todo:
                    people = src.export(todo)
                    dst.enroll_many(people, fingerprint=src.fingerprint)
                    rep.copied_people += len(people)
                    rep.copied_images += sum(len(p.embeddings) for p in people)
                if progress:
                    progress(min(i + batch, len(names)), len(names))
            _verify(src, dst, rep, names, sample, top_k, seed)
    return rep


def _verify(
    src: Gallery, dst: Gallery, rep: MigrationReport, names: list[str], n: int, k: int, seed: int
) -> None:
    s_counts, d_counts = src.counts(), dst.counts()
    rep.counts = {"source": list(s_counts), "destination": list(d_counts)}
    if s_counts != d_counts:
        rep.problems.append(
            f"counts differ: source {s_counts[0]} people / {s_counts[1]} images, destination "
            f"{d_counts[0]} / {d_counts[1]} (the destination held other people before?)"
        )
    src_thr, dst_thr = src.threshold, dst.threshold  # each says its own gallery: compare values
    same_thr = (src_thr and src_thr.value) == (dst_thr and dst_thr.value)
    if not same_thr or src.aggregation != dst.aggregation:
        rep.problems.append("threshold or aggregation differ between source and destination")
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(names), size=min(n, len(names)), replace=False).tolist())
    if picked:
        people = src.export([names[i] for i in picked])
        q = np.stack([p.embeddings[0] for p in people])
        a = src.search(q, k, fingerprint=src.fingerprint, closed_set=True)
        b = dst.search(q, k, fingerprint=src.fingerprint, closed_set=True)
        for ra, rb in zip(a, b, strict=True):
            diff = abs((ra.score or 0.0) - (rb.score or 0.0))
            rep.max_score_diff = max(rep.max_score_diff, diff)
            if ra.identity == rb.identity and diff <= SCORE_TOLERANCE:
                rep.top1_identical += 1
            if [m.name for m in ra.matches] == [m.name for m in rb.matches]:
                rep.topk_identical += 1
        rep.sample = len(picked)
        if rep.top1_identical != rep.sample:
            rep.problems.append(
                f"{rep.sample - rep.top1_identical} of {rep.sample} sampled searches differ "
                "in their best match or its score"
            )
    rep.max_score_diff = round(rep.max_score_diff, 6)
    rep.verified = not rep.problems
