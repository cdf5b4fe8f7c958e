"""Training at scale on this machine: 100k images, 2 processes, 85k identities, 50k validation.

Measured in this run (JSON on stdout):

* ``data``: generated identity folders (default 10k identities x 10 small JPEGs), made once
  and reused from ``--work`` on later runs of the bench.
* ``first_run``: ``siamface train`` with an empty scan index: seconds from process start to
  the first optimizer step, peak RSS of the whole process tree, steady img/s.
* ``second_run``: the same with the index filled by the first run.
* ``resume``: ``--resume`` of the second run (stopped by its time budget): seconds to its
  first step.
* ``ddp``: steady img/s with ``nproc=2`` (torchrun, gloo) vs ``nproc=1``, same global batch.
* ``partial_fc``: peak RSS of one loss step (forward, backward, AdamW) at 85k identities,
  batch 256, 512-d: the full classifier vs sampled centres (rate 0.1), and per process when
  the centres are sharded over 2 processes.
* ``validation``: peak extra memory of scoring 50k validation embeddings (all genuine pairs,
  2M impostor pairs, bounded-memory block scoring).

Targets (issue 10): peak RSS < 4 GB and first step < 3 min at 100k images on 2 cores, < 30 s
when the index is cached; no validation step above 1 GB extra at 50k validation images.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _common import SIAMFACE, last_json, machine, run_child

TRAIN = [
    "backbone=mobilenetv2_050",
    "pretrained=none",
    "image_size=64",
    "embedding_size=128",
    "batch_size=64",
    "m_per_class=4",
    "val_identities=200",
    "miner=batch_hard",
    "epochs=1",
]


def _make_identity(args: tuple[Path, int, int, int]) -> None:
    import numpy as np
    from PIL import Image

    root, ident, n, size = args
    out = root / f"id{ident:05d}"
    if out.is_dir() and len(list(out.iterdir())) >= n:
        return
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(ident)
    base = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
    for k in range(n):
        img = Image.fromarray(base.astype(np.uint8)).resize((size, size), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 12, (size, size, 3))
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(out / f"{k}.jpg", quality=85)


def make_data(root: Path, identities: int, per: int, size: int) -> dict:
    t0 = time.perf_counter()
    jobs = [(root, i, per, size) for i in range(identities)]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(_make_identity, jobs, chunksize=64))
    nbytes = sum(f.stat().st_size for f in root.rglob("*.jpg"))
    return {
        "identities": identities,
        "images": identities * per,
        "image_px": size,
        "disk_mb": round(nbytes / 1e6, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def train(
    cmd_tail: list[str], work: Path, name: str, env: dict | None = None, resume: Path | None = None
) -> dict:
    out = work / name
    if resume is None:
        cmd = [*SIAMFACE, "train", "--out", str(out), *cmd_tail]
    else:
        cmd = [*SIAMFACE, "train", "--resume", str(resume), *cmd_tail]
    t0 = time.time()
    r = run_child([*cmd, "--no-progress", "--json"], log=work / f"{name}.log", env=env)
    if r["rc"] != 0:
        return {"error": f"rc {r['rc']}, see {work / name}.log"}
    summary = last_json(r["stdout"])
    run_dir = Path(summary["run_dir"])
    hist = json.loads((run_dir / "history.json").read_text())[-1]
    first = summary.get("first_step_unix")
    return {
        "first_step_s": round(first - t0, 1) if first else None,
        "peak_rss_mb": r["peak_rss_mb"],
        "images_per_s_steady": hist.get("images_per_s_steady"),
        "steps": summary["steps"],
        "data_scan": summary.get("data_scan"),
        "process_wall_s": r["wall_s"],
    }


PFC_CHILD = r"""
import json, os, resource, sys, torch
from siamface.train.partial_fc import PartialFCLoss
classes, rate, batch, dim = int(sys.argv[1]), float(sys.argv[2]), 256, 512
world = int(os.environ.get("WORLD_SIZE", 1))
if world > 1:
    import torch.distributed as dist
    dist.init_process_group("gloo")
torch.manual_seed(0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
loss = PartialFCLoss(classes, dim, "arcface", 28.6, 64.0, rate, 0, init=torch.randn(classes, dim))
if world > 1:
    loss.shard(world, dist.get_rank())
opt = torch.optim.AdamW(loss.parameters(), lr=1e-3)
for _ in range(3):
    emb = torch.nn.functional.normalize(torch.randn(batch // world, dim), dim=1)
    y = torch.randint(0, classes, (batch // world,))
    opt.zero_grad()
    loss(emb.requires_grad_(), y).backward()
    opt.step()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rank = int(os.environ.get("RANK", 0))
print(json.dumps({"rank": rank, "extra_mb": round((peak - base) / 1024, 1)}))
"""

VAL_CHILD = r"""
import json, resource, sys, time, numpy as np
from siamface.scores.pairs import score_all_pairs
from siamface.train.validation import VAL_MAX_IMPOSTORS
n, ids = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
labels = np.repeat(np.arange(ids), n // ids)
centres = rng.normal(size=(ids, 512)).astype(np.float32)
emb = rng.normal(size=(len(labels), 512)).astype(np.float32) + 0.5 * centres[labels]
emb /= np.linalg.norm(emb, axis=1, keepdims=True)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
pairs = score_all_pairs(emb, labels, max_impostors=VAL_MAX_IMPOSTORS, sample_size=VAL_MAX_IMPOSTORS)
m = pairs.metrics((1e-3,))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({
  "images": int(len(labels)), "identities": ids,
  "embeddings_mb": round(emb.nbytes / 2**20, 1),
  "extra_mb_scoring": round((peak - base) / 1024, 1),
  "seconds": round(time.perf_counter() - t, 1),
  "genuine_pairs": pairs.genuine.n, "impostor_pairs_scored": pairs.impostor.n,
  "auc": round(m.auc, 4),
}))
"""


def child_json(code: str, args: list[str], torchrun: int = 0) -> list[dict]:
    if torchrun:
        # torch.distributed.run takes a script file, not -c
        f = Path(tempfile.mkstemp(suffix=".py")[1])
        f.write_text(code)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc-per-node={torchrun}", str(f), *args]
    else:
        cmd = [sys.executable, "-c", code, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ}, timeout=1800)
    if out.returncode != 0:
        return [{"error": out.stderr[-500:]}]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=None, help="folder for the generated data (reused)")
    ap.add_argument("--identities", type=int, default=10_000)
    ap.add_argument("--per-identity", type=int, default=10)
    ap.add_argument("--image-px", type=int, default=64)
    ap.add_argument("--train-seconds", type=float, default=90)
    ap.add_argument("--classes", type=int, default=85_000)
    ap.add_argument("--val-images", type=int, default=50_000)
    ap.add_argument("--skip", default="", help="comma list: train,ddp,partial_fc,validation")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_train_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "faces"
    res: dict = {"bench": "train_scale", "machine": machine(), "workdir": str(work)}
    res["data"] = make_data(data, args.identities, args.per_identity, args.image_px)
    runs = work / "runs"
    runs.mkdir(exist_ok=True)
    tag = str(int(time.time()))
    env = {"SIAMFACE_CACHE": str(work / f"cache_{tag}")}  # an empty index for run 1
    budget = f"time_budget_min={args.train_seconds / 60:.3f}"
    tail = ["--data", str(data), *TRAIN, budget]
    if "train" not in skip:
        res["train_settings"] = TRAIN
        res["first_run"] = train(tail, runs, f"first_{tag}", env)
        res["second_run"] = train(tail, runs, f"second_{tag}", env)
        res["resume"] = train(
            [f"time_budget_min={2 * args.train_seconds / 60:.3f}"],
            runs,
            f"resume_{tag}",
            env,
            resume=runs / f"second_{tag}",
        )
    if "ddp" not in skip:
        res["ddp"] = {
            "nproc_1": train([*tail, "nproc=1"], runs, f"ddp1_{tag}", env),
            "nproc_2": train([*tail, "nproc=2"], runs, f"ddp2_{tag}", env),
        }
        a = res["ddp"]["nproc_1"].get("images_per_s_steady")
        b = res["ddp"]["nproc_2"].get("images_per_s_steady")
        if a and b:
            res["ddp"]["ratio_2_vs_1"] = round(b / a, 3)
    if "partial_fc" not in skip:
        c = str(args.classes)
        res["partial_fc"] = {
            "classes": args.classes,
            "batch": 256,
            "embedding": 512,
            "full_classifier": child_json(PFC_CHILD, [c, "1.0"]),
            "sampled_0.1": child_json(PFC_CHILD, [c, "0.1"]),
            "sharded_2_processes": child_json(PFC_CHILD, [c, "1.0"], torchrun=2),
            "sharded_2_sampled_0.1": child_json(PFC_CHILD, [c, "0.1"], torchrun=2),
        }
    if "validation" not in skip:
        res["validation"] = child_json(VAL_CHILD, [str(args.val_images), "5000"])[0]
    res["targets"] = {
        "peak_rss_mb": "< 4000 at 100k images",
        "first_step_s": "< 180 (index cold), < 30 (index cached)",
        "validation_extra_mb": "< 1024 at 50k validation images",
    }
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
