"""Benchmark: the article's ROC script vs ``siamface evaluate`` on the same model and folder.

Measured in one run, on the same machine state:

1. end-to-end wall time of the article's ``aoc_plot_siamese.py`` (run as written through
   ``shared/tools/seed_recipe.py roc``) and of ``siamface evaluate``, both as fresh processes,
   on the same weights (a ``tf_efficientnetv2_b0`` 224 px 512-d model, random init: speed does
   not depend on training) and the same 20 identities x 50 images;
2. the pair-scoring stage alone (the part that grows as N^2): the article's phase time
   against siamface's scoring stage, in-run and best-of-R on the same-shaped data;
3. siamface's embedding stage (decode + batch + model) against the model's own batched
   inference on random tensors (no decoding at all);
4. siamface alone on ``--big-n`` images (sample data reused cyclically): wall time, peak RSS,
   and the pair stage's own peak allocation on 10k random embeddings.

Prints one JSON object. The machine is shared: absolute times are noisy, ratios within one run
are what this measures. Shrink with --big-n 2000, or skip parts with --skip-seed / --skip-big.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SIAMFACE_SHARED", REPO.parent / "shared"))
PY = sys.executable
SIAMFACE = [PY, "-m", "siamface.cli.main"]
BACKBONE, SIZE, DIM = "tf_efficientnetv2_b0", 224, 512


def run_measured(cmd: list[str], log: Path) -> dict:
    """Run a command, return wall time, exit code and the child's peak RSS.

    The peak comes from GNU time when available: a child forked straight from this (large,
    torch-loaded) process would report this process's RSS as its own high-water mark.
    """
    timefile = log.with_suffix(".time")
    gnu_time = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    full = [gnu_time, "-v", "-o", str(timefile), *cmd] if gnu_time else cmd
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(full, stdout=f, stderr=subprocess.STDOUT, cwd=log.parent)
        _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    peak_kb = ru.ru_maxrss
    if gnu_time and timefile.exists():
        for line in timefile.read_text().splitlines():
            if "Maximum resident set size" in line:
                peak_kb = int(line.rsplit(":", 1)[1])
    return {
        "rc": os.waitstatus_to_exitcode(status),
        "wall_s": round(wall, 3),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "log": str(log),
    }


def symlink_farm(dst: Path, ids: list[tuple[str, list[Path]]]) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    for name, files in ids:
        d = dst / name
        d.mkdir(parents=True)
        for k, f in enumerate(files):
            (d / f"{k:05d}_{f.name}").symlink_to(f)
    return dst


def small_set(work: Path, n_ids: int, per_id: int) -> Path:
    root = SHARED / "data" / "pins90"
    ids = sorted(p for p in root.iterdir() if p.is_dir())[:n_ids]
    return symlink_farm(
        work / f"data_{n_ids}x{per_id}", [(p.name, sorted(p.iterdir())[:per_id]) for p in ids]
    )


def big_set(work: Path, n: int) -> Path:
    """``n`` images in identity folders: pins90 then celeba_wild, reused cyclically."""
    folders = []
    for sub in ("pins90", "celeba_wild"):
        root = SHARED / "data" / sub
        folders += [(f"{sub}_{p.name}", sorted(p.iterdir())) for p in sorted(root.iterdir())]
    per: dict[str, list[Path]] = {name: [] for name, _ in folders}
    total, cycle = 0, 0
    while total < n:
        for name, files in folders:
            take = files[: n - total]
            per[name] += take
            total += len(take)
            if total >= n:
                break
        cycle += 1
    return symlink_farm(work / f"data_big_{n}", [(k, v) for k, v in per.items() if v])


def make_models(work: Path, seed: int) -> tuple[Path, Path, dict]:
    """The siamface checkpoint and the same weights as the article's plain state_dict."""
    import timm
    import torch
    from torch import nn

    from siamface.model.checkpoint import Checkpoint, save_checkpoint
    from siamface.model.network import ModelConfig, build_model
    from siamface.tensors.transforms import Preprocessing

    torch.manual_seed(seed)
    cfg = ModelConfig(backbone=BACKBONE, embedding_size=DIM)
    model = build_model(cfg).eval()
    ckpt = save_checkpoint(
        Checkpoint(cfg, Preprocessing(image_size=SIZE), model.state_dict()),
        work / "model.safetensors",
    )
    # The article's SiameseNetwork names the linear layer "embedder"; the backbone is the same
    # timm model (its "tf_efficientnetv2_b0.in1k" tag only selects pretrained weights).
    seed_sd = {
        (f"embedder.{k[5:]}" if k.startswith("head.") else k): v
        for k, v in model.state_dict().items()
    }
    pth = work / "seed_model.pth"
    torch.save(seed_sd, pth)

    class ArticleShaped(nn.Module):  # same module tree as the article's network
        def __init__(self) -> None:
            super().__init__()
            self.backbone = timm.create_model(BACKBONE, pretrained=False, num_classes=0)
            self.embedder = nn.Linear(self.backbone.num_features, DIM)

        def forward(self, x):
            return self.embedder(self.backbone(x))

    art = ArticleShaped().eval()
    art.load_state_dict(torch.load(pth, map_location="cpu"), strict=True)
    check = {"state_dict_keys_match": True}
    with torch.inference_mode():
        x = torch.randn(2, 3, SIZE, SIZE)
        a = torch.nn.functional.normalize(art(x), dim=1)
        b = model(x)
        check["same_input_max_abs_diff_after_l2"] = float((a - b).abs().max())
        # one real image through each program's own preprocessing: compare the inputs (a
        # random-init network maps every face to nearly the same vector, so comparing its
        # outputs across pipelines would prove nothing)
        from PIL import Image
        from torchvision import transforms

        from siamface.folders.images import load_rgb, resize_uint8
        from siamface.tensors.transforms import Preprocessing, normalize_batch

        img_path = sorted((SHARED / "data" / "pins90").glob("*/*"))[0]
        tv = transforms.Compose(
            [
                transforms.Resize((SIZE, SIZE)),
                transforms.ToTensor(),
                transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )
        xa = tv(Image.open(img_path).convert("RGB"))
        u8 = resize_uint8(load_rgb(img_path), SIZE).transpose(2, 0, 1)[None].copy()
        xb = normalize_batch(torch.from_numpy(u8), Preprocessing(image_size=SIZE))[0]
        std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
        diff = ((xa - xb).abs() * std).flatten()
        check["real_image_input_diff_0_255"] = {
            "mean": round(float(diff.mean()), 3),
            "p99": round(float(diff.quantile(0.99)), 3),
        }
        ea = torch.nn.functional.normalize(art(xa[None]), dim=1)
        eb = model(xb[None].contiguous())
        check["real_image_embedding_max_abs_diff_after_l2"] = float((ea - eb).abs().max())
        check["note"] = (
            "same weights -> same embedding, up to the L2 normalisation the article's script "
            "omits (cosine unaffected). Both programs feed the network the same pixels: "
            "torchvision's Resize on a PIL image is PIL's bilinear resize, like siamface's"
        )
    return ckpt, pth, check


def backbone_throughput(ckpt: Path, batch: int, batches: int) -> float:
    """Images/s of the network alone on random input: batched, inference mode, channels-last,
    same thread count as siamface evaluate."""
    import torch

    from siamface.model.checkpoint import load_checkpoint

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_checkpoint(ckpt).build("cpu").to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(batches):
            model(x)
        return batch * batches / (time.perf_counter() - t0)


def embedding_ab(ckpt: Path, data: Path, images: int, rounds: int) -> dict:
    """siamface's embedding path (decode workers + batches) and the bare network on random
    tensors, alternated in one process so both see the same machine load."""
    import torch

    from siamface.embed.load import create_embedder

    emb = create_embedder(ckpt, device="cpu")
    paths = sorted(data.glob("*/*"))[:images]
    x = torch.randint(0, 256, (64, 3, SIZE, SIZE), dtype=torch.uint8).numpy()
    emb.embed_batch(x)  # warm-up, as a long evaluation amortises it
    t_sf = t_net = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        emb.embed_paths(paths, batch_size=64, progress=False)
        t1 = time.perf_counter()
        model = emb.model
        xf = torch.randn(64, 3, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            for _ in range(-(-len(paths) // 64)):
                model(xf)
        t2 = time.perf_counter()
        t_sf += t1 - t0
        t_net += (t2 - t1) * len(paths) / (64 * -(-len(paths) // 64))
    return {
        "images_per_round": len(paths),
        "rounds": rounds,
        "siamface_images_per_s": round(len(paths) * rounds / t_sf, 2),
        "network_only_images_per_s": round(len(paths) * rounds / t_net, 2),
        "fraction": round(t_net / t_sf, 3),
    }


def scoring_microbench(n_ids: int, per_id: int, repeats: int) -> float:
    """Best-of-``repeats`` seconds of siamface's pair scoring on same-shaped embeddings."""
    from siamface.scores.pairs import score_all_pairs

    rng = np.random.default_rng(0)
    e = rng.normal(size=(n_ids * per_id, DIM)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    lab = np.repeat(np.arange(n_ids), per_id)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        score_all_pairs(e, lab)
        best = min(best, time.perf_counter() - t0)
    return best


PAIR_MEMORY_CHILD = r"""
import json, sys, time, tracemalloc
import numpy as np
from siamface.scores.pairs import score_all_pairs
n, per = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
e = rng.normal(size=(n, 512)).astype(np.float32); e /= np.linalg.norm(e, axis=1, keepdims=True)
lab = np.arange(n) // per
tracemalloc.start()
t0 = time.perf_counter()
sp = score_all_pairs(e, lab)
t1 = time.perf_counter()
m = sp.metrics()
t2 = time.perf_counter()
print(json.dumps({"images": n, "genuine_pairs": sp.genuine.n, "impostor_pairs": sp.impostor.n,
    "score_s": round(t1 - t0, 3), "metrics_s": round(t2 - t1, 3),
    "peak_traced_alloc_mb": round(tracemalloc.get_traced_memory()[1] / 2**20, 1),
    "storage": sp.summary()["impostor_scores"], "auc_random": round(m.auc, 4)}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/siamface_eval_bench")
    ap.add_argument("--ids", type=int, default=20)
    ap.add_argument("--per-id", type=int, default=50)
    ap.add_argument("--big-n", type=int, default=10_000, help="images for the large run")
    ap.add_argument("--skip-seed", action="store_true", help="do not run the article's script")
    ap.add_argument("--skip-big", action="store_true", help="do not run the large evaluation")
    ap.add_argument("--repeats", type=int, default=7, help="repeats of the scoring microbench")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ab-images", type=int, default=384, help="images per A/B embedding round")
    ap.add_argument("--ab-rounds", type=int, default=2, help="alternating A/B rounds")
    args = ap.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"host_cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    data = small_set(work, args.ids, args.per_id)
    ckpt, pth, check = make_models(work, args.seed)
    out["model"] = {"backbone": BACKBONE, "image_size": SIZE, "embedding_size": DIM}
    out["equivalence"] = check
    n_img = args.ids * args.per_id
    out["data"] = {"identities": args.ids, "images": n_img, "root": str(data)}

    # siamface evaluate, as a user runs it
    sf_dir = work / "siamface_eval"
    sf_dir.mkdir(exist_ok=True)
    sf = run_measured(
        [
            *SIAMFACE,
            "evaluate",
            "--model",
            str(ckpt),
            "--data",
            str(data),
            "--out",
            str(sf_dir),
            "--no-progress",
        ],
        sf_dir / "stdout.log",
    )
    rep = json.loads((sf_dir / "report.json").read_text())
    sf["timing_s"] = rep["timing_s"]
    sf["auc"] = rep["metrics"]["auc"]
    sf["pairs_scored"] = rep["pairs"]["genuine_pairs"] + rep["pairs"]["impostor_pairs_scored"]
    out["siamface"] = sf

    if not args.skip_seed:
        seed_dir = work / "seed_roc"
        proc = subprocess.run(
            [
                PY,
                str(SHARED / "tools" / "seed_recipe.py"),
                "roc",
                "--model",
                str(pth),
                "--data",
                str(data),
                "--workdir",
                str(seed_dir),
            ],
            capture_output=True,
            text=True,
        )
        line = next(
            (ln for ln in proc.stdout.splitlines() if ln.startswith("SEED_RECIPE_RESULT ")), None
        )
        if line is None:
            out["article"] = {"error": proc.stdout[-2000:] + proc.stderr[-2000:]}
        else:
            seed = json.loads(line.split(" ", 1)[1])
            out["article"] = {
                k: seed.get(k)
                for k in (
                    "rc",
                    "wall_s",
                    "peak_rss_mb",
                    "phases",
                    "n_images",
                    "n_pairs",
                    "auc",
                    "embed_images_per_s",
                    "threads",
                )
            }
            ph = seed["phases"]
            micro = scoring_microbench(args.ids, args.per_id, args.repeats)
            sf_pairs = sf["pairs_scored"]
            out["ratios"] = {
                "end_to_end_wall": round(seed["wall_s"] / sf["wall_s"], 2),
                "pair_stage_in_run": round(ph["pairs_s"] / sf["timing_s"]["score_s"], 1),
                "pair_stage_best_of_repeats": round(ph["pairs_s"] / micro, 1),
                "per_pair": round(
                    (ph["pairs_s"] / seed["n_pairs"]) / (sf["timing_s"]["score_s"] / sf_pairs), 1
                ),
                "embedding_stage": round(ph["embeddings_s"] / sf["timing_s"]["embed_s"], 2),
            }
            out["pair_stage"] = {
                "article_s": ph["pairs_s"],
                "article_pairs": seed["n_pairs"],
                "article_us_per_pair": round(ph["pairs_s"] / seed["n_pairs"] * 1e6, 2),
                "siamface_in_run_s": sf["timing_s"]["score_s"],
                "siamface_best_of_repeats_s": round(micro, 5),
                "siamface_pairs": sf_pairs,
                "note": "the article scores each unordered pair twice (both orders); siamface "
                "once; both produce the ROC over all pairs of the folder",
            }
            out["auc_check"] = {"article": seed.get("auc"), "siamface": sf["auc"]}

    # embedding stage vs the network's own batched throughput
    bb = backbone_throughput(ckpt, 64, max(2, n_img // 64 // 3))
    emb_ips = n_img / sf["timing_s"]["embed_s"]
    out["embedding_stage"] = {
        "in_run": {
            "siamface_images_per_s": round(emb_ips, 2),
            "network_only_random_tensors_images_per_s": round(bb, 2),
            "fraction": round(emb_ips / bb, 3),
            "note": "siamface's evaluate-run stage (loader-worker start, JPEG decoding, "
            "resizing, batching, model) against the network alone measured afterwards: "
            "different moments of a shared machine",
        },
        "interleaved": embedding_ab(ckpt, data, args.ab_images, args.ab_rounds),
    }

    if not args.skip_big:
        big = big_set(work, args.big_n)
        bdir = work / "siamface_big"
        bdir.mkdir(exist_ok=True)
        b = run_measured(
            [
                *SIAMFACE,
                "evaluate",
                "--model",
                str(ckpt),
                "--data",
                str(big),
                "--out",
                str(bdir),
                "--no-progress",
            ],
            bdir / "stdout.log",
        )
        if b["rc"] == 0:
            brep = json.loads((bdir / "report.json").read_text())
            b.update(
                timing_s=brep["timing_s"],
                pairs=brep["pairs"],
                images=brep["data"]["images_embedded"],
                identities=brep["data"]["identities"],
            )
        b["peak_rss_over_small_run_mb"] = round(b["peak_rss_mb"] - sf["peak_rss_mb"], 1)
        out["big"] = b
        log = work / "pair_memory.log"
        child = run_measured([PY, "-c", PAIR_MEMORY_CHILD, str(args.big_n), "60"], log)
        lines = log.read_text().strip().splitlines()
        out["pair_stage_memory"] = (
            json.loads(lines[-1]) | {"process_peak_rss_mb": child["peak_rss_mb"]}
            if child["rc"] == 0
            else {"error": "\n".join(lines[-20:])}
        )
    out["loadavg_end"] = os.getloadavg()
    text = json.dumps(out, indent=1)
    (work / "eval_speed.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
