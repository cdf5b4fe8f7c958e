"""Training throughput: siamface vs the article's script vs the backbone's own compute limit.

All measured in this run, on the same data, backbone, image size and batch size:

* ``limit_eager``: the backbone + 512-d head doing forward + backward + AdamW step on random
  tensors (NCHW, fp32, no data loading) -- the ceiling for an eager PyTorch training loop.
* ``limit_channels_last``: the same in channels-last memory layout (informational).
* ``seed``: the article's training script, run as written by ../shared/tools/seed_recipe.py.
* ``siamface``: ``siamface train`` with the same backbone / size / batch, real data loading
  and augmentation included.
* ``siamface_default``: ``siamface train`` at its default configuration (its own image size).

Prints JSON with img/s, peak RSS and the ratios siamface/seed and siamface/limit_eager.
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


def compute_limit(backbone: str, size: int, batch: int, seconds: float, channels_last: bool):
    """Median img/s of forward+backward+step on random tensors (after 2 warm-up steps)."""
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
    steady = times[2:]
    return {
        "images_per_s": round(batch / statistics.median(steady), 2),
        "steps": len(steady),
        "channels_last": channels_last,
    }


def siamface_run(data: str, overrides: list[str], seconds: float, work: Path, name: str):
    out = work / name
    cmd = [
        *SIAMFACE,
        "train",
        "--data",
        data,
        "--out",
        str(out),
        "--no-progress",
        "--json",
        "val_identities=0",
        "epochs=1",
        f"time_budget_min={seconds / 60:.4f}",
        *overrides,
    ]
    r = run_child(cmd, log=work / f"{name}.log")
    if r["rc"] != 0:
        return {"error": f"siamface train failed (rc {r['rc']}), see {work / name}.log"}
    hist = json.loads((out / "history.json").read_text())[-1]
    summary = last_json(r["stdout"])
    return {
        "images_per_s": round(hist["images_per_s"], 2),
        "steps": summary["steps"],
        "train_loop_s": round(hist["epoch_seconds"], 1),
        "process_wall_s": r["wall_s"],
        "peak_rss_mb": r["peak_rss_mb"],
        "overrides": overrides,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(SHARED / "data" / "pins90"))
    ap.add_argument("--backbone", default="tf_efficientnetv2_b0", help="the article's backbone")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=90, help="training time per measurement")
    ap.add_argument("--skip-seed", action="store_true")
    ap.add_argument("--skip-default", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_train_tp_"))
    res: dict = {"bench": "train_throughput", "machine": machine(), "workdir": str(work)}
    res["setting"] = {
        "data": args.data,
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "seconds_per_measurement": args.seconds,
    }
    limit_s = min(args.seconds, 45)
    res["limit_eager"] = compute_limit(
        args.backbone, args.image_size, args.batch_size, limit_s, False
    )
    res["limit_channels_last"] = compute_limit(
        args.backbone, args.image_size, args.batch_size, limit_s, True
    )
    if not args.skip_seed:
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
                str(args.seconds),
                "--workdir",
                str(work / "seed"),
                "--seed",
                "0",
            ],
            log=work / "seed.log",
        )
        s = seed_result(r["stdout"])
        res["seed"] = {
            "images_per_s": s.get("images_per_s_excl_first_batch") or s.get("images_per_s"),
            "images_per_s_incl_first_batch": s.get("images_per_s"),
            "batches": s.get("batches"),
            "peak_rss_mb": s.get("peak_rss_mb"),
            "process_wall_s": s.get("wall_s"),
        }
    same = [
        f"backbone={args.backbone}",
        "pretrained=none",
        f"image_size={args.image_size}",
        f"batch_size={args.batch_size}",
        "m_per_class=4",
        "loss=triplet",
        "margin=0.1",
        "miner=none",
        "lr=1e-4",
    ]
    res["siamface"] = siamface_run(args.data, same, args.seconds, work, "siamface_same")
    if not args.skip_default:
        res["siamface_default"] = siamface_run(
            args.data, [], args.seconds, work, "siamface_default"
        )
    sf = res["siamface"].get("images_per_s")
    if sf:
        res["ratio_siamface_vs_eager_limit"] = round(sf / res["limit_eager"]["images_per_s"], 3)
        if res.get("seed", {}).get("images_per_s"):
            res["ratio_siamface_vs_seed"] = round(sf / res["seed"]["images_per_s"], 3)
    res["targets"] = {"vs_seed": ">= 1.3", "vs_eager_limit": ">= 0.95"}
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
