"""Centring embeddings on a population's mean face, decided on people the mean never saw.

Every face a model embeds shares a component along the mean embedding of the population it
sees, and poor faces lean towards it most, so impostor pairs of poor faces score high, and
those set the threshold at a low false-accept rate. Subtracting the mean and normalising again
removes that shared part for some models (SFace: mean norm ~0.29 on the sample data) and
destroys information for others (dlib's embeddings crowd into a narrow cone whose spread is
what tells people apart). So it is always measured before it is used: the people are split in
two halves (seeded), each half is scored with the *other* half's mean, plain and centred, and
the centre is kept only when the held-out AUC rises.

Two commands use this: ``siamface fuse`` (a centre per member of a fusion) and ``siamface
centre`` (one model, written as a centred checkpoint). Fine-tuning decides the same question on
its validation people instead (:mod:`siamface.train.centre`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from siamface.embed.base import apply_centre, unit_rows
from siamface.embed.fusion_fit import fusion_pairs


def unit(emb: np.ndarray) -> np.ndarray:
    """Unit rows in float64: means and AUCs of many pairs without float32 rounding."""
    return unit_rows(np.asarray(emb, np.float64))


@dataclass(frozen=True)
class HeldOut:
    """Cross-fitted scores of one model: per half of the people, its labelled pairs scored
    plain and centred on the other half's mean (so no score used a mean that saw its faces)."""

    same: list[np.ndarray]
    plain: list[np.ndarray]
    centred: list[np.ndarray]

    def auc(self, which: str) -> float | None:
        """Mean over the halves of the AUC of ``which`` ("plain" or "centred")."""
        from sklearn.metrics import roc_auc_score  # lazy: sklearn for the callers that score

        got = [roc_auc_score(s, x) for s, x in zip(self.same, getattr(self, which), strict=True)]
        return float(np.mean(got)) if got else None

    def pooled(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(scores, same) of both halves together: what a threshold is measured on."""
        return np.concatenate(getattr(self, which)), np.concatenate(self.same)

    @property
    def kept(self) -> bool:
        """Centring raised the held-out AUC."""
        plain, centred = self.auc("plain"), self.auc("centred")
        return plain is not None and centred is not None and centred > plain


def halves(labels: Sequence[str], seed: int = 0) -> list[np.ndarray] | None:
    """Two row masks splitting the people in half (seeded); None under four people, where
    there is nothing to hold out."""
    lab = np.asarray(labels)
    people = np.unique(lab)
    if len(people) < 4:
        return None
    order = np.random.default_rng(seed).permutation(people)
    return [np.isin(lab, order[: len(order) // 2]), np.isin(lab, order[len(order) // 2 :])]


def held_out_scores(
    emb: np.ndarray, labels: Sequence[str], seed: int = 0, max_impostors: int = 100_000
) -> HeldOut | None:
    """One model's cross-fitted plain and centred scores (None under four people)."""
    split = halves(labels, seed)
    if split is None:
        return None
    lab = np.asarray(labels)
    u = unit(emb)
    same_l, plain_l, centred_l = [], [], []
    for k, rows in enumerate(split):
        mean = u[split[1 - k]].mean(axis=0)
        x = u[rows]
        pi, pj, same = fusion_pairs(lab[rows], max_impostors, seed)
        if same.all() or not same.any():
            continue
        xc = apply_centre(x, mean)
        same_l.append(same)
        plain_l.append(np.einsum("ij,ij->i", x[pi], x[pj]))
        centred_l.append(np.einsum("ij,ij->i", xc[pi], xc[pj]))
    return HeldOut(same_l, plain_l, centred_l)


def choose_centres(
    embeddings: Sequence[np.ndarray],
    labels: Sequence[str],
    seed: int = 0,
    max_impostors: int = 100_000,
) -> tuple[list[np.ndarray | None], list[dict]]:
    """Per model: its centre (the mean of its unit embeddings over all the faces) when centring
    raises its held-out AUC, else None; and what was measured."""
    centres: list[np.ndarray | None] = []
    report: list[dict] = []
    for e in embeddings:
        h = held_out_scores(e, labels, seed, max_impostors)
        if h is None:
            centres.append(None)
            report.append({"kept": False, "why": "fewer than 4 people"})
            continue
        u = unit(e)
        plain, centred = h.auc("plain"), h.auc("centred")
        centres.append(u.mean(axis=0).astype(np.float32) if h.kept else None)
        report.append(
            {
                "kept": h.kept,
                "held_out_auc_plain": None if plain is None else round(plain, 5),
                "held_out_auc_centred": None if centred is None else round(centred, 5),
                "mean_norm": round(float(np.linalg.norm(u.mean(axis=0))), 4),
            }
        )
    return centres, report
