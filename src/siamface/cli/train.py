"""``siamface train``: identity folders in, a validated, self-describing checkpoint out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from siamface.cli.train_config import config_help, default_yaml
from siamface.errors import SiamfaceError
from siamface.fileio import check_output_dir
from siamface.train.config import make_config, preset_names, preset_summary

EPILOG = """\
configuration keys (set in --config YAML as sections, or as section.key=value after the options):
{keys}

presets (--config NAME; key=value overrides still apply):
{presets}

examples:
  siamface train --data ../shared/data/pins90 --out runs/pins
  siamface train --data A --data B --out runs/ab loss.name=arcface loss.miner=none \\
      loss.margin=28.6 optim.lr=3e-4
  siamface train --data faces --out runs/v2 model.backbone=tf_efficientnetv2_b0 \\
      model.image_size=224 model.pretrained=/models/effv2_b0.safetensors
  siamface train --resume runs/pins run.time_budget_min=60  # continue after Ctrl-C / a kill
  siamface train --config article --data faces --out runs/article  # the article's settings
  siamface train --print-config > my.yaml                   # commented default config

Outputs in RUN_DIR: best.safetensors (chosen on validation identities, with its decision
threshold), last.safetensors, config.yaml (every key, auto choices resolved),
dataset_report.json, history.json, summary.json, tensorboard/.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a face-embedding model on identity folders",
        description=(
            "Train a Siamese / metric-learning embedding model on folders of identities "
            "(DIR/<person>/<images>). Validation uses held-out identities (people never seen "
            "in training); the best checkpoint is chosen on them."
        ),
        epilog=EPILOG.format(
            keys=config_help(),
            presets="\n".join(f"  {n:<12}{preset_summary(n)}" for n in preset_names()),
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data", action="append", metavar="DIR", help="identity-folder root (repeatable)"
    )
    p.add_argument(
        "--config",
        metavar="YAML|PRESET",
        help="configuration file, or a preset shipped with siamface (listed below)",
    )
    p.add_argument("--out", metavar="RUN_DIR", help="run directory to create")
    p.add_argument(
        "--unlabeled",
        action="append",
        metavar="DIR",
        help="face images without identities, for distillation (repeatable; needs "
        "distill.teacher=)",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--seed", type=int, help="random seed (same as run.seed=N)")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--print-config", action="store_true", help="print a default config file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    if args.print_config:
        print(default_yaml(), end="")
        return 0
    overrides = list(args.overrides)
    if args.unlabeled:
        dirs = ",".join(str(Path(d).resolve()) for d in args.unlabeled)
        overrides.append(f"distill.unlabeled={dirs}")
    if args.seed is not None:
        overrides.append(f"run.seed={args.seed}")
    from siamface.train.distributed import (  # lazy: --help speed (torch, tqdm)
        launch,
        launched_by_torchrun,
    )
    from siamface.train.job import resume, resume_config, train  # lazy: --help speed

    if args.resume:
        if args.data or args.config:
            raise SiamfaceError("--resume continues a run with its own data and config")
        if Path(args.resume).is_dir():
            check_output_dir(args.resume, "run directory")  # writable, disk not full
        cfg = resume_config(args.resume, overrides)  # a bad key or run refused before work
        if cfg.machine.nproc > 1 and not launched_by_torchrun():
            return launch(cfg.machine.nproc, _argv(args))
        summary = resume(args.resume, overrides, progress=not args.no_progress)
    else:
        if not args.data:
            raise SiamfaceError("--data DIR is required (identity folders: DIR/<person>/<img>)")
        if not args.out:
            raise SiamfaceError("--out RUN_DIR is required")
        out = Path(args.out)
        if (out / "run.json").exists():
            raise SiamfaceError(
                f"{out} already holds a run; use --resume {out} to continue it or pick a new --out"
            )
        cfg = make_config(args.config, overrides)  # validated before anything else happens
        check_output_dir(out, "run directory")  # a file, read-only, a full disk: refused now
        if cfg.machine.nproc > 1 and not launched_by_torchrun():
            return launch(cfg.machine.nproc, _argv(args))
        summary = train(cfg, args.data, out, progress=not args.no_progress)
    if args.json and summary.get("rank") != "other":  # one summary, from rank 0
        print(json.dumps(summary, indent=1))
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    """This command line again, for the processes torchrun starts (each sees WORLD_SIZE and
    joins the group instead of launching again)."""
    argv = ["train"]
    for d in args.data or []:
        argv += ["--data", d]
    for d in args.unlabeled or []:
        argv += ["--unlabeled", d]
    for flag in ("config", "out", "resume"):
        if getattr(args, flag):
            argv += [f"--{flag}", getattr(args, flag)]
    if args.seed is not None:
        argv += ["--seed", str(args.seed)]
    if args.json:
        argv.append("--json")
    if args.no_progress:
        argv.append("--no-progress")
    return argv + list(args.overrides)
