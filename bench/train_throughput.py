"""Training throughput: siamface vs the article's script vs the backbone's own compute limit.

All measured in this run, on the same data, backbone, image size and batch size, in several
short rounds: every round runs every arm once (in a rotated order), so load from other users
of a shared machine falls on all arms alike. Reported per arm: the median img/s over rounds and
its spread (min, max); per comparison: the ratio within each round and its median and range.

Arms:

* ``seed``: the article's training script, run as written by ../shared/tools/seed_recipe.py.
* ``siamface``: ``siamface train`` at the article's settings (``--config article`` minus the
  hub weights), with its CPU defaults (fp32, channels-last, pixels in RAM, a loader worker,
  the heap kept between steps).
* ``siamface_heap_released``: the same with ``keep_heap=false`` (glibc's default allocator
  behaviour), to show what keeping the heap is worth.
* ``siamface_bf16``: the same with ``precision=bf16`` (autocast).
* ``siamface_compile``: the same with ``compile=true`` (torch.compile; it gets
  ``--compile-allowance`` seconds on top of the time budget: compiling tf_efficientnetv2_b0's
  training step took 2-3 min on 2 cores, all in the first step, outside the steady img/s).
* ``limit_eager`` / ``limit_channels_last``: forward + backward + AdamW on random tensors, no
  data loading: the ceiling of an eager PyTorch loop in either memory layout, with glibc's
  default allocator. ``limit_channels_last_heap_kept``: the same loop inside
  :func:`siamface.system.heap_kept` (what ``keep_heap=true`` does in training), which shows how
  much of siamface's lead comes from not faulting the activation buffers in on every step.

siamface's img/s is its steady rate (the epoch's images/s after the first 3 steps); the
article's is its images/s excluding the first batch. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import SEED_RECIPE, SHARED, SIAMFACE, last_json, machine, run_child, seed_result

from siamface.system import heap_kept

ARTICLE = [
    "pretrained=none",  # the seed recipe runs offline with pretrained=False too
    "val_identities=0",
    "epochs=1",
]
#: (name, channels-last, heap kept) of the compute-limit loops
LIMITS = [
    ("limit_eager", False, False),
    ("limit_channels_last", True, False),
    ("limit_channels_last_heap_kept", True, True),
]
ARMS = {
    "siamface": [],
    "siamface_heap_released": ["keep_heap=false"],
    "siamface_bf16": ["precision=bf16"],
    "siamface_compile": ["compile=true"],
}


def compute_limit(
    backbone: str, size: int, batch: int, seconds: float, channels_last: bool, keep_heap: bool
):
    """Median img/s of forward+backward+step on random tensors (after 2 warm-up steps)."""
    with heap_kept(keep_heap):
        return _limit_loop(backbone, size, batch, seconds, channels_last)


def _limit_loop(backbone: str, size: int, batch: int, seconds: float, channels_last: bool):
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(backbone, pretrained=False, num_classes=0)
    head = torch.nn.Linear(model.num_features, 512)
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1e-4)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while len(times) < 4 or time.perf_counter() < t_end:
        t = time.perf_counter()
        loss = torch.nn.functional.normalize(head(model(x)), dim=1).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return round(batch / statistics.median(times[2:]), 2)


def siamface_run(args, overrides: list[str], seconds: float, work: Path, name: str) -> dict:
    out = work / name
    cmd = [
        *SIAMFACE,
        "train",
        "--config",
        "article",
        "--data",
        args.data,
        "--out",
        str(out),
        "--no-progress",
        "--json",
        *ARTICLE,
        f"backbone={args.backbone}",
        f"image_size={args.image_size}",
        f"batch_size={args.batch_size}",
        f"time_budget_min={seconds / 60:.4f}",
        *overrides,
    ]
    r = run_child(cmd, log=work / f"{name}.log")
    if r["rc"] != 0:
        return {"error": f"siamface train failed (rc {r['rc']}), see {work / name}.log"}
    hist = json.loads((out / "history.json").read_text())[-1]
    summary = last_json(r["stdout"])
    steady = hist.get("images_per_s_steady") or hist["images_per_s"]
    return {
        "images_per_s": round(steady, 2),
        "images_per_s_incl_warmup": round(hist["images_per_s"], 2),
        "steps": summary["steps"],
        "peak_rss_mb": r["peak_rss_mb"],
        "process_wall_s": r["wall_s"],
    }


def seed_run(args, seconds: float, work: Path, name: str) -> dict:
    r = run_child(
        [
            sys.executable,
            str(SEED_RECIPE),
            "train",
            "--data",
            args.data,
            "--epochs",
            "1",
            "--max-seconds",
            str(seconds),
            "--workdir",
            str(work / name),
            "--seed",
            "0",
        ],
        log=work / f"{name}.log",
    )
    s = seed_result(r["stdout"])
    ips = s.get("images_per_s_excl_first_batch") or s.get("images_per_s")
    return {"images_per_s": ips, "peak_rss_mb": s.get("peak_rss_mb")}


def spread(values: list[float]) -> dict:
    values = [v for v in values if v]
    if not values:
        return {}
    med = statistics.median(values)
    return {
        "median": round(med, 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "spread_pct": round(100 * (max(values) - min(values)) / med, 1),
        "values": [round(v, 3) for v in values],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(SHARED / "data" / "pins90"))
    ap.add_argument("--backbone", default="tf_efficientnetv2_b0", help="the article's backbone")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60, help="training time per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--compile-allowance",
        type=float,
        default=300,
        help="extra seconds for the compile arm's first step (torch.compile)",
    )
    ap.add_argument(
        "--arms", default="seed,siamface,siamface_bf16,siamface_compile,limits", help="subset"
    )
    args = ap.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    work = Path(tempfile.mkdtemp(prefix="bench_train_tp_"))
    res: dict = {"bench": "train_throughput", "machine": machine(), "workdir": str(work)}
    res["setting"] = {
        "data": args.data,
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "seconds_per_measurement": args.seconds,
        "rounds": args.rounds,
        "arms": arms,
    }
    per_round: list[dict] = []
    for rnd in range(args.rounds):
        order = arms[rnd % len(arms) :] + arms[: rnd % len(arms)]
        got: dict = {"order": order}
        for arm in order:
            name = f"{arm}_r{rnd}"
            if arm == "seed":
                got[arm] = seed_run(args, args.seconds, work, name)
            elif arm == "limits":
                s = min(args.seconds, 30)
                for key, cl, kept in LIMITS:
                    ips = compute_limit(
                        args.backbone, args.image_size, args.batch_size, s, cl, kept
                    )
                    got[key] = {"images_per_s": ips}
            else:
                secs = args.seconds + (args.compile_allowance if "compile" in arm else 0)
                got[arm] = siamface_run(args, ARMS[arm], secs, work, name)
            print(json.dumps({"round": rnd, arm: got.get(arm)}), file=sys.stderr, flush=True)
        per_round.append(got)
    res["rounds"] = per_round
    names = [k for k in per_round[0] if k != "order"]
    res["images_per_s"] = {
        k: spread([r.get(k, {}).get("images_per_s") for r in per_round]) for k in names
    }

    def ratio(a: str, b: str) -> dict:
        vals = []
        for r in per_round:
            x, y = r.get(a, {}).get("images_per_s"), r.get(b, {}).get("images_per_s")
            if x and y:
                vals.append(x / y)
        return spread(vals)

    res["ratios_within_round"] = {
        f"{a}_vs_{b}": ratio(a, b)
        for a in names
        for b in ("seed", "limit_eager", "limit_channels_last_heap_kept")
        if a.startswith("siamface") and b in names
    }
    best = max(
        (k for k in names if k.startswith("siamface")),
        key=lambda k: res["images_per_s"][k].get("median", 0),
        default=None,
    )
    res["best_siamface_arm"] = best
    res["targets"] = {"vs_seed": ">= 1.3"}
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
