"""Load test of ``siamface serve``: N concurrent clients posting /verify on loopback.

Each configuration starts a real server process (``siamface serve --port 0``), warms it up,
then runs ``--clients`` closed-loop clients (each sends its next request as soon as the last
one is answered) for ``--seconds``, and reports throughput, latency percentiles, errors and
the server's own batching counters. Configurations, all with the same model and images:

* ``onnx_batching_off``: the exported .onnx model, one request per model call, one call at a
  time (``--batching off``, what ``auto`` picks on CPU): the baseline for the ratios;
* ``onnx_batching_on`` : the same model with micro-batching and two model calls in flight
  (``--batching on``, what ``auto`` picks on a GPU);
* ``torch_batching_off``: the .safetensors checkpoint run by PyTorch (``--skip-torch`` to omit).

Model: ``--model CKPT`` (a .safetensors or run folder; exported to ONNX here), or by default
a randomly initialised model of the default size (tf_efficientnet_lite0, 112 px, 512-d) --
weights do not change the cost. Images: face crops from the sample data when present, else
synthetic JPEGs. Clients and server share the machine; on a shared 2-core box absolute
numbers are noisy, ratios within one run are what matter. ``model_busy_fraction`` is the
sum of model-call durations over the wall time (above 1 when two calls overlap).

The machine's limit: before the timed phase, ``--serial`` requests are sent one at a time and
the CPU time they cost is measured (the server process's, from /proc, plus the load
generator's own): ``limit_rps = usable cores / CPU seconds per request`` is the most this
machine could answer if every core did nothing else. ``of_limit`` is the measured
throughput over that limit (target: >= 0.8 at 8 clients with 0 errors). The ``*_batch``
configurations send ``--batch-pairs`` pairs per ``POST /verify/batch`` request and count
pairs. Prints one JSON document.

    .venv/bin/python bench/serve_load.py                       # ~2 min
    .venv/bin/python bench/serve_load.py --clients 8 --seconds 20 --skip-torch
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SIAMFACE_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_BACKBONE, DEFAULT_SIZE, DEFAULT_DIM = "tf_efficientnet_lite0", 112, 512


def default_model(folder: Path) -> Path:
    """A random-init checkpoint of the default size (cost does not depend on the weights)."""
    import torch

    from siamface.model.checkpoint import Checkpoint, save_checkpoint
    from siamface.model.network import ModelConfig, build_model
    from siamface.tensors.transforms import Preprocessing

    torch.manual_seed(0)
    cfg = ModelConfig(backbone=DEFAULT_BACKBONE, embedding_size=DEFAULT_DIM)
    ckpt = Checkpoint(
        cfg,
        Preprocessing(image_size=DEFAULT_SIZE),
        build_model(cfg).state_dict(),
        threshold={"value": 0.5, "target_far": 1e-3, "source": "bench (random init)"},
    )
    return save_checkpoint(ckpt, folder / "default.safetensors")


def bench_images(n: int = 16) -> tuple[list[bytes], str]:
    """JPEG bytes of face crops (sample data) or synthetic images of a similar size."""
    pins = SHARED / "pins90"
    if pins.is_dir():
        files = sorted(pins.rglob("*.jpg"))
        files = files[:: max(1, len(files) // n)][:n]  # spread over identities
        if len(files) >= 2:
            return [f.read_bytes() for f in files], f"{len(files)} face crops from {pins}"
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray((rng.random((160, 140, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out, f"{n} synthetic 140x160 JPEGs"


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def start_server(model: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "siamface.cli.main", "serve", "--model", str(model),
           "--port", "0", "--log-level", "warning", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if " on http://" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line}{proc.stderr.read()}")
    url = line.split(" on ")[1].split()[0]
    import httpx

    for _ in range(600):  # the port is bound before uvicorn listens: wait (<= 60 s) until it does
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server at {url} did not answer /health within 60 s")


async def run_load(
    url: str,
    images: list[bytes],
    clients: int,
    seconds: float,
    server_pid: int,
    serial: int = 30,
    batch_pairs: int = 0,
) -> dict:
    import base64

    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    b64 = [base64.b64encode(x).decode() for x in images]
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as ac:

        async def one(i: int) -> None:
            t0 = time.perf_counter()
            try:
                if batch_pairs:
                    ks = [i * batch_pairs + k for k in range(batch_pairs)]
                    body = {
                        "image1": [b64[k % len(b64)] for k in ks],
                        "image2": [b64[(k * 7 + 3) % len(b64)] for k in ks],
                    }
                    r = await ac.post("/verify/batch", json=body)
                    ok = r.status_code == 200 and all(
                        "error" not in x or x["error"] is None for x in r.json()["results"]
                    )
                else:
                    a, b = images[i % len(images)], images[(i * 7 + 3) % len(images)]
                    files = {"image1": ("a.jpg", a), "image2": ("b.jpg", b)}
                    r = await ac.post("/verify", files=files)
                    ok = r.status_code == 200
                key = str(r.status_code)
            except httpx.HTTPError as err:
                ok, key = False, type(err).__name__
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors[key] = errors.get(key, 0) + 1

        for i in range(2 * clients):  # warm-up (not counted)
            await one(i)
        # The machine's limit: CPU seconds one request costs, measured one at a time.
        s_cpu, c_cpu, t_serial = _proc_cpu(server_pid), time.process_time(), time.perf_counter()
        for i in range(serial):
            await one(i)
        serial_cpu = {
            "server": (_proc_cpu(server_pid) - s_cpu) / serial,
            "client": (time.process_time() - c_cpu) / serial,
            "latency": (time.perf_counter() - t_serial) / serial,
        }
        latencies.clear()
        errors.clear()
        before = (await ac.get("/health")).json()["batching"]
        s_cpu0, c_cpu0 = _proc_cpu(server_pid), time.process_time()

        async def client(c: int, deadline: float) -> None:
            i = c
            while time.perf_counter() < deadline:
                await one(i)
                i += clients

        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, t0 + seconds) for c in range(clients)))
        wall = time.perf_counter() - t0
        load_cpu = {
            "server": _proc_cpu(server_pid) - s_cpu0,
            "client": time.process_time() - c_cpu0,
        }
        after = (await ac.get("/health")).json()["batching"]
    counted = ("batches", "requests", "images", "model_busy_seconds")
    batching = {k: after[k] - before[k] for k in counted}  # the timed phase only
    batching["max_batch"] = after["max_batch"]
    batching["largest_batch_images"] = after["largest_batch_images"]
    return {
        "latencies": latencies,
        "errors": errors,
        "seconds": wall,
        "batching": batching,
        "serial_cpu": serial_cpu,
        "load_cpu": load_cpu,
        "pairs_per_request": batch_pairs or 1,
    }


def summarise(runs: list[dict]) -> dict:
    """Merge the rounds of one configuration into throughput and latency percentiles."""
    lat = [x for r in runs for x in r["latencies"]]
    errors: dict[str, int] = {}
    for r in runs:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    wall = sum(r["seconds"] for r in runs)
    ms = np.array(lat) * 1000

    def pct(q: float) -> float | None:
        return round(float(np.percentile(ms, q)), 1) if len(ms) else None

    batching = [r["batching"] for r in runs]
    images = sum(b["images"] for b in batching)
    n_batches = sum(b["batches"] for b in batching)
    per = runs[0]["pairs_per_request"]
    cores = usable_cores()
    cpu_req = float(
        np.median([r["serial_cpu"]["server"] + r["serial_cpu"]["client"] for r in runs])
    )
    server_req = float(np.median([r["serial_cpu"]["server"] for r in runs]))
    limit_pairs = cores * per / cpu_req if cpu_req else None
    pairs_rps = len(lat) * per / wall if wall else None
    load_cpu = sum(r["load_cpu"]["server"] + r["load_cpu"]["client"] for r in runs)
    return {
        "pairs_per_request": per,
        "pairs_per_s": round(pairs_rps, 1) if pairs_rps else None,
        "machine_limit": {
            "cores": cores,
            "cpu_ms_per_request": round(1000 * cpu_req, 2),
            "of_which_server_ms": round(1000 * server_req, 2),
            "serial_latency_ms": round(
                1000 * float(np.median([r["serial_cpu"]["latency"] for r in runs])), 1
            ),
            "limit_pairs_per_s": round(limit_pairs, 1) if limit_pairs else None,
            "of_limit": _ratio(pairs_rps, limit_pairs),
            "cpu_used_of_cores": round(load_cpu / (wall * cores), 2) if wall else None,
        },
        "requests": len(lat),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "seconds": round(wall, 2),
        "throughput_rps": round(len(lat) / wall, 1) if wall else None,
        "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": pct(100)},
        "server_batching": {
            "max_batch": batching[0]["max_batch"],
            "mean_batch_images": round(images / n_batches, 2) if n_batches else None,
            "largest_batch_images": max(b["largest_batch_images"] for b in batching),
            "model_busy_fraction": round(sum(b["model_busy_seconds"] for b in batching) / wall, 2)
            if wall
            else None,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint or run folder (default: random default-size)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0, help="per configuration and round")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    ap.add_argument("--skip-torch", action="store_true", help="omit the PyTorch configuration")
    ap.add_argument("--serial", type=int, default=30, help="requests timed one at a time")
    ap.add_argument("--batch-pairs", type=int, default=8, help="pairs per /verify/batch call")
    ap.add_argument("--skip-batch", action="store_true", help="omit the /verify/batch configs")
    args = ap.parse_args()

    from siamface.export.onnx_export import export_onnx
    from siamface.model.checkpoint import read_metadata

    load_start = [round(x, 2) for x in os.getloadavg()]

    with tempfile.TemporaryDirectory(prefix="siamface-bench-") as tmp:
        ckpt = Path(args.model) if args.model else default_model(Path(tmp))
        meta = read_metadata(ckpt if ckpt.is_file() else ckpt / "best.safetensors")
        onnx_path = Path(tmp) / "model.onnx"
        export = export_onnx(ckpt, onnx_path)
        images, source = bench_images()
        configs = [
            ("onnx_batching_off", onnx_path, ["--batching", "off"], 0),
            ("onnx_batching_on", onnx_path, ["--batching", "on"], 0),
        ]
        if not args.skip_batch:
            configs.append(
                ("onnx_batching_off_batch", onnx_path, ["--batching", "off"], args.batch_pairs)
            )
        if not args.skip_torch:
            configs.append(("torch_batching_off", ckpt, ["--batching", "off"], 0))
        runs: dict[str, list[dict]] = {name: [] for name, _, _, _ in configs}
        for round_ in range(args.rounds):  # interleaved, so drifting load hits all alike
            for name, model, extra, pairs in configs:
                proc, url = start_server(model, extra)
                try:
                    run = asyncio.run(
                        run_load(
                            url, images, args.clients, args.seconds, proc.pid, args.serial, pairs
                        )
                    )
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
                runs[name].append(run)
                print(
                    f"round {round_ + 1} {name}: {len(run['latencies'])} requests",
                    file=sys.stderr,
                    flush=True,
                )
        results = {name: summarise(r) for name, r in runs.items()}

    base, batched = results["onnx_batching_off"], results["onnx_batching_on"]
    p99 = base["latency_ms"]["p99"]
    out = {
        "bench": "serve_load",
        "endpoint": "POST /verify (two JPEG uploads); *_batch: POST /verify/batch (base64)",
        "model": {
            "backbone": meta["model"]["backbone"],
            "image_size": meta["preprocessing"]["image_size"],
            "embedding_size": meta["model"]["embedding_size"],
            "onnx_exporter": export.exporter,
        },
        "images": source,
        "clients": args.clients,
        "seconds_per_config": args.seconds * args.rounds,
        "rounds": args.rounds,
        "machine": {
            "cpus": os.cpu_count(),
            "usable_cores": usable_cores(),
            "python": platform.python_version(),
            # other jobs on the machine take cores the limit counts as ours
            "loadavg_start": load_start,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "note": "clients and server share the machine (possibly with other jobs): absolute "
        "numbers are noisy, ratios within this run are what matter",
        "results": results,
        "ratios": {
            "batching_on_vs_off_throughput": _ratio(
                batched["throughput_rps"], base["throughput_rps"]
            ),
            "batching_on_vs_off_p99": _ratio(batched["latency_ms"]["p99"], p99),
        },
        "target": {
            "config": "onnx_batching_off (the CPU default)",
            "of_machine_limit_at_least": 0.8,
            "clients": args.clients,
            "zero_errors": True,
            "of_limit": base["machine_limit"]["of_limit"],
            "met": bool(
                base["errors"] == 0
                and base["machine_limit"]["of_limit"] is not None
                and base["machine_limit"]["of_limit"] >= 0.8
            ),
        },
    }
    if "onnx_batching_off_batch" in results:
        b = results["onnx_batching_off_batch"]
        out["ratios"]["batch_endpoint_vs_single_pairs_per_s"] = _ratio(
            b["pairs_per_s"], base["pairs_per_s"]
        )
    if "torch_batching_off" in results:
        t = results["torch_batching_off"]
        out["ratios"]["onnx_vs_torch_throughput"] = _ratio(
            base["throughput_rps"], t["throughput_rps"]
        )
    print(json.dumps(out, indent=2))


def _ratio(a, b):
    return round(a / b, 2) if a is not None and b else None


if __name__ == "__main__":
    main()
