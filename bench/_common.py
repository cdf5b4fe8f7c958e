"""Helpers shared by the bench scripts: locating data and the seed recipe, running children
with peak-memory accounting, and the machine description printed with every result."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SIAMFACE_SHARED", REPO.parent / "shared"))
SEED_RECIPE = SHARED / "tools" / "seed_recipe.py"
SIAMFACE = [sys.executable, "-m", "siamface.cli.main"]


def machine() -> dict:
    """Facts that make a number interpretable: cores, load, library versions."""
    import torch

    return {
        "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "platform": platform.platform(),
    }


def run_child(cmd: list[str], log: Path | None = None, env: dict | None = None) -> dict:
    """Run ``cmd``; return rc, wall time, peak RSS (MB, incl. waited-for descendants), stdout."""
    t0 = time.perf_counter()
    out_f = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    p = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=out_f, text=True, env={**os.environ, **(env or {})}
    )
    stdout = p.stdout.read() if p.stdout else ""
    _, status, ru = os.wait4(p.pid, 0)
    if log:
        out_f.close()
    return {
        "rc": os.waitstatus_to_exitcode(status),
        "wall_s": round(time.perf_counter() - t0, 2),
        "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),
        "stdout": stdout,
    }


def seed_result(stdout: str) -> dict:
    """The JSON line printed by seed_recipe.py."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("SEED_RECIPE_RESULT "):
            return json.loads(line[len("SEED_RECIPE_RESULT ") :])
    raise RuntimeError("seed_recipe.py printed no result line")


def last_json(stdout: str) -> dict:
    """The last top-level JSON object in a command's stdout (``--json`` output)."""
    start = stdout.rfind("\n{")
    return json.loads(stdout[start + 1 :] if start >= 0 else stdout[stdout.find("{") :])


def seed_checkpoint_to_siamface(pth: Path, out: Path) -> Path:
    """Wrap the article's state dict (backbone.* + embedder.*) as a siamface checkpoint so its
    model is embedded and scored by exactly the same code as siamface's. Cosine similarity is
    unchanged by siamface's L2 normalisation."""
    import torch

    from siamface.model.checkpoint import Checkpoint, save_checkpoint
    from siamface.model.network import ModelConfig
    from siamface.tensors.transforms import Preprocessing

    sd = torch.load(pth, map_location="cpu", weights_only=True)
    sd = {("head." + k[9:] if k.startswith("embedder.") else k): v for k, v in sd.items()}
    ckpt = Checkpoint(
        model_cfg=ModelConfig(backbone="tf_efficientnetv2_b0", embedding_size=512),
        preprocessing=Preprocessing(image_size=224),  # Resize 224 + ImageNet mean/std
        state_dict=sd,
    )
    return save_checkpoint(ckpt, out)
