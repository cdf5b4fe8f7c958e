"""Benchmark face detection + alignment on raw photos, and what alignment buys verification.

Prints one JSON document:

* ``detection``: for every registered detector whose package is installed, on the raw photos
  of ``--data`` (default: the celeba_wild sample): fraction of photos with a face, with
  several faces, and milliseconds per photo (one process, one thread, decode excluded).
  Ratios are against the default detector measured in the same run.
* ``prepare``: ``siamface prepare`` on the whole folder with all cores (wall time, counts).
* ``verification``: the same training recipe and budget, once on the raw photos and once on
  their aligned crops, with the same held-out identities (``val_identities=0.2 seed=0``);
  AUC, EER and TAR@FAR=1e-3 on those unseen people, read from each run's summary.json.
  Both arms see exactly the same photos: the raw arm uses links to the photos in which
  ``prepare`` found a face, so the only difference is alignment.

The machine may be shared: absolute times are noisy, ratios within one run are what count,
and the JSON records the budget used. Example::

    .venv/bin/python bench/align.py --budget-min 5          # ~15 min on 2 cores
    .venv/bin/python bench/align.py --skip-train --detect-limit 300   # detection only, ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "celeba_wild"


def bench_detection(paths: list[Path], default: str) -> dict:
    """Found / several-faces fractions and ms per photo for each installed detector."""
    import torch

    from siamface.faces.detect import detect_faces, detector_infos, get_detector, is_available
    from siamface.folders.images import ImageLoadError, load_rgb

    torch.set_num_threads(1)  # torch-based backends: same single thread as the others
    images = []
    for p in paths:
        try:
            images.append(load_rgb(p))
        except ImageLoadError:
            continue
    out: dict = {"photos": len(images)}
    for info in detector_infos():
        if not is_available(info.name):
            out[info.name] = {"installed": False, "install": info.install}
            continue
        try:
            det = get_detector(info.name)
            detect_faces(images[0], det)  # load weights / warm up outside the timing
        except Exception as err:  # noqa: BLE001 - report a broken backend, keep benchmarking
            out[info.name] = {"installed": True, "error": str(err)}
            continue
        found = several = 0
        t0 = time.perf_counter()
        for img in images:
            faces = detect_faces(img, det)
            found += bool(faces)
            several += len([f for f in faces if f.size >= 0.5 * faces[0].size]) > 1
        seconds = time.perf_counter() - t0
        out[info.name] = {
            "license": info.license,
            "found_fraction": round(found / len(images), 4),
            "several_faces_fraction": round(several / len(images), 4),
            "ms_per_image": round(1000 * seconds / len(images), 2),
        }
    base = out.get(default, {}).get("ms_per_image")
    for info in detector_infos():
        r = out[info.name]
        if base and r.get("ms_per_image"):
            r["time_ratio_vs_" + default] = round(r["ms_per_image"] / base, 2)
    return out


def link_subset(report: dict, raw: Path, dst: Path) -> int:
    """Mirror RAW/<id>/<photo> for the photos prepare aligned, as symlinks (no copies)."""
    n = 0
    for rec in report["images"]:
        if rec["status"] != "ok":
            continue
        link = dst / rec["src"]
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to((raw / rec["src"]).resolve())
        n += 1
    return n


def train_arm(
    data: Path, run_dir: Path, budget_min: float, epochs: int | None, extra: list[str]
) -> dict:
    """One ``siamface train`` run; returns the held-out metrics of its best epoch."""
    # A time budget stops both arms (epochs=1000), unless a fixed epoch count is asked for:
    # on a shared machine equal epochs are the fairer budget, equal minutes the cheaper one.
    budget = [f"epochs={epochs}"] if epochs else [f"time_budget_min={budget_min}", "epochs=1000"]
    cmd = [
        sys.executable,
        "-m",
        "siamface.cli.main",
        "train",
        "--data",
        str(data),
        "--out",
        str(run_dir),
        "--no-progress",
        *budget,
        "val_identities=0.2",
        "seed=0",
        *extra,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-5:], "command": " ".join(cmd)}
    summary = json.loads((run_dir / "summary.json").read_text())
    best = summary.get("best") or {}
    return {
        "auc": best.get("val_auc"),
        "tar_at_far_1e-3": best.get("val_tar_at_far_1e-3"),
        "eer": best.get("val_eer"),
        "accuracy": best.get("val_accuracy"),
        "best_epoch": summary.get("best_epoch"),
        "epochs_completed": summary.get("epochs_completed"),
        "steps": summary.get("steps"),
        "train_minutes": summary.get("train_minutes"),
        "wall_seconds": round(wall, 1),
        "run_dir": str(run_dir),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="raw identity folders")
    ap.add_argument("--budget-min", type=float, default=5.0, help="training minutes per arm")
    ap.add_argument(
        "--epochs", type=int, help="train each arm this many epochs instead of --budget-min"
    )
    ap.add_argument("--detect-limit", type=int, help="detection bench on every k-th photo")
    ap.add_argument("--skip-detect", action="store_true", help="no per-detector timing")
    ap.add_argument("--skip-train", action="store_true", help="detection + prepare only")
    ap.add_argument("--work", type=Path, help="keep prepared data and runs here (default: tmp)")
    ap.add_argument(
        "--train-arg", action="append", default=[], help="extra key=value for both arms"
    )
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"bench/align.py: data folder not found: {args.data}", file=sys.stderr)
        return 2

    from siamface.faces.detect import DEFAULT_DETECTOR
    from siamface.faces.prepare import PrepareOptions, prepare_folders
    from siamface.folders.identities import scan_identity_folders

    result: dict = {
        "bench": "align",
        "data": str(args.data),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "note": "shared machine: absolute times are noisy; compare ratios within this run",
        },
    }
    paths = [s.path for s in scan_identity_folders([args.data]).samples]
    if args.detect_limit and args.detect_limit < len(paths):
        step = len(paths) / args.detect_limit
        paths = [paths[int(i * step)] for i in range(args.detect_limit)]
    if not args.skip_detect:
        result["detection"] = bench_detection(paths, DEFAULT_DETECTOR)
        print(json.dumps({"detection": result["detection"]}), file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="siamface-bench-align-") as tmp:
        work = args.work or Path(tmp)
        aligned = work / "aligned"
        t0 = time.perf_counter()
        report = prepare_folders(args.data, aligned, PrepareOptions(), progress=False)
        c = report["counts"]
        result["prepare"] = {
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "workers": report["workers"],
            "ms_per_image_wall": round(1000 * report["seconds"] / c["processed_now"], 2)
            if c["processed_now"]
            else "n/a (resumed: nothing left to do)",
            "images": c["images"],
            "found_fraction": round(c["ok"] / c["images"], 4),
            "no_face": c["no_face"],
            "unreadable": c["unreadable"],
            "several_faces": c["several_faces"],
            "low_score": c["low_score"],
            "small_face": c["small_face"],
            "settings": report["settings"],
        }
        print(json.dumps({"prepare": result["prepare"]}), file=sys.stderr)
        if not args.skip_train:
            raw_subset = work / "raw_subset"
            n = link_subset(report, args.data, raw_subset)
            arms = {}
            for name, data in (("raw", raw_subset), ("aligned", aligned)):
                run_dir = (
                    work / f"run_{name}_{args.epochs}ep" if args.epochs else work / f"run_{name}"
                )
                if run_dir.exists():
                    shutil.rmtree(run_dir)  # the bench's own run from an earlier invocation
                arms[name] = train_arm(data, run_dir, args.budget_min, args.epochs, args.train_arg)
                print(json.dumps({name: arms[name]}), file=sys.stderr)
            ver: dict = {
                "budget_per_arm": f"{args.epochs} epochs"
                if args.epochs
                else f"{args.budget_min} min",
                "recipe": "siamface train defaults + val_identities=0.2 seed=0 "
                + " ".join(args.train_arg),
                "photos_per_arm": n,
                **arms,
            }
            r, a = arms["raw"], arms["aligned"]
            if r.get("auc") is not None and a.get("auc") is not None:
                ver["auc_gain"] = round(a["auc"] - r["auc"], 4)
                if r.get("tar_at_far_1e-3") and a.get("tar_at_far_1e-3") is not None:
                    ver["tar_at_far_1e-3_ratio"] = round(
                        a["tar_at_far_1e-3"] / r["tar_at_far_1e-3"], 2
                    )
            result["verification"] = ver
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
