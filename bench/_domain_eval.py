"""Embed-once scoring for bench/train_quality.py's domain arms (f/g, h/i, and a).

Each (model, image folder, condition) is embedded once, in this process; the same embeddings
give the all-pairs metrics with 95 % intervals (bootstrap over identities), the paired
comparison with sface zero-shot on the same people, 10-fold accuracy on the LFW-format
pairs file, and (``draws``) 10-fold accuracy over that many drawn pairs files, paired with
sface draw by draw (``siamface.scores.kfold_draws``: one drawn file is a noisy estimate). On a
shared 2-core machine this halves the embedding work of calling
``siamface evaluate`` and ``siamface evaluate --compare`` separately (same library code).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from siamface.embed.load import create_embedder
from siamface.scores import bootstrap as bs
from siamface.scores.compare import ConditionedEmbedder
from siamface.scores.evaluate import collect_images
from siamface.scores.kfold_draws import kfold_draws_report, paired_kfold_draws
from siamface.scores.protocol import kfold_accuracy, read_pairs, resolve_pairs
from siamface.tensors.conditions import parse_condition


class DomainScorer:
    """Embeddings cached per (model, folder, condition); metrics computed from them."""

    def __init__(
        self,
        pairs: Path,
        replicates: int = 1000,
        seed: int = 0,
        cache: Path | None = None,
        draws: int = 0,
        per_fold: int = 300,
    ) -> None:
        self.pairs = pairs
        self.draws, self.per_fold = draws, per_fold
        self.cache = cache  # embeddings kept on disk, so a later bench call reuses them
        self.replicates = replicates
        self.seed = seed
        self._models: dict[str, object] = {}
        self._emb: dict[tuple, tuple] = {}

    def _model(self, spec: str):
        if spec not in self._models:
            self._models[spec] = create_embedder(spec, device="cpu")
        return self._models[spec]

    def embed(self, model: str, folder: Path, condition: str | None = None):
        """(paths, labels, embeddings, {path: row}) of the images the model could read."""
        key = (model, str(folder), condition)
        if key not in self._emb and self.cache is not None:
            f = self._cache_file(key)
            if f.is_file():
                z = np.load(f, allow_pickle=False)
                paths = [Path(p) for p in z["paths"]]
                row = {str(p): k for k, p in enumerate(paths)}
                self._emb[key] = (paths, z["labels"], z["emb"], row, int(z["bad"]), 0.0)
        if key not in self._emb:
            t = time.perf_counter()
            imgs = collect_images([folder])
            e = self._model(model)
            if condition:
                e = ConditionedEmbedder(e, parse_condition(condition, self.seed))
            emb, errors = e.embed_paths(imgs.paths, batch_size=64, progress=False)
            kept = [i for i in range(len(imgs.paths)) if i not in errors]
            paths = [imgs.paths[i] for i in kept]
            labels = np.array([imgs.labels[i] for i in kept])
            row = {str(p): k for k, p in enumerate(paths)}
            self._emb[key] = (paths, labels, emb, row, len(errors), time.perf_counter() - t)
            if self.cache is not None:
                self.cache.mkdir(parents=True, exist_ok=True)
                np.savez(
                    self._cache_file(key),
                    paths=np.array([str(p) for p in paths]),
                    labels=labels,
                    emb=emb,
                    bad=len(errors),
                )
        return self._emb[key]

    def _cache_file(self, key: tuple) -> Path:
        """One file per (model file and its modification time, folder, condition)."""
        import hashlib

        model, folder, cond = key
        p = Path(model)
        stamp = f"{p.resolve()}:{p.stat().st_mtime_ns}" if p.exists() else model
        h = hashlib.sha256(f"{stamp}|{folder}|{cond}|{self.seed}".encode()).hexdigest()[:16]
        return self.cache / f"{h}.npz"

    def score(self, model: str, folder: Path, condition: str | None = None) -> dict:
        """All-pairs metrics with intervals, 10-fold accuracy; vs sface when not sface."""
        paths, labels, emb, row, unreadable, secs = self.embed(model, folder, condition)
        _, ref_labels, ref_emb, ref_row, _, _ = self.embed("sface", folder, condition)
        # both models on the images both could read (same detector: normally all the same)
        common = [p for p in row if p in ref_row]
        ia = np.array([row[p] for p in common])
        ib = np.array([ref_row[p] for p in common])
        lab = labels[ia]
        groups = bs.clusters_of(lab, 80, self.seed)
        h = bs.histograms_all_pairs(emb[ia], lab, groups)
        out: dict = {
            "images": len(common),
            "unreadable_or_no_face": unreadable,
            "identities": len(set(lab.tolist())),
            "embed_seconds": round(secs, 1),
            "all_pairs": bs.interval(h, self.replicates, self.seed),
            "pairs_file": self.kfold(emb, row, folder),
        }
        if self.draws and model == "sface":
            out["pairs_draws"] = kfold_draws_report(
                emb[ia], lab.tolist(), self.draws, self.per_fold
            )
        elif self.draws:
            both = {"model": (emb[ia], None), "sface": (ref_emb[ib], None)}
            out["pairs_draws"] = paired_kfold_draws(both, lab.tolist(), self.draws, self.per_fold)
        if model != "sface":
            h_ref = bs.histograms_all_pairs(ref_emb[ib], lab, groups)
            out["vs_sface"] = bs.compare(h, h_ref, self.replicates, self.seed)
            ref_k = self.kfold(ref_emb, ref_row, folder)
            if "accuracy_10fold" in ref_k and "accuracy_10fold" in out["pairs_file"]:
                out["pairs_file"]["accuracy_10fold_delta_vs_sface"] = round(
                    out["pairs_file"]["accuracy_10fold"] - ref_k["accuracy_10fold"], 5
                )
        return out

    def kfold(self, emb: np.ndarray, row: dict, folder: Path) -> dict:
        pf = read_pairs(self.pairs)
        files = resolve_pairs(pf, folder, self.pairs)
        keep = [k for k, (a, b) in enumerate(files) if str(a) in row and str(b) in row]
        if not keep:
            return {"error": "no pair has both images readable"}
        a = emb[[row[str(files[k][0])] for k in keep]]
        b = emb[[row[str(files[k][1])] for k in keep]]
        scores = np.einsum("ij,ij->i", a, b)
        kf = kfold_accuracy(scores, pf.labels[keep], np.asarray(pf.fold_ids)[keep])
        return {
            "accuracy_10fold": round(kf.mean, 5),
            "accuracy_10fold_std": round(kf.std, 5),
            "pairs_scored": len(keep),
            "pairs_dropped_unreadable": len(files) - len(keep),
        }
