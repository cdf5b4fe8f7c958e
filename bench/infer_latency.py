"""Verification latency, PyTorch checkpoint vs exported ONNX model (onnxruntime).

* **cold start**: wall time from launching ``siamface verify --model M a.jpg b.jpg --json``
  to its verdict on stdout (interpreter start, imports, model load, two decodes, one model
  call), median of ``--cold-runs`` runs per backend. Also records whether the ONNX path
  imported torch at all (it should not).
* **warm**: in one process with the model loaded, per pair: the model call alone (two
  preprocessed faces) and the whole pair (decode two files, resize, embed, cosine);
  median and p90 of ``--warm-runs`` pairs after a warm-up. Backends at their default thread
  counts (all cores), and at one thread each.

Model: ``--model CKPT`` or a random-init model of the default size (tf_efficientnet_lite0,
112 px, 512-d); images: two face crops from the sample data, else synthetic JPEGs. On a
shared machine absolute times are noisy; the torch/onnx ratios from the same run are what
matter. Prints one JSON document.

    .venv/bin/python bench/infer_latency.py            # ~1-2 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import bench_images, default_model  # noqa: E402


def cold_start(model: Path, a: Path, b: Path, runs: int) -> dict:
    """Median seconds from process start to the verdict's first byte on stdout."""
    code = (
        "import sys; from siamface.cli.main import main; rc = main(sys.argv[1:]); "
        "print('TORCH_IMPORTED', 'torch' in sys.modules, file=sys.stderr); sys.exit(rc)"
    )
    cmd = [sys.executable, "-c", code, "verify", "--model", str(model), str(a), str(b), "--json"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    times, torch_imported, verdict = [], None, None
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        first = proc.stdout.read(1)
        times.append(time.perf_counter() - t0)
        rest = proc.stdout.read()
        err = proc.stderr.read().decode()
        proc.wait()
        if proc.returncode not in (0, 1) or not first:
            raise SystemExit(f"verify failed ({proc.returncode}): {err}")
        torch_imported = "TORCH_IMPORTED True" in err
        verdict = json.loads(first + rest)
    return {
        "median_s": round(float(np.median(times)), 3),
        "runs_s": [round(t, 3) for t in times],
        "torch_imported": torch_imported,
        "similarity": round(float(verdict["similarity"]), 6),
    }


def warm(embedder, a: Path, b: Path, runs: int) -> dict:
    from siamface.folders.images import load_rgb

    def pair() -> float:
        faces = np.stack([embedder.face_array(load_rgb(p)).transpose(2, 0, 1) for p in (a, b)])
        e = embedder.embed_batch(faces)
        return float(e[0] @ e[1])

    faces = np.stack([embedder.face_array(load_rgb(p)).transpose(2, 0, 1) for p in (a, b)])
    out = {}
    for name, fn in (("model_only", lambda: embedder.embed_batch(faces)), ("full_pair", pair)):
        for _ in range(5):
            fn()
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        ms = np.array(ts) * 1000
        out[name] = {
            "median_ms": round(float(np.median(ms)), 2),
            "p90_ms": round(float(np.percentile(ms, 90)), 2),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint or run folder (default: random default-size)")
    ap.add_argument("--cold-runs", type=int, default=3)
    ap.add_argument("--warm-runs", type=int, default=50)
    args = ap.parse_args()

    from siamface.embed import create_embedder
    from siamface.export.onnx_export import export_onnx

    with tempfile.TemporaryDirectory(prefix="siamface-bench-") as tmp:
        tmp = Path(tmp)
        ckpt = Path(args.model) if args.model else default_model(tmp)
        onnx_path = tmp / "model.onnx"
        export = export_onnx(ckpt, onnx_path)
        data, source = bench_images(2)
        a, b = tmp / "a.jpg", tmp / "b.jpg"
        a.write_bytes(data[0])
        b.write_bytes(data[1])

        cold = {
            "torch": cold_start(ckpt, a, b, args.cold_runs),
            "onnx": cold_start(onnx_path, a, b, args.cold_runs),
        }
        warm_res = {}
        for threads in (None, 1):
            tag = "default_threads" if threads is None else "1_thread"
            warm_res[f"onnx_{tag}"] = warm(
                create_embedder(onnx_path, threads=threads), a, b, args.warm_runs
            )
            warm_res[f"torch_{tag}"] = warm(
                create_embedder(ckpt, device="cpu", threads=threads), a, b, args.warm_runs
            )

    def r(x, y):
        return round(x / y, 2) if y else None

    out = {
        "bench": "infer_latency",
        "model": {
            "checkpoint": str(args.model or "random-init tf_efficientnet_lite0 112px 512-d"),
            "onnx_exporter": export.exporter,
            "parity_max_abs_diff": export.parity["max_abs_diff"],
        },
        "images": source,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "note": "shared machine: absolute times are noisy; compare the ratios",
        "cold_start": cold,
        "warm_per_pair": warm_res,
        "ratios_torch_over_onnx": {
            "cold_start": r(cold["torch"]["median_s"], cold["onnx"]["median_s"]),
            "warm_full_pair_default_threads": r(
                warm_res["torch_default_threads"]["full_pair"]["median_ms"],
                warm_res["onnx_default_threads"]["full_pair"]["median_ms"],
            ),
            "warm_full_pair_1_thread": r(
                warm_res["torch_1_thread"]["full_pair"]["median_ms"],
                warm_res["onnx_1_thread"]["full_pair"]["median_ms"],
            ),
        },
        "same_verdict": abs(cold["torch"]["similarity"] - cold["onnx"]["similarity"]) < 1e-4,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
