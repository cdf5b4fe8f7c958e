"""Face models alone and together, on unseen people: sface, dlib, flip averaging, fusion.

Arms: ``sface``, ``dlib``, ``sface:tta=flip``, ``fused`` (sface+dlib, weights fitted by
logistic regression on *training* people, disjoint from the test people) and ``fused_flip``
(the same with flip averaging in both members, fitted on flipped scores). pins90 + celeba_wild
are split by identity exactly as ``bench/train_quality.py`` splits them (same function, same
seed); the fusion weights are fitted on a subsample of the training people, every arm is scored
on the test people: all pairs (AUC, EER, TAR at FAR 1e-3 and 1e-4) and a 10-fold pairs file made
by ``siamface pairs make`` (accuracy, mean +- 95 % interval). Deltas of the fused model against
its best member come with a 90 % interval from re-drawing 80 % of the test people (30 times).
One generated pairs file is one random draw of pairs, so the 10-fold accuracy is also given
over ``--pair-draws`` drawn files (``siamface.scores.kfold_draws``; draw 0 is the bench's file,
the same draws for every arm) with the fused-minus-best-member difference per draw; both
figures and both target verdicts are reported.

Every embedding comes from the public pipeline: each member's own face loader (detection and
alignment of ``siamface.faces``) cuts its crops once and each member embeds them and their
mirror images once; the flip arms average the two, the fused arms are the fused model's own
``combine`` of the members' vectors (the fused model opened from the fusion file written here).
On a subset, every arm's model object (``create_embedder(spec)``) is run as the commands run it
and must give the same vectors (``model_vs_bench_max_abs_diff``). Arm ``fused_tar``: weights
chosen for TAR at FAR 1e-3/1e-2 on the fitting people (``siamface fuse --objective tar``).
Speed: images/s of each arm end to end (``embed_paths`` on the same files, decode + detection
+ network, rounds alternated) and of the networks alone, as ratios to the slowest member.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _common import SHARED, machine
from train_quality import make_pairs, split_identities

MEMBERS = ("sface", "dlib")
TARGETS = {"accuracy_10fold_points": 1.0, "tar_at_far_1e-3_points": 5.0, "max_slowdown": 2.5}


def subsample_tree(src: Path, dst: Path, max_ids: int | None, per_person: int, seed: int) -> Path:
    """Symlink ``dst/<person>/<image>``: at most ``per_person`` images of at most ``max_ids``
    people of ``src`` (seeded), so the bench fits in minutes on a small machine."""
    rng = random.Random(seed)
    people = sorted(p for p in src.iterdir() if p.is_dir())
    if max_ids is not None and len(people) > max_ids:
        people = sorted(rng.sample(people, max_ids))
    for person in people:
        files = sorted(f for f in person.iterdir() if f.is_file())
        if len(files) > per_person:
            files = sorted(rng.sample(files, per_person))
        out = dst / person.name
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            (out / f.name).symlink_to(f.resolve())
    return dst


def images_of(root: Path) -> tuple[list[Path], list[str]]:
    paths, labels = [], []
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(person.iterdir()):
            paths.append(f)
            labels.append(person.name)
    return paths, labels


def crops(model, paths: list[Path], threads: int) -> tuple[dict[int, np.ndarray], int]:
    """{index: CHW uint8 crop} made by the model's own face loader; and the failure count."""
    from siamface.folders.images import ImageLoadError

    load = model.face_loader()

    def one(p: Path):
        try:
            return np.ascontiguousarray(load(p).transpose(2, 0, 1))
        except ImageLoadError:
            return None

    with ThreadPoolExecutor(threads) as pool:
        got = list(pool.map(one, paths))
    return {i: c for i, c in enumerate(got) if c is not None}, sum(c is None for c in got)


def embed(model, faces: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate(
        [model.embed_batch(faces[i : i + batch]) for i in range(0, len(faces), batch)]
    )


def all_pairs_metrics(emb: np.ndarray, labels: np.ndarray) -> dict:
    from siamface.scores.metrics import all_pair_scores, verification_metrics

    s, same = all_pair_scores(emb, labels)
    m = verification_metrics(s, same, (1e-3, 1e-4))
    return {
        "auc": round(m.auc, 5),
        "eer": round(m.eer, 5),
        "tar_at_far_1e-3": m.tar_at_far.get("1e-03"),
        "tar_at_far_1e-4": m.tar_at_far.get("1e-04"),
        "genuine_pairs": m.n_genuine,
        "impostor_pairs": m.n_impostor,
    }


def kfold(emb: np.ndarray, index: dict[Path, int], pairs: list, same, folds) -> dict:
    from siamface.scores.protocol import kfold_accuracy

    ok = [k for k, (a, b) in enumerate(pairs) if a in index and b in index]
    ia = np.array([index[pairs[k][0]] for k in ok])
    ib = np.array([index[pairs[k][1]] for k in ok])
    r = kfold_accuracy(np.einsum("ij,ij->i", emb[ia], emb[ib]), same[ok], folds[ok])
    half = 1.96 * float(np.std(r.accuracies, ddof=1)) / np.sqrt(len(r.accuracies))
    return {
        "accuracy_10fold": round(r.mean, 5),
        "accuracy_10fold_ci95": [round(r.mean - half, 5), round(r.mean + half, 5)],
        "pairs_used": len(ok),
        "pairs_dropped": len(pairs) - len(ok),
    }


def plain_and_flip(model, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's embeddings of the faces and, from the same two network passes (face and
    mirror), its flip-averaged ones: what ``MODEL:tta=flip`` computes (checked against it on a
    subset in main) without running the slow member a third time."""
    plain = embed(model, faces)
    mirror = embed(model, np.ascontiguousarray(faces[..., ::-1]))
    both = plain + mirror
    return plain, both / np.linalg.norm(both, axis=1, keepdims=True)


def fit(
    name: str,
    bases: list,
    embs: list[np.ndarray],
    labels,
    out: Path,
    tta: str,
    objective: str = "logistic",
    centre: bool = True,
) -> Path:
    """Fit fusion weights on training people and write the fusion file (as siamface fuse)."""
    from siamface.decide.threshold import Threshold
    from siamface.embed.base import apply_centre
    from siamface.embed.centring import choose_centres
    from siamface.embed.fusion import write_fusion
    from siamface.embed.fusion_fit import fit_fusion, fusion_pairs, fusion_record
    from siamface.scores.metrics import verification_metrics

    pi, pj, same = fusion_pairs(labels, 200_000, 0)
    centres, centring = choose_centres(embs, labels, 0) if centre else ([None] * len(embs), [])
    embs = [apply_centre(e, c) for e, c in zip(embs, centres, strict=True)]
    scores = np.stack([np.einsum("ij,ij->i", e[pi], e[pj]) for e in embs], axis=1)
    w = fit_fusion(scores, same, objective=objective)
    m = verification_metrics(scores @ np.asarray(w["weights"]), same, (1e-2, 1e-3, 1e-4))
    src = "pins90 + celeba_wild training identities (bench/model_quality.py split, seed 0)"
    thr = Threshold.at_far(m, 1e-3, src).to_record()
    prov = {
        "data": src,
        "identities": len(set(labels)),
        "images": len(labels),
        "genuine_pairs": int(same.sum()),
        "impostor_pairs": int((~same).sum()),
        "tta": tta,
    }
    if centring:
        prov["centring"] = dict(zip(MEMBERS, centring, strict=True))
    rec = fusion_record(list(zip(MEMBERS, bases, strict=True)), w, thr, prov, centres)
    rec["tta"] = tta
    return write_fusion(rec, out / f"{name}.json")


def speed(specs: dict[str, str], files: list[Path], rounds: int = 3) -> dict:
    """End-to-end images/s (embed_paths: decode, detection, alignment, network), rounds
    alternated so that a shared machine's load falls on every arm alike."""
    from siamface.embed.load import create_embedder

    models = {k: create_embedder(s, device="cpu") for k, s in specs.items()}
    rates: dict[str, list[float]] = {k: [] for k in models}
    for m in models.values():  # warm-up: lazy detector / predictor loading
        m.embed_paths(files[:2], progress=False, workers=1)
    for _ in range(rounds):
        for k, m in models.items():
            t = time.perf_counter()
            m.embed_paths(files, progress=False, workers=1, batch_size=16)
            rates[k].append(len(files) / (time.perf_counter() - t))
    return {k: round(float(np.median(v)), 2) for k, v in rates.items()}


def network_speed(arms: dict) -> dict:
    """Images/s of each arm's embed_batch on crops already made (networks alone)."""
    out = {}
    for name, (model, x) in arms.items():
        model.embed_batch(x[:4])
        t = time.perf_counter()
        embed(model, x)
        out[name] = round(len(x) / (time.perf_counter() - t), 1)
    return out


def subsample_delta(embs: dict, labels: np.ndarray, a: str, b: str, reps: int, seed: int) -> dict:
    """90 % interval of (a - b) in TAR@FAR=1e-3 and AUC over re-draws of 80 % of the people."""
    from siamface.scores.metrics import all_pair_scores, verification_metrics

    rng = np.random.default_rng(seed)
    people = np.unique(labels)
    d_tar, d_auc = [], []
    for _ in range(reps):
        keep = set(rng.choice(people, int(0.8 * len(people)), replace=False).tolist())
        idx = np.array([i for i, lab in enumerate(labels) if lab in keep])
        vals = {}
        for arm in (a, b):
            s, same = all_pair_scores(embs[arm][idx], labels[idx])
            m = verification_metrics(s, same, (1e-3,))
            vals[arm] = (m.tar_at_far.get("1e-03") or 0.0, m.auc)
        d_tar.append(vals[a][0] - vals[b][0])
        d_auc.append(vals[a][1] - vals[b][1])

    def iv(x):
        return [round(float(np.percentile(x, 5)), 5), round(float(np.percentile(x, 95)), 5)]

    return {"tar_at_far_1e-3": iv(d_tar), "auc": iv(d_auc), "reps": reps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--test-per-person", type=int, default=10, help="test images per person")
    ap.add_argument(
        "--fit-identities", type=int, default=None, help="training people to fit on (all)"
    )
    ap.add_argument("--fit-per-person", type=int, default=12, help="images per fitting person")
    ap.add_argument("--per-fold", type=int, default=200, help="pairs file: pairs per fold")
    ap.add_argument(
        "--pair-draws",
        type=int,
        default=30,
        help="also 10-fold accuracy over this many drawn pairs files (seeds 0..; 0: off)",
    )
    ap.add_argument("--speed-images", type=int, default=16, help="files for the speed rounds")
    ap.add_argument("--reps", type=int, default=30, help="people re-draws for the intervals")
    ap.add_argument("--threads", type=int, default=2, help="face-cropping threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", help="work directory (default: a new temp dir)")
    ap.add_argument("--keep-fusion", help="copy the fitted sface+dlib fusion file here")
    args = ap.parse_args()
    t_start = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_model_quality_"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SIAMFACE_CACHE", str(work / "cache"))
    from siamface.embed.load import create_embedder
    from siamface.scores.protocol import read_pairs, resolve_pairs

    data = SHARED / "data"
    res: dict = {"bench": "model_quality", "machine": machine(), "workdir": str(work)}
    res["split"] = split_identities(
        [data / "pins90", data / "celeba_wild"], work / "main", args.test_fraction, args.seed
    )
    test = subsample_tree(work / "main" / "test", work / "test", None, args.test_per_person, 1)
    fit_dir = subsample_tree(
        work / "main" / "train", work / "fit", args.fit_identities, args.fit_per_person, 3
    )
    pairs_file = work / "pairs.txt"
    res["pairs"] = make_pairs(test, pairs_file, args.per_fold)
    pf = read_pairs(pairs_file)
    pairs = resolve_pairs(pf, test, pairs_file)
    same, folds = pf.labels, pf.fold_ids

    members = [create_embedder(m, device="cpu") for m in MEMBERS]
    test_paths, test_labels = images_of(test)
    fit_paths, fit_labels = images_of(fit_dir)
    t0 = time.perf_counter()
    test_crops = [crops(m, test_paths, args.threads) for m in members]
    fit_crops = [crops(m, fit_paths, args.threads) for m in members]
    res["crop_seconds"] = round(time.perf_counter() - t0, 1)
    # One image set for every arm: the images each member could cut a face from.
    t_ok = sorted(set.intersection(*(set(c) for c, _ in test_crops)))
    f_ok = sorted(set.intersection(*(set(c) for c, _ in fit_crops)))
    res["images"] = {
        "test": len(test_paths),
        "test_used": len(t_ok),
        "test_identities": len({test_labels[i] for i in t_ok}),
        "fit": len(fit_paths),
        "fit_used": len(f_ok),
        "fit_identities": len({fit_labels[i] for i in f_ok}),
        "no_face": {m: n for m, (_, n) in zip(MEMBERS, test_crops, strict=True)},
    }
    faces = {
        m: np.stack([c[i] for i in t_ok]) for m, (c, _) in zip(MEMBERS, test_crops, strict=True)
    }
    fit_faces = [np.stack([c[i] for i in f_ok]) for c, _ in fit_crops]
    labels = np.array([test_labels[i] for i in t_ok])
    flabels = [fit_labels[i] for i in f_ok]

    flip = {m: create_embedder(f"{m}:tta=flip", device="cpu") for m in MEMBERS}
    t0 = time.perf_counter()
    fit_pf = [plain_and_flip(m, f) for m, f in zip(members, fit_faces, strict=True)]
    fused_file = fit("fused", members, [p for p, _ in fit_pf], flabels, work, "none")
    fused_flip_file = fit("fused_flip", members, [f for _, f in fit_pf], flabels, work, "flip")
    fused_tar_file = fit(
        "fused_tar", members, [p for p, _ in fit_pf], flabels, work, "none", objective="tar"
    )
    res["fit_seconds"] = round(time.perf_counter() - t0, 1)
    fused = create_embedder(str(fused_file), device="cpu")
    fused_flip = create_embedder(str(fused_flip_file), device="cpu")
    fused_tar = create_embedder(str(fused_tar_file), device="cpu")
    res["fusion"] = {
        "fused_tar": json.loads(fused_tar_file.read_text())["members"],
        "fused": json.loads(fused_file.read_text())["members"],
        "fused_flip": json.loads(fused_flip_file.read_text())["members"],
        "fused_threshold": json.loads(fused_file.read_text())["threshold"]["value"],
    }
    if args.keep_fusion:
        Path(args.keep_fusion).write_text(fused_file.read_text())

    t0 = time.perf_counter()
    test_pf = {
        m: plain_and_flip(model, faces[m]) for m, model in zip(MEMBERS, members, strict=True)
    }
    embs = {
        "sface": test_pf["sface"][0],
        "dlib": test_pf["dlib"][0],
        "sface_flip": test_pf["sface"][1],
        "fused": fused.combine([test_pf[m][0] for m in MEMBERS]),
        "fused_flip": fused_flip.combine([test_pf[m][1] for m in MEMBERS]),
        "fused_tar": fused_tar.combine([test_pf[m][0] for m in MEMBERS]),
    }
    np.savez(work / "embeddings.npz", labels=labels, **embs)
    res["embed_seconds"] = round(time.perf_counter() - t0, 1)
    # The shortcuts above are the arms' own models: check on a subset that each model object,
    # run as every command runs it (embed_batch on its own input), gives the same vectors.
    k = min(16, len(labels))
    packed = np.stack([np.concatenate([faces[m][i].ravel() for m in MEMBERS]) for i in range(k)])[
        :, None, None, :
    ]
    arms = {
        "sface": (members[0], faces["sface"][:k]),
        "dlib": (members[1], faces["dlib"][:k]),
        "sface_flip": (flip["sface"], faces["sface"][:k]),
        "fused": (fused, packed),
        "fused_flip": (fused_flip, packed),
        "fused_tar": (fused_tar, packed),
    }
    res["model_vs_bench_max_abs_diff"] = {
        name: float(np.abs(model.embed_batch(x) - embs[name][:k]).max())
        for name, (model, x) in arms.items()
    }
    index = {test_paths[i]: k for k, i in enumerate(t_ok)}
    out = {}
    for name, e in embs.items():
        out[name] = {**all_pairs_metrics(e, labels), **kfold(e, index, pairs, same, folds)}
    draws = None
    if args.pair_draws:
        from siamface.scores.kfold_draws import draw_pair_sets, kfold_over_draws, summarise

        draws = draw_pair_sets(labels.tolist(), args.pair_draws, per_fold=args.per_fold)
        res["pair_draws"] = draws.describe()
        per_draw = {name: kfold_over_draws(e, draws) for name, e in embs.items()}
        for name, acc in per_draw.items():
            out[name]["accuracy_10fold_over_draws"] = summarise(acc)
        # a check on the draws: draw 0 over every test image is the bench's pairs file
        res["pair_draws"]["draw_0_equals_the_pairs_file"] = bool(
            draws.draws[0].seed == 0
            and all(abs(per_draw[n][0] - out[n]["accuracy_10fold"]) < 1e-5 for n in per_draw)
        )
    res["arms"] = out
    best = max(MEMBERS, key=lambda m: out[m]["accuracy_10fold"])
    best_tar = max(MEMBERS, key=lambda m: out[m]["tar_at_far_1e-3"] or 0)
    for arm in ("fused", "fused_flip", "fused_tar"):
        res[f"{arm}_vs_best_member"] = {
            "best_member_accuracy": best,
            "best_member_tar": best_tar,
            "accuracy_10fold_points": round(
                100 * (out[arm]["accuracy_10fold"] - out[best]["accuracy_10fold"]), 2
            ),
            "tar_at_far_1e-3_points": round(
                100 * (out[arm]["tar_at_far_1e-3"] - out[best_tar]["tar_at_far_1e-3"]), 2
            ),
            "interval_90_vs_best_tar_member": subsample_delta(
                embs, labels, arm, best_tar, args.reps, args.seed
            ),
        }
        if draws is not None:
            best_d = max(MEMBERS, key=lambda m: float(np.mean(per_draw[m])))
            diff = np.asarray(per_draw[arm]) - np.asarray(per_draw[best_d])
            res[f"{arm}_vs_best_member"]["over_draws"] = {
                "best_member_accuracy": best_d,
                "accuracy_10fold_points": {
                    k: round(100 * v, 2) if isinstance(v, float) else v
                    for k, v in summarise(diff).items()
                    if k != "per_draw"
                },
                "per_draw_points": [round(100 * x, 2) for x in diff],
            }
    files = [test_paths[i] for i in t_ok[: args.speed_images]]
    e2e = speed(
        {
            "sface": "sface",
            "dlib": "dlib",
            "sface_flip": "sface:tta=flip",
            "fused": str(fused_file),
            "fused_flip": str(fused_flip_file),
            "fused_tar": str(fused_tar_file),
        },
        files,
    )
    net = network_speed(arms)
    slowest = min(e2e[m] for m in MEMBERS)
    slowest_net = min(net[m] for m in MEMBERS)
    res["speed"] = {
        "end_to_end_images_per_s": e2e,
        "network_images_per_s": net,
        "slowdown_vs_slowest_member_end_to_end": {k: round(slowest / v, 2) for k, v in e2e.items()},
        "slowdown_vs_slowest_member_network": {
            k: round(slowest_net / v, 2) for k, v in net.items()
        },
    }
    d = res["fused_vs_best_member"]
    over = d.get("over_draws", {}).get("accuracy_10fold_points", {}).get("mean")
    res["targets"] = {
        **TARGETS,
        "met": {
            "accuracy_10fold": d["accuracy_10fold_points"] >= TARGETS["accuracy_10fold_points"],
            "accuracy_10fold_over_draws": None
            if over is None
            else over >= TARGETS["accuracy_10fold_points"],
            "tar_at_far_1e-3": d["tar_at_far_1e-3_points"] >= TARGETS["tar_at_far_1e-3_points"],
            "speed": res["speed"]["slowdown_vs_slowest_member_end_to_end"]["fused"]
            <= TARGETS["max_slowdown"],
        },
    }
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    json.dump(res, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
