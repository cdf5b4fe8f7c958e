"""Cost of checking a model file as a whole when it is opened (issue 13).

Each trial is a fresh process (the first load is what a CLI command pays) that imports
everything first, then times ``siamface.load(checkpoint)``: with the whole-file checks
(header, tensor names/shapes against the architecture built on the ``meta`` device, finite
weights, fingerprint), and, as the same-run baseline, with the tensor checks switched off
(the header checks stay: they are microseconds). Prints JSON.

    .venv/bin/python bench/model_load.py [--backbone tf_efficientnet_lite0] [--trials 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import machine

CHILD = r"""
import sys, time
import siamface, siamface.model.checkpoint as C, siamface.embed.torch_backend  # noqa
if sys.argv[2] == "baseline":
    C.check_weights = lambda *a, **k: None
t0 = time.perf_counter()
siamface.load(sys.argv[1], device="cpu")
print(time.perf_counter() - t0)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--embedding-size", type=int, default=512)
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()

    import torch

    from siamface.model.checkpoint import Checkpoint, save_checkpoint
    from siamface.model.network import ModelConfig, build_model
    from siamface.tensors.transforms import Preprocessing

    cfg = ModelConfig(backbone=args.backbone, embedding_size=args.embedding_size)
    torch.manual_seed(0)
    net = build_model(cfg)
    path = Path(tempfile.mkdtemp()) / "m.safetensors"
    save_checkpoint(Checkpoint(cfg, Preprocessing(), net.state_dict()), path)
    times: dict[str, list[float]] = {"checked": [], "baseline": []}
    for _ in range(args.trials):
        for variant, runs in times.items():  # interleaved: load drifts hit both alike
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(path), variant],
                capture_output=True,
                text=True,
                check=True,
            )
            runs.append(float(out.stdout.strip()))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        json.dumps(
            {
                "bench": "first siamface.load of a checkpoint in a fresh process",
                "backbone": args.backbone,
                "parameters_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 2),
                "median_s": {
                    "whole-file checks": round(med["checked"], 3),
                    "baseline (header checks only)": round(med["baseline"], 3),
                },
                "ratio": round(med["checked"] / med["baseline"], 2),
                "trials": times,
                "machine": machine(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
