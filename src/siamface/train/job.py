"""A training job end to end: the run folder, the processes, the signals, then build + fit.

What ``siamface train`` calls. :func:`train` starts a run, :func:`resume` continues one from
its saved state. Both hold the run directory's lock for the whole job, join the torchrun
process group when there is one, turn Ctrl-C and SIGTERM into a stop at the next step
boundary, and then do the two things a reader should look at:
:func:`~siamface.train.run.build_run` and :func:`~siamface.train.fit.fit`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from siamface.errors import SiamfaceError
from siamface.system import heap_kept
from siamface.train.config import TrainConfig, make_config
from siamface.train.config.flat import FLAT_KEYS
from siamface.train.config.resolve import resolve_here
from siamface.train.distributed import init_distributed, main_decides, shutdown
from siamface.train.fit import fit
from siamface.train.hooks import Hook
from siamface.train.interrupt import GracefulStop
from siamface.train.objective import LossTerm
from siamface.train.run import build_run
from siamface.train.rundir import RunDir
from siamface.train.state import Progress, load_state, state_file

#: Keys a resume may change: budgets and machine sizing, nothing that alters the model.
RESUME_OVERRIDABLE = frozenset(
    {
        "run.epochs",
        "run.time_budget_min",
        "run.save_every_min",
        "machine.num_workers",
        "machine.nproc",
        "machine.grad_accum",
    }
)


def train(
    cfg: TrainConfig,
    data_dirs: Sequence[str | Path],
    run_dir: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    hooks: Sequence[Hook] = (),
    terms: Sequence[LossTerm] = (),
) -> dict[str, Any]:
    """Train ``cfg`` on the identity folders ``data_dirs`` into ``run_dir``; the summary.

    Every ``auto`` in ``cfg`` that the machine decides is resolved here, once, so the run's
    ``config.yaml`` records what was used.

    Under torchrun every process calls this; rank 0 writes the files and returns the full
    summary, the others ``{"rank": "other", ...}``.
    """
    cfg = resolve_here(cfg)
    return _job(cfg, list(data_dirs), run_dir, None, progress, log, hooks, terms)


def resume_config(run_dir: str | Path, overrides: Sequence[str] | None = None) -> TrainConfig:
    """The config a resume of ``run_dir`` runs with; only budget-like keys may change.
    Refuses a folder that is not a run or has no saved state before any work starts."""
    meta = RunDir(run_dir).read_meta()
    for o in overrides or []:
        key = o.split("=", 1)[0].strip()
        key = FLAT_KEYS.get(key, key)  # an old flat spelling (its deprecation line comes later)
        if key not in RESUME_OVERRIDABLE:
            raise SiamfaceError(
                f"cannot change {key!r} when resuming; only {', '.join(sorted(RESUME_OVERRIDABLE))}"
            )
    cfg = make_config(base=meta["config"], overrides=list(overrides or []))
    state_file(Path(run_dir))
    return cfg


def resume(
    run_dir: str | Path,
    overrides: Sequence[str] | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    hooks: Sequence[Hook] = (),
) -> dict[str, Any]:
    """Continue a run from its saved state, exactly where it stopped."""
    cfg = resume_config(run_dir, overrides)
    data_dirs = RunDir(run_dir).read_meta()["data"]
    saved = load_state(Path(run_dir))
    return _job(cfg, data_dirs, run_dir, saved, progress, log, hooks, ())


def _quiet(_: str) -> None:
    """The log of processes other than rank 0."""


def _job(
    cfg: TrainConfig,
    data_dirs: list,
    run_dir: str | Path,
    saved: dict | None,
    progress: bool,
    log: Callable[[str], None],
    hooks: Sequence[Hook],
    terms: Sequence[LossTerm],
) -> dict[str, Any]:
    started = time.time()
    ctx = init_distributed(cfg.machine.device)
    if not ctx.is_main:
        log = _quiet
    files = RunDir(run_dir)
    try:
        with contextlib.ExitStack() as stack:

            def take_folder() -> None:
                files.create()
                stack.enter_context(files.lock())

            main_decides(ctx, take_folder)
            stop = stack.enter_context(GracefulStop(log))
            state = Progress()
            run = build_run(
                cfg,
                data_dirs,
                run_dir,
                state,
                ctx=ctx,
                resume=saved,
                terms=terms,
                progress=progress,
                log=log,
            )
            run.stop, run.started_unix = stop, started
            try:
                cpu = run.device.type == "cpu"
                if stack.enter_context(heap_kept(run.cfg.machine.keep_heap and cpu)):
                    log("CPU heap kept between steps (keep_heap=true)")
                return fit(run, state, hooks)
            finally:
                run.reporter.close()
    finally:
        shutdown(ctx)
