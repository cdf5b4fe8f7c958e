"""Verification quality on unseen people: face models zero-shot, fine-tuned, distilled, and the
article's recipe, all scored by the same code on the same held-out identities.

Arms (``--arms``, default all):
  a  sface zero-shot (the starting model)
  b  dlib zero-shot (when ``siamface[dlib]`` is installed)
  c  the README's main job: ``--config finetune`` (fine-tuned from sface) for --budget-min
  d  a tf_efficientnet_lite0 student distilled from sface (+ dlib when installed)
  e  the article's script as written (../shared/tools/seed_recipe.py) for --budget-min
  att40  a domain sface has not seen (grayscale AT&T faces): fine-tuned on 20 people,
         tested on the other 20, against zero-shot
  f  sface zero-shot on a CCTV-like copy of the test photos (each photo shrunk 4x, JPEG
     quality 40 at that size, scaled back: a face about 25-28 px wide)
  g  ``--config adapt-cctv`` for --cctv-budget-min, on that copy and on the clean photos
  h  sface zero-shot under synthetic masks (``siamface evaluate --condition masked``)
  i  ``--config adapt-mask`` for --mask-budget-min, masked and clean
  j  no training: ``siamface centre --model sface`` on the training people, scored clean
  k  no training: ``siamface centre --model sface --condition cctv`` on the training people,
     scored on the CCTV copy and clean
  l  no training: ``siamface centre --model sface --condition masked``, scored masked and clean
  m  no training: ``siamface fuse sface dlib`` fitted on a CCTV-like copy of training-side
     photos (``--held-out run_g``: the people arm g's run did not train on, when it exists),
     scored on the CCTV copy and clean (needs ``siamface[dlib]``)
  n  ``siamface fuse`` of arm g's adapted model with dlib, fitted on the same people

Adapted arms are compared with sface zero-shot on the same people by ``siamface evaluate
--compare sface`` (each metric's difference with a 95 % interval, bootstrap over identities),
and scored on the LFW-format pairs file (10-fold accuracy, mean and standard deviation). One
generated pairs file is one random draw of pairs, so the same 10-fold accuracy is also given
over ``--pair-draws`` drawn files (seeds 0.., the same draws for the arm and sface; draw 0 is
the bench's file), with the difference to sface per draw: the mean over draws is the steadier
figure, and both are reported.

pins90 + celeba_wild are split by identity (seeded): the test identities are never trained on
(every training arm carves its own validation split from the rest). Each model is scored on all
pairs of the test identities (AUC, EER, TAR@FAR=1e-3 and 1e-4) and on an LFW-format pairs file
made from them with ``siamface pairs make`` (10-fold accuracy), by ``siamface evaluate``.
Training arms run side by side (``--parallel``, default) so that a shared machine's load falls
on all of them alike. Prints JSON with every arm and the deltas against sface zero-shot.
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

from _common import (
    SEED_RECIPE,
    SHARED,
    SIAMFACE,
    last_json,
    machine,
    run_child,
    seed_checkpoint_to_siamface,
    seed_result,
)

METRICS = ("auc", "eer", "tar_at_far_1e-3", "tar_at_far_1e-4", "accuracy_10fold")
HIGHER = {"auc": True, "eer": False, "tar_at_far_1e-3": True, "tar_at_far_1e-4": True}


def split_identities(
    roots: list[Path], work: Path, test_fraction: float, seed: int, n_test: int | None = None
) -> dict:
    """Symlink trees work/train/<root>__<id> and work/test/<root>__<id>, split by identity."""
    ids = [
        (root.name, d) for root in roots for d in sorted(p for p in root.iterdir() if p.is_dir())
    ]
    order = ids[:]
    random.Random(seed).shuffle(order)
    k = n_test if n_test is not None else round(len(order) * test_fraction)
    test = {d for _, d in order[:k]}
    counts = {"train": 0, "test": 0}
    for root_name, d in ids:
        part = "test" if d in test else "train"
        out = work / part / f"{root_name}__{d.name}"
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(d.iterdir()):
            if f.is_file() and not (out / f.name).is_symlink():  # (a reused --work)
                (out / f.name).symlink_to(f.resolve())
        counts[part] += 1
    return {"train_identities": counts["train"], "test_identities": counts["test"]}


def make_pairs(test_dir: Path, out: Path, per_fold: int) -> dict:
    r = run_child(
        [
            *SIAMFACE,
            "pairs",
            "make",
            str(test_dir),
            "--out",
            str(out),
            "--per-fold",
            str(per_fold),
            "--json",
        ]
    )
    if r["rc"] != 0:
        raise RuntimeError(f"pairs make failed: {r['stdout'][-500:]}")
    return last_json(r["stdout"])


def evaluate(model: str, test_dir: Path, pairs: Path, out: Path) -> dict:
    """All-pairs metrics + 10-fold accuracy on the pairs file, both from siamface evaluate."""
    res: dict = {}
    for name, extra in (("all_pairs", []), ("pairs", ["--pairs", str(pairs)])):
        r = run_child(
            [
                *SIAMFACE,
                "evaluate",
                "--model",
                model,
                "--data",
                str(test_dir),
                *extra,
                "--json",
                "--no-progress",
                "--no-plots",
                "--out",
                str(out / name),
            ],
            log=out.with_suffix(f".{name}.log"),
        )
        if r["rc"] != 0:
            return {"error": f"evaluate ({name}) exit {r['rc']}, see {out}.{name}.log"}
        res[name] = last_json(r["stdout"])
    m, k = res["all_pairs"]["metrics"], res["pairs"]["kfold"]
    d = res["all_pairs"]["data"]
    return {
        "auc": round(m["auc"], 5),
        "eer": round(m["eer"], 5),
        "tar_at_far_1e-3": m["tar_at_far"].get("1e-03"),
        "tar_at_far_1e-4": m["tar_at_far"].get("1e-04"),
        "accuracy_10fold": round(k["accuracy_mean"], 5),
        "accuracy_10fold_std": round(k["accuracy_std"], 5),
        "images_embedded": d.get("images_embedded"),
        "images": d.get("images"),
        "genuine_pairs": m["n_genuine"],
        "impostor_pairs": m["n_impostor"],
        "embed_seconds": res["all_pairs"].get("timing_s", {}).get("embed"),
    }


def cctv_copy(src: Path, dst: Path, factor: int = 4, quality: int = 40) -> int:
    """A CCTV-like copy of every photo (``siamface data camera-copy``): shrunk ``factor`` x
    (area), JPEG ``quality`` at that size, scaled back (bicubic); same folder and file names
    (pixels stored losslessly)."""
    from siamface.folders.camera_copy import camera_copy

    return camera_copy(src, dst, factor, quality, progress=False).written


def compare_eval(model: str, data: Path, out: Path, extra: list[str] | None = None) -> dict:
    """``siamface evaluate --compare sface``: paired differences with 95 % intervals."""
    r = run_child(
        [
            *SIAMFACE,
            "evaluate",
            "--model",
            model,
            "--compare",
            "sface",
            "--data",
            str(data),
            *(extra or []),
            "--json",
            "--no-progress",
            "--out",
            str(out),
        ],
        log=out.with_suffix(".compare.log"),
    )
    if r["rc"] != 0:
        return {"error": f"evaluate --compare exit {r['rc']}, see {out}.compare.log"}
    rep = last_json(r["stdout"])
    out = {"verdict": rep["verdict"], "identities": rep["identities"], "metrics": rep["metrics"]}
    if "kfold_draws" in rep:
        out["kfold_draws"] = {k: v for k, v in rep["kfold_draws"].items() if k != "seeds"}
    return out


def kfold_eval(model: str, data: Path, pairs: Path, out: Path, extra: list[str] | None = None):
    """10-fold accuracy (mean, std over folds) on the pairs file."""
    r = run_child(
        [
            *SIAMFACE,
            "evaluate",
            "--model",
            model,
            "--data",
            str(data),
            "--pairs",
            str(pairs),
            *(extra or []),
            "--json",
            "--no-progress",
            "--no-plots",
            "--out",
            str(out),
        ],
        log=out.with_suffix(".pairs.log"),
    )
    if r["rc"] != 0:
        return {"error": f"evaluate --pairs exit {r['rc']}, see {out}.pairs.log"}
    rep = last_json(r["stdout"])
    k, m = rep["kfold"], rep["metrics"]
    return {
        "accuracy_10fold": round(k["accuracy_mean"], 5),
        "accuracy_10fold_std": round(k["accuracy_std"], 5),
        "auc": round(m["auc"], 5),
        "tar_at_far_1e-3": m["tar_at_far"].get("1e-03"),
    }


def domain_arms(
    scorer, key: str, zero: str, run: Path | None, seen: Path, clean: Path, cond: str | None
) -> dict:
    """A condition's zero-shot arm and adapted arm: under the condition and on clean people,
    each with intervals, paired differences against sface and 10-fold accuracy."""
    out: dict = {zero: scorer.score("sface", seen, cond)}
    if run is None:
        return out
    best = str(run / "best.safetensors")
    out[key] = {
        "train": summary_of(run),
        "under_condition": scorer.score(best, seen, cond),
        "clean": scorer.score(best, clean),
    }
    return out


def domain_targets(res: dict, key: str, acc_gain: float, tar_gain: float | None) -> dict:
    """The issue's targets for an adapted arm against sface zero-shot on the same people."""
    arm = res.get(key)
    if not arm:
        return {}
    u, c = arm["under_condition"], arm["clean"]
    acc = u["pairs_file"].get("accuracy_10fold_delta_vs_sface")
    t: dict = {"accuracy_10fold_gain": acc, "accuracy_met": acc is not None and acc >= acc_gain}
    if tar_gain is not None:
        d = u["vs_sface"]["tar_at_far_1e-3"]
        t["tar_at_far_1e-3_gain"] = round(d["delta"], 5)
        t["tar_at_far_1e-3_gain_ci"] = [round(x, 5) for x in d["delta_ci"]]
        t["tar_met"] = d["delta"] >= tar_gain
    draws = u.get("pairs_draws", {}).get("delta")
    if draws:
        t["accuracy_10fold_gain_over_draws"] = round(draws["mean"], 5)
        t["accuracy_10fold_gain_over_draws_p5_p95"] = [
            round(draws["p5"], 5),
            round(draws["p95"], 5),
        ]
        t["accuracy_met_over_draws"] = draws["mean"] >= acc_gain
    ca = c["pairs_file"].get("accuracy_10fold_delta_vs_sface")
    t["clean_accuracy_10fold_delta"] = ca
    t["clean_within_half_point"] = ca is not None and abs(ca) <= 0.005
    t["clean_not_below_by_more_than_half_point"] = ca is not None and ca >= -0.005
    t["clean_significantly_worse_on"] = [
        k for k, r in c["vs_sface"].items() if r["significant"] == "worse"
    ]
    return t


def centre_arm(
    scorer, work: Path, train: Path, name: str, seen: Path, clean: Path, cond: str | None = None
):
    """``siamface centre`` on the training people (minutes, no training; with ``cond``, the
    training faces seen under it), then scored like an adapted arm: on ``seen`` (the CCTV copy,
    or the test people under ``cond``) and on clean test people."""
    out = work / f"centred_{name}.safetensors"
    cmd = [*SIAMFACE, "centre", "--model", "sface", "--data", str(train), "--out", str(out)]
    t0 = time.perf_counter()
    extra = ["--condition", cond] if cond else []
    r = run_child([*cmd, *extra, "--json", "--no-progress"], log=work / f"{name}.log")
    if r["rc"] not in (0, 1):
        return {"error": f"siamface centre exit {r['rc']}, see {work / name}.log"}
    entry = {"centre": last_json(r["stdout"]), "centre_wall_s": round(time.perf_counter() - t0)}
    if r["rc"] == 1:  # not kept: the user keeps sface, whose figures are arms a and f
        return {**entry, "kept": False}
    # the CCTV copy is degraded on disk; masks are drawn on the aligned faces when scored
    entry["under_condition"] = scorer.score(str(out), seen, None if seen != clean else cond)
    if cond:
        entry["clean"] = scorer.score(str(out), clean)
    return entry


def fit_people_cctv(work: Path, train: Path) -> Path:
    """A CCTV-like copy of every training-side photo (made as the test copy is), for fusions
    fitted on camera-like faces; ``siamface fuse --held-out RUN`` then keeps the people a run
    did not train on. Never a test person."""
    cctv = work / "main" / "train_cctv"
    if not cctv.is_dir():
        cctv_copy(train, cctv)
    return cctv


def fusion_arm(
    scorer,
    work: Path,
    name: str,
    members: list[str],
    fit: Path,
    run: Path | None,
    seen: Path,
    clean: Path,
    reuse: bool = False,
):
    """``siamface fuse MEMBERS --data FIT [--held-out RUN]`` (weights, centres and threshold
    from the CCTV-like copy of the training-side people ``run`` did not train on, or of all of
    them without a run), scored on the CCTV copy and on clean test people."""
    out = work / f"fused_{name}.json"
    cmd = [*SIAMFACE, "fuse", *members, "--data", str(fit), "--out", str(out), "--json"]
    cmd += ["--held-out", str(run)] if run is not None else []
    t0 = time.perf_counter()
    if reuse and out.is_file():  # --reuse: a fusion fitted by an earlier call, as it was
        rec = json.loads(out.read_text())
    else:
        out.unlink(missing_ok=True)
        r = run_child([*cmd, "--no-progress"], log=work / f"{name}.log")
        if r["rc"] != 0:
            return {"error": f"siamface fuse exit {r['rc']}, see {work / name}.log"}
        rec = last_json(r["stdout"])
    entry = {
        "fuse": {
            "weights": {m["model"]: m["weight"] for m in rec["members"]},
            "centred": [m["model"] for m in rec["members"] if "centre" in m],
            "provenance": rec["provenance"],
            "threshold": rec["threshold"],
        },
        "fuse_wall_s": round(time.perf_counter() - t0),
        "under_condition": scorer.score(str(out), seen),
        "clean": scorer.score(str(out), clean),
    }
    return entry


def verdict_agrees(summary: dict, vs_sface: dict) -> dict:
    """Target (c): the main job is never significantly worse than its start on the bench's test
    people, and its own verdict (made on the run's test people) agrees with them: a kept
    fine-tune must gain significantly on the run's select metric here too; a kept start is the
    start, which agrees by construction."""
    verdict = summary.get("verdict") or {}
    kept = verdict.get("kept")
    metrics = vs_sface.get("metrics") or {}
    worse = [k for k, r in metrics.items() if r.get("significant") == "worse"]
    select = verdict.get("select_metric") or summary.get("select_metric")
    gain = metrics.get(select, {})
    agrees = kept != "fine-tuned" or gain.get("significant") == "better"
    return {
        "run_verdict": verdict.get("verdict"),
        "kept": kept,
        "select_metric": select,
        "select_metric_on_bench_test": gain,
        "significantly_worse_on": worse,
        "never_significantly_worse": not worse,
        "verdict_agrees_with_test_people": agrees,
        "met": not worse and agrees,
    }


def deltas(arm: dict, ref: dict) -> dict:
    out = {}
    for k in METRICS:
        a, b = arm.get(k), ref.get(k)
        if a is not None and b is not None:
            out[k] = round(a - b, 5)
    return out


def never_worse(arm: dict, ref: dict) -> bool:
    for k in METRICS:
        a, b = arm.get(k), ref.get(k)
        if a is None or b is None:
            continue
        if (a < b) if HIGHER.get(k, True) else (a > b):
            return False
    return True


def train_job(name: str, work: Path, data: Path, budget: float, args: list[str], seed: int):
    """``siamface train`` with options first and every key=value after them (argparse does
    not collect positionals on both sides of an option)."""
    run = work / f"run_{name}"
    opts = [a for a in args if "=" not in a]
    keys = [a for a in args if "=" in a]
    cmd = [
        *SIAMFACE,
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--no-progress",
        *opts,
        f"run.time_budget_min={budget}",
        f"run.seed={seed}",
        *keys,
    ]
    return name, cmd, run


def summary_of(run: Path) -> dict:
    s = json.loads((run / "summary.json").read_text())
    keep = ("epochs_completed", "steps", "best_epoch", "train_minutes", "stopped", "vs_start")
    return {k: s.get(k) for k in keep if k in s}


def embed_speed(models: list[str], folder: Path, n: int = 128) -> dict:
    """Images/s of each model's network on the same pre-aligned uint8 batches (decode and
    alignment excluded), measured alternately in rounds so load falls on all alike."""
    import numpy as np

    from siamface.embed.load import create_embedder

    opened = {m: create_embedder(m, device="cpu") for m in models}
    rng = np.random.default_rng(0)
    rates: dict[str, list[float]] = {m: [] for m in models}
    for _ in range(3):
        for m, e in opened.items():
            s = e.preprocessing.image_size
            x = rng.integers(0, 255, (n, 3, s, s), dtype=np.uint8)
            e.embed_batch(x[:8])
            t = time.perf_counter()
            for i in range(0, n, 32):
                e.embed_batch(x[i : i + 32])
            rates[m].append(n / (time.perf_counter() - t))
    return {m: round(float(np.median(r)), 1) for m, r in rates.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arms", default="a,b,c,d,e,att40", help="comma-separated arms to run")
    ap.add_argument("--budget-min", type=float, default=20.0, help="training budget per arm")
    ap.add_argument("--att40-budget-min", type=float, default=5.0)
    ap.add_argument(
        "--cctv-budget-min", type=float, default=None, help="arm g (default --budget-min)"
    )
    ap.add_argument(
        "--mask-budget-min", type=float, default=None, help="arm i (default --budget-min)"
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="keep finished training runs found in --work (run_X/summary.json), train the rest",
    )
    ap.add_argument("--g-args", default="", help="extra key=value for arm g (space-separated)")
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--per-fold", type=int, default=300, help="pairs file: pairs per fold")
    ap.add_argument(
        "--pair-draws",
        type=int,
        default=30,
        help="also 10-fold accuracy over this many drawn pairs files (seeds 0..; 0: off)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", help="work directory (default: a new temp dir)")
    ap.add_argument("--sequential", action="store_true", help="train arms one after another")
    ap.add_argument("--c-args", default="", help="extra key=value for arm c (space-separated)")
    ap.add_argument("--d-args", default="", help="extra key=value for arm d (space-separated)")
    args = ap.parse_args()
    arms = set(args.arms.split(","))
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_train_quality_"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SIAMFACE_CACHE", str(work / "cache"))
    data = SHARED / "data"
    res: dict = {"bench": "train_quality", "machine": machine(), "workdir": str(work)}
    res["split"] = split_identities(
        [data / "pins90", data / "celeba_wild"], work / "main", args.test_fraction, args.seed
    )
    test, train = work / "main" / "test", work / "main" / "train"
    pairs = work / "main" / "pairs.txt"
    if pairs.is_file() and args.reuse:
        res["pairs"] = {"reused": str(pairs)}
    else:
        res["pairs"] = make_pairs(test, pairs, args.per_fold)
    try:
        import dlib  # noqa: F401

        has_dlib = True
    except ImportError:
        has_dlib = False
    jobs = []
    if "c" in arms:
        jobs.append(
            train_job(
                "c",
                work,
                train,
                args.budget_min,
                # the README's main job: the guard is att40 (grayscale, another domain)
                ["--config", "finetune", f"run.guard={data / 'att40'}", *args.c_args.split()],
                args.seed,
            )
        )
    if "d" in arms:
        teachers = "sface,dlib" if has_dlib else "sface"
        jobs.append(
            train_job(
                "d",
                work,
                train,
                args.budget_min,
                ["--config", "distill", f"teacher={teachers}", *args.d_args.split()],
                args.seed,
            )
        )
    for n, preset, budget, extra in (
        ("g", "adapt-cctv", args.cctv_budget_min, args.g_args.split()),
        ("i", "adapt-mask", args.mask_budget_min, []),
    ):
        if n in arms:
            b = budget if budget is not None else args.budget_min
            jobs.append(train_job(n, work, train, b, ["--config", preset, *extra], args.seed))
    att = work / "att40"
    if "att40" in arms:
        res["att40_split"] = split_identities([data / "att40"], att, 0.0, args.seed, n_test=20)
        jobs.append(
            train_job(
                "att40",
                work,
                att / "train",
                args.att40_budget_min,
                # 15 training people: 64-image batches of 4 per person would need 16
                ["--config", "finetune", "data.val_identities=5", "data.batch_size=32"],
                args.seed,
            )
        )
    seed_run = None
    if "e" in arms:
        seed_run = [
            sys.executable,
            str(SEED_RECIPE),
            "train",
            "--data",
            str(train),
            "--epochs",
            "1000",
            "--max-seconds",
            str(args.budget_min * 60),
            "--workdir",
            str(work / "seed"),
            "--seed",
            str(args.seed),
        ]
    load0 = os.getloadavg()[1]
    t0 = time.perf_counter()
    results: dict = {}
    todo = [(n, cmd, work / f"{n}_train.log") for n, cmd, _ in jobs]
    if seed_run:
        todo.append(("e", seed_run, work / "e_train.log"))
    if args.reuse:
        done = {n for n, _, _ in todo if (work / f"run_{n}" / "summary.json").is_file()}
        results.update({n: {"rc": 0, "wall_s": None, "peak_rss_mb": None} for n in done})
        todo = [t for t in todo if t[0] not in done]
    if args.sequential:
        for n, cmd, log in todo:
            results[n] = run_child(cmd, log=log)
    else:
        with ThreadPoolExecutor(max(1, len(todo))) as pool:
            fut = {n: pool.submit(run_child, cmd, log) for n, cmd, log in todo}
            results |= {n: f.result() for n, f in fut.items()}
    res["training"] = {
        "mode": "sequential" if args.sequential else "parallel",
        "wall_s": round(time.perf_counter() - t0, 1),
        "loadavg_before_after": [round(load0, 2), round(os.getloadavg()[1], 2)],
    }
    arms_out: dict = {}
    if "c" in arms or "d" in arms or ("a" in arms and not arms & {"f", "g", "h", "i"}):
        arms_out["a_sface_zero_shot"] = evaluate("sface", test, pairs, work / "eval_a")
    if "b" in arms and has_dlib:
        arms_out["b_dlib_zero_shot"] = evaluate("dlib", test, pairs, work / "eval_b")
    elif "b" in arms:
        arms_out["b_dlib_zero_shot"] = {"skipped": "dlib not installed (siamface[dlib])"}
    for n, key in (("c", "c_finetuned_from_sface"), ("d", "d_student_distilled")):
        if n in results:
            r = results[n]
            run = next(run for jn, _, run in jobs if jn == n)
            entry = {"rc": r["rc"], "wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"]}
            if r["rc"] == 0:
                entry["train"] = summary_of(run)
                entry["test"] = evaluate(
                    str(run / "best.safetensors"), test, pairs, work / f"eval_{n}"
                )
            else:
                entry["log"] = str(work / f"{n}_train.log")
            arms_out[key] = entry
    if "e" in results:
        s = seed_result(results["e"]["stdout"])
        entry = {
            "recipe": "article script as written",
            "batches": s.get("batches"),
            "images_per_s": s.get("images_per_s"),
            "rc": s.get("rc"),
        }
        if s.get("checkpoint"):
            ck = seed_checkpoint_to_siamface(Path(s["checkpoint"]), work / "seed.safetensors")
            entry["test"] = evaluate(str(ck), test, pairs, work / "eval_e")
        arms_out["e_article_recipe"] = entry
    ref = arms_out.get("a_sface_zero_shot")
    if ref and "error" not in ref:
        for key, entry in arms_out.items():
            t = entry.get("test", entry) if isinstance(entry, dict) else None
            if key != "a_sface_zero_shot" and t and "auc" in t:
                entry["delta_vs_sface"] = deltas(t, ref)
        c = arms_out.get("c_finetuned_from_sface", {}).get("test")
        if c and "auc" in c:
            res["target_c_never_worse_than_a"] = never_worse(c, ref)
    d = arms_out.get("d_student_distilled", {})
    if d.get("test") and ref and "auc" in d["test"]:
        gap = ref["accuracy_10fold"] - d["test"]["accuracy_10fold"]
        speed = embed_speed(["sface", str(work / "run_d" / "best.safetensors")], test)
        d["embed_images_per_s"] = speed
        vals = list(speed.values())
        d["speedup_vs_teacher"] = round(vals[1] / vals[0], 2)
        res["target_d_within_2_points_and_3x"] = bool(gap <= 0.02 and vals[1] >= 3 * vals[0])
    if "att40" in results:
        r = results["att40"]
        entry = {"rc": r["rc"], "wall_s": r["wall_s"]}
        att_pairs = att / "pairs.txt"
        res["att40_pairs"] = make_pairs(att / "test", att_pairs, 50)
        entry["zero_shot"] = evaluate("sface", att / "test", att_pairs, work / "eval_att_a")
        if r["rc"] == 0:
            entry["train"] = summary_of(work / "run_att40")
            entry["finetuned"] = evaluate(
                str(work / "run_att40" / "best.safetensors"),
                att / "test",
                att_pairs,
                work / "eval_att_c",
            )
            if "auc" in entry["finetuned"] and "auc" in entry["zero_shot"]:
                entry["delta"] = deltas(entry["finetuned"], entry["zero_shot"])
                entry["never_worse"] = never_worse(entry["finetuned"], entry["zero_shot"])
        else:
            entry["log"] = str(work / "att40_train.log")
        arms_out["att40"] = entry
    scorer = None
    if arms & {"f", "g", "h", "i", "j", "k", "l", "m", "n"}:
        from _domain_eval import DomainScorer

        scorer = DomainScorer(
            pairs,
            seed=args.seed,
            cache=work / "embeddings",
            draws=args.pair_draws,
            per_fold=args.per_fold,
        )
        arms_out["a_sface_clean_intervals"] = scorer.score("sface", test)
    cctv = work / "main" / "test_cctv"  # the CCTV-like copy of the test photos (f, g, k, m, n)
    if arms & {"f", "g", "k", "m", "n"} and not cctv.is_dir():
        res["cctv_copy_images"] = cctv_copy(test, cctv)
    if arms & {"f", "g"}:
        run_g = work / "run_g" if results.get("g", {}).get("rc") == 0 else None
        dom = domain_arms(scorer, "g_adapt_cctv", "f_sface_cctv", run_g, cctv, test, None)
        arms_out.update(dom)
        res["target_g_vs_f"] = domain_targets(dom, "g_adapt_cctv", 0.05, 0.15)
    if arms & {"h", "i"}:
        run_i = work / "run_i" if results.get("i", {}).get("rc") == 0 else None
        dom = domain_arms(scorer, "i_adapt_mask", "h_sface_mask", run_i, test, test, "masked")
        arms_out.update(dom)
        res["target_i_vs_h"] = domain_targets(dom, "i_adapt_mask", 0.03, None)
    if "j" in arms:
        arms_out["j_sface_centred"] = centre_arm(scorer, work, train, "j", test, test)
    if "k" in arms:
        k = centre_arm(scorer, work, train, "k", cctv, test, "cctv")
        arms_out["k_sface_centred_cctv"] = k
        if "under_condition" in k:
            res["k_vs_f"] = domain_targets({"k": k}, "k", 0.05, 0.15)
    if "l" in arms:
        m = centre_arm(scorer, work, train, "l", test, test, "masked")
        arms_out["l_sface_centred_masked"] = m
        if "under_condition" in m:
            res["l_vs_h"] = domain_targets({"l": m}, "l", 0.03, None)
    for n, key in (("m", "m_sface_dlib_fused_cctv"), ("n", "n_adapt_cctv_dlib_fused")):
        if n not in arms:
            continue
        run_g = work / "run_g" if (work / "run_g" / "best.safetensors").is_file() else None
        if not has_dlib:
            arms_out[key] = {"skipped": "dlib not installed (siamface[dlib])"}
        elif n == "n" and run_g is None:
            arms_out[key] = {"skipped": "needs arm g's run (run_g/best.safetensors)"}
        else:
            first = "sface" if n == "m" else str(run_g / "best.safetensors")
            fit = fit_people_cctv(work, train)
            arms_out[key] = fusion_arm(
                scorer, work, n, [first, "dlib"], fit, run_g, cctv, test, args.reuse
            )
            if n == "m":  # the fusion shipped with siamface, fitted on clean photos
                arms_out[key]["shipped_sface+dlib_under_condition"] = scorer.score(
                    "sface+dlib", cctv
                )
            if "under_condition" in arms_out[key]:
                res[f"{n}_vs_f"] = domain_targets({n: arms_out[key]}, n, 0.05, 0.15)
    for n in ("g", "i"):
        if n in results and results[n]["rc"] != 0:
            arms_out[f"{n}_train_failed"] = {
                "rc": results[n]["rc"],
                "log": str(work / f"{n}_train.log"),
            }
    if "c" in arms and "c" in results and results["c"]["rc"] == 0:
        c_entry = arms_out["c_finetuned_from_sface"]
        draws = ["--kfold-draws", str(args.pair_draws), "--per-fold", str(args.per_fold)]
        c_entry["vs_sface"] = compare_eval(
            str(work / "run_c" / "best.safetensors"),
            test,
            work / "c_c",
            draws if args.pair_draws else None,
        )
        res["target_c"] = verdict_agrees(
            json.loads((work / "run_c" / "summary.json").read_text()), c_entry["vs_sface"]
        )
    res["arms"] = arms_out
    tars = []
    if (
        "c_finetuned_from_sface" in arms_out
        and "delta_vs_sface" in arms_out["c_finetuned_from_sface"]
    ):
        tars.append(arms_out["c_finetuned_from_sface"]["delta_vs_sface"].get("tar_at_far_1e-3", 0))
    if "att40" in arms_out and "delta" in arms_out["att40"]:
        tars.append(arms_out["att40"]["delta"].get("tar_at_far_1e-3", 0))
    if tars:
        res["target_c_beats_a_on_tar_1e-3_somewhere"] = any(t > 0 for t in tars)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
