"""Verification quality on unseen people: siamface defaults vs the article's recipe.

Both train for the same wall-clock budget on the same identities (``pins90`` + ``celeba_wild``
by default) and are scored by the same code on the same held-out *test* identities, which
neither run sees: siamface chooses its best epoch on a validation split carved from its own
training identities, and the article's script keeps its lowest-training-loss checkpoint.

The article's recipe (triplet, margin 0.1, AdamW 1e-4, 224 px, tf_efficientnetv2_b0, no
pretrained weights offline) runs as written through ../shared/tools/seed_recipe.py.
Prints JSON: AUC, EER, TAR@FAR=1e-3, best accuracy for both, and siamface's accuracy at the
threshold it stored in its checkpoint (the number a deployment would actually get).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

from _common import SEED_RECIPE, SHARED, SIAMFACE, machine, run_child, seed_result


def build_split(roots: list[Path], work: Path, test_fraction: float, seed: int) -> dict:
    """Symlink trees work/train/<root>__<id> and work/test/<root>__<id>, split by identity."""
    ids = []
    for root in roots:
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            ids.append((root.name, d))
    rng = random.Random(seed)
    order = ids[:]
    rng.shuffle(order)
    n_test = round(len(order) * test_fraction)
    test = {d for _, d in order[:n_test]}
    counts = {"train": 0, "test": 0}
    for root_name, d in ids:
        part = "test" if d in test else "train"
        out = work / part / f"{root_name}__{d.name}"
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(d.iterdir()):
            if f.is_file():
                (out / f.name).symlink_to(f.resolve())
        counts[part] += 1
    return {"train_identities": counts["train"], "test_identities": counts["test"]}


def seed_checkpoint_to_siamface(pth: Path, out: Path) -> Path:
    """Wrap the article's state dict (backbone.* + embedder.*) as a siamface checkpoint so both
    models are embedded and scored by exactly the same code. Cosine similarity is unchanged
    by siamface's L2 normalisation."""
    import torch

    from siamface.data.transforms import Preprocessing
    from siamface.model.checkpoint import Checkpoint, save_checkpoint
    from siamface.model.network import ModelConfig

    sd = torch.load(pth, map_location="cpu", weights_only=True)
    sd = {("head." + k[9:] if k.startswith("embedder.") else k): v for k, v in sd.items()}
    ckpt = Checkpoint(
        model_cfg=ModelConfig(backbone="tf_efficientnetv2_b0", embedding_size=512),
        preprocessing=Preprocessing(image_size=224),  # Resize 224 + ImageNet mean/std
        state_dict=sd,
    )
    return save_checkpoint(ckpt, out)


def score(model_path: Path, test_dir: Path) -> dict:
    """Embed every test image, score all pairs, return the verification metrics."""
    import numpy as np

    from siamface.data.folders import scan_identity_folders
    from siamface.evaluate.metrics import all_pair_scores, verification_metrics
    from siamface.inference import open_model

    model = open_model(model_path, device="cpu")
    scan = scan_identity_folders([test_dir])
    paths = [s.path for s in scan.samples]
    emb, errors = model.embed_paths(paths, batch_size=64, progress=False)
    labels = np.array([s.identity for i, s in enumerate(scan.samples) if i not in errors])
    scores, same = all_pair_scores(emb, labels)
    m = verification_metrics(scores, same)
    out = {
        "auc": round(m.auc, 4),
        "eer": round(m.eer, 4),
        "tar_at_far_1e-3": m.tar_at_far.get("1e-03"),
        "best_accuracy": round(m.best_accuracy, 4),
        "images": int(len(labels)),
        "unreadable": len(errors),
        "genuine_pairs": m.n_genuine,
        "impostor_pairs": m.n_impostor,
    }
    if model.threshold:
        thr = model.threshold["value"]
        tar = float((scores[same] >= thr).mean())
        far = float((scores[~same] >= thr).mean())
        out["stored_threshold"] = round(thr, 4)
        out["at_stored_threshold"] = {
            "tar": round(tar, 4),
            "far": round(far, 6),
            "balanced_accuracy": round((tar + 1 - far) / 2, 4),
        }
    return out


def run_jobs(jobs: dict, parallel: bool) -> dict:
    """Run the training commands one after the other on all cores, or side by side with one
    core and one thread each (both then see the same background load: a fair comparison on a
    shared machine)."""
    if not parallel:
        out = {}
        for name, (cmd, log) in jobs.items():
            load0 = os.getloadavg()[1]
            r = run_child(cmd, log=log)
            out[name] = (r, [round(load0, 2), round(os.getloadavg()[1], 2)])
        return out
    from concurrent.futures import ThreadPoolExecutor

    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cores = sorted(os.sched_getaffinity(0))
    load0 = os.getloadavg()[1]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {
            name: pool.submit(
                run_child, ["taskset", "-c", str(cores[i % len(cores)]), *cmd], log, env
            )
            for i, (name, (cmd, log)) in enumerate(jobs.items())
        }
        results = {name: f.result() for name, f in futures.items()}
    load = [round(load0, 2), round(os.getloadavg()[1], 2)]
    return {name: (r, load) for name, r in results.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", action="append", help="identity-folder roots (default: pins90 + celeba_wild)"
    )
    ap.add_argument("--budget-min", type=float, default=20.0, help="training budget per recipe")
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", help="work directory (default: a new temp dir)")
    ap.add_argument("--skip-seed", action="store_true")
    ap.add_argument("--skip-siamface", action="store_true")
    ap.add_argument(
        "--parallel",
        action="store_true",
        help="train both recipes at the same time, one core each (fair on a shared machine)",
    )
    ap.add_argument("overrides", nargs="*", help="extra siamface key=value settings")
    args = ap.parse_args()
    roots = [Path(d) for d in (args.data or [SHARED / "data/pins90", SHARED / "data/celeba_wild"])]
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_train_quality_"))
    res: dict = {"bench": "train_quality", "machine": machine(), "workdir": str(work)}
    res["split"] = build_split(roots, work, args.test_fraction, args.seed)
    res["budget_min_each"] = args.budget_min
    run = work / "siamface_run"
    sf_cmd = [
        *SIAMFACE,
        "train",
        "--data",
        str(work / "train"),
        "--out",
        str(run),
        "--no-progress",
        f"time_budget_min={args.budget_min}",
        f"seed={args.seed}",
        *args.overrides,
    ]
    seed_cmd = [
        sys.executable,
        str(SEED_RECIPE),
        "train",
        "--data",
        str(work / "train"),
        "--epochs",
        "1000",
        "--max-seconds",
        str(args.budget_min * 60),
        "--workdir",
        str(work / "seed"),
        "--seed",
        str(args.seed),
    ]
    jobs = {}
    if not args.skip_siamface:
        jobs["siamface"] = (sf_cmd, work / "siamface_train.log")
    if not args.skip_seed:
        jobs["seed"] = (seed_cmd, work / "seed_train.log")
    res["mode"] = "parallel, one core each" if args.parallel else "sequential, all cores each"
    results = run_jobs(jobs, args.parallel)
    if "siamface" in results:
        r, load = results["siamface"]
        entry: dict = {
            "rc": r["rc"],
            "wall_s": r["wall_s"],
            "peak_rss_mb": r["peak_rss_mb"],
            "loadavg_before_after": load,
        }
        if r["rc"] == 0:
            summary = json.loads((run / "summary.json").read_text())
            entry["recipe"] = "siamface defaults" + (
                f" + {args.overrides}" if args.overrides else ""
            )
            entry["epochs_completed"] = summary["epochs_completed"]
            entry["steps"] = summary["steps"]
            entry["best_epoch"] = summary["best_epoch"]
            entry["test"] = score(run / "best.safetensors", work / "test")
        res["siamface"] = entry
    if "seed" in results:
        r, load = results["seed"]
        s = seed_result(r["stdout"])
        entry = {
            "recipe": "article script as written (triplet m=0.1, AdamW 1e-4, 224 px, "
            "tf_efficientnetv2_b0, pretrained=False offline)",
            "rc": s.get("rc"),
            "batches": s.get("batches"),
            "images_per_s": s.get("images_per_s"),
            "checkpoint": s.get("checkpoint"),
            "peak_rss_mb": s.get("peak_rss_mb"),
            "loadavg_before_after": load,
        }
        if s.get("checkpoint"):
            ck = seed_checkpoint_to_siamface(
                Path(s["checkpoint"]), work / "seed_as_siamface.safetensors"
            )
            entry["test"] = score(ck, work / "test")
        res["seed"] = entry
    a, b = res.get("siamface", {}).get("test"), res.get("seed", {}).get("test")
    if a and b:
        res["delta_siamface_minus_seed"] = {
            k: round(a[k] - b[k], 4)
            for k in ("auc", "eer", "tar_at_far_1e-3", "best_accuracy")
            if a.get(k) is not None and b.get(k) is not None
        }
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
