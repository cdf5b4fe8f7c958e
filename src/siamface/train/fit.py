"""``fit(run, state, hooks)``: the epoch loop. Batches -> steps -> epochs, nothing else.

Each epoch draws its batches from seeds fixed at the epoch's start (so a resume replays the
same batches and augmentations and skips the ones already trained), runs the step on each,
and ends with validation, checkpoints and the history record. Every part it uses was built by
:func:`~siamface.train.run.build_run`; what is not the loop's own job (freezing, fine-tuning,
a user's extra logging) happens in :class:`~siamface.train.hooks.Hook` s. Decisions taken from
a clock or a signal (time budget, Ctrl-C, periodic saves) are agreed on by all processes, so
they stop at the same step.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from siamface.errors import SiamfaceError
from siamface.scores.metrics import VerificationMetrics
from siamface.system import frozen_for_fork
from siamface.tensors.batches import rank_steps
from siamface.train.checkpoints import save_epoch_checkpoints
from siamface.train.distributed import agree, main_decides
from siamface.train.hooks import Hook, Hooks, RunView
from siamface.train.reporting import EpochMeter
from siamface.train.run import Run
from siamface.train.rundir import OutputError
from siamface.train.snapshot import save_run_state
from siamface.train.state import Progress, capture_rng, restore_rng
from siamface.train.step import TrainStep
from siamface.train.validation import is_better, metric_record, metric_value


class TrainingInterrupted(SiamfaceError):
    """Raised after Ctrl-C once the resumable state has been saved."""


@dataclass
class _Clock:
    """The loop's own bookkeeping within this process (not saved)."""

    step: TrainStep  # the step of the current epoch (plain or on cached features)
    last_save: float
    first_step_unix: float | None = None


def fit(run: Run, state: Progress, hooks: Sequence[Hook] = ()) -> dict[str, Any]:
    """Train ``run`` until its epochs or its time budget are done; returns the summary.

    ``state`` is where the run is (fresh, or restored by a resume); ``hooks`` are called
    before the run's own plugins. Ctrl-C or SIGTERM (through ``run.stop``) end the run at a
    step boundary with the state saved and :class:`TrainingInterrupted` raised.
    """
    cfg, ctx, s = run.cfg, run.ctx, state
    every = Hooks([*hooks, *run.plugins])
    view = run.view(state)
    procs = f", {ctx.world_size} processes ({ctx.backend})" if ctx.enabled else ""
    run.log(
        f"model: {cfg.model.backbone} ({run.weights_source}) -> {cfg.model.embedding_size}-d, "
        f"{cfg.model.image_size}px; loss {cfg.objective.name}, miner {cfg.objective.miner}, "
        f"{cfg.optim.name}; "
        f"device {run.device} {run.precision.name}{procs}, "
        f"{run.workers} loader worker(s)"
    )
    s.session_start = time.perf_counter()
    clock = _Clock(step=run.step, last_save=time.perf_counter())
    epoch_start_rng = s.epoch_start_rng
    stop_reason = f"{cfg.run.epochs} epochs done"
    every.on_train_start(view)
    try:
        while s.epoch < cfg.run.epochs:
            if agree(ctx, [s.out_of_time()], run.device)[0]:
                stop_reason = f"time budget of {cfg.run.time_budget_min} min reached"
                break
            if epoch_start_rng is not None:
                # Resuming: replay this epoch's RNG so the sampler yields the same order,
                # then skip the batches that were already trained on.
                restore_rng(epoch_start_rng)
            else:
                epoch_start_rng = capture_rng()
                s.step_in_epoch = 0
            meter = _train_epoch(run, s, every, view, clock, epoch_start_rng)
            if run.stop.requested:
                raise KeyboardInterrupt
            finished = s.step_in_epoch >= run.steps_per_epoch
            if finished:
                s.epoch += 1
                s.step_in_epoch = 0
            _end_epoch(run, s, every, view, meter, finished)
            # A finished epoch resumes at the next one (fresh RNG snapshot); a partial one
            # resumes inside this epoch, so it keeps this epoch's starting snapshot.
            resume_rng = capture_rng() if finished else epoch_start_rng
            if finished:
                s.sampler_labels = list(map(int, run.sampler.labels))
            save_run_state(run, s, resume_rng)
            epoch_start_rng = None
            clock.last_save = time.perf_counter()
            if not finished:
                stop_reason = f"time budget of {cfg.run.time_budget_min} min reached"
                break
    except KeyboardInterrupt:
        if clock.step.in_step:
            # A second Ctrl-C landed inside a step: the weights are half-updated.
            raise TrainingInterrupted(
                f"aborted during step {s.global_step + 1}; nothing saved now, the last "
                f"saved state is kept. Continue with: siamface train --resume {run.run_dir}"
            ) from None
        save_run_state(run, s, epoch_start_rng or capture_rng())
        raise TrainingInterrupted(
            f"interrupted at epoch {s.epoch + 1}, step {s.step_in_epoch}; state saved. "
            f"Continue with: siamface train --resume {run.run_dir}"
        ) from None
    run.reporter.close()
    summary = run.reporter.summary(
        stop_reason,
        s,
        s.train_seconds + s.elapsed(),
        cfg.run.select_metric,
        cfg.run.calib_far,
        len(run.data.val_identities),
        extra={"first_step_unix": clock.first_step_unix, "data_scan": run.data.scan},
    )
    if every.on_summary(view, summary):
        run.files.write_json("summary.json", summary)
    every.on_train_end(view, summary)
    return summary


def _train_epoch(
    run: Run, s: Progress, hooks: Hook, view: RunView, clock: _Clock, epoch_start_rng: dict
) -> EpochMeter:
    """Train through the rest of the current epoch (or until the time budget ends)."""
    cfg, ctx = run.cfg, run.ctx
    s.sampler_labels = list(map(int, run.sampler.labels))
    steps = epoch_steps(run, s)
    loader = _loader(run, steps)
    run.model.train()
    run.opt.train_mode()
    hooks.on_epoch_start(view)
    step = clock.step = run.step_for(s.epoch)
    augmenting = step.augment is not None and step.augment.enabled
    meter = run.reporter.epoch_meter(
        run.steps_per_epoch, s.step_in_epoch, f"epoch {s.epoch + 1}/{cfg.run.epochs}"
    )
    with frozen_for_fork(run.workers > 0):  # workers fork here (a hang otherwise: see there)
        batches = iter(loader)
    for j, batch in enumerate(batches):
        # (mid-epoch, the all-reduce after each step already agreed on this)
        if (j == 0 or not ctx.enabled) and agree(ctx, [run.stop.requested], run.device)[0]:
            run.stop.requested = run.stop.requested or "a signal to another process"
            break
        seeds = torch.tensor([sd for _, sd in steps[j]]) if augmenting else None
        result = step(*batch, seeds=seeds)  # batch: (images, labels[, dataset indices])
        result.images *= ctx.world_size
        if not math.isfinite(result.loss):
            raise SiamfaceError(
                f"loss became {result.loss} at step {s.global_step}: lower lr "
                f"(now {cfg.optim.lr}) or use precision=fp32"
            )
        s.step_in_epoch += 1
        s.global_step += 1
        if clock.first_step_unix is None:
            clock.first_step_unix = time.time()
            run.log(f"first step after {clock.first_step_unix - run.started_unix:.1f} s")
        run.reporter.step(meter, result, run.opt.lr(), s.global_step)
        hooks.on_step_end(view, result)
        stop, out_of_time, save_due = agree(
            ctx,
            [
                bool(run.stop.requested),
                s.out_of_time(),
                time.perf_counter() - clock.last_save > cfg.run.save_every_min * 60,
            ],
            run.device,
        )
        if stop:
            run.stop.requested = run.stop.requested or "a signal to another process"
        if stop or out_of_time:
            break
        if save_due:
            save_run_state(run, s, epoch_start_rng)
            clock.last_save = time.perf_counter()
    meter.close()
    return meter


def epoch_steps(run: Run, s: Progress) -> list[list[tuple[int, int]]]:
    """This process's ``(image index, augmentation seed)`` lists, one per remaining step.

    The epoch's global order, the unlabeled faces added to each batch (distillation) and
    one augmentation seed per image are all drawn from the RNG state at the epoch's start,
    which a resume restores: the same batches and the same augmentation of every image,
    however many batches are then skipped as already trained and however many processes
    share them.
    """
    cfg, ctx, train = run.cfg, run.ctx, run.data.train
    order = [int(i) for i in iter(run.sampler)]
    extra = None
    if train.n_labeled < len(train):
        n_batches = len(order) // cfg.data.batch_size
        u = cfg.distill.unlabeled_per_batch
        extra = torch.randint(train.n_labeled, len(train), (n_batches, u)).tolist()
    epoch_seed = int(torch.randint(0, 2**62, (1,)).item())
    keyed = [(i, epoch_seed + k) for k, i in enumerate(order)]
    extra_keyed = None
    if extra is not None:
        base = epoch_seed + len(order)
        extra_keyed = [
            [(i, base + j * len(row) + t) for t, i in enumerate(row)] for j, row in enumerate(extra)
        ]
    steps = rank_steps(
        keyed, cfg.data.batch_size, ctx.world_size, ctx.rank, cfg.machine.grad_accum, extra_keyed
    )
    return steps[s.step_in_epoch :]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group; the main process decides when to stop (at a
    # step boundary) and shuts the workers down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _loader(run: Run, steps: list[list[tuple[int, int]]]) -> DataLoader:
    return DataLoader(
        run.data.train,
        batch_sampler=steps,
        num_workers=run.workers,
        worker_init_fn=_worker_init,
        prefetch_factor=4 if run.workers else None,
        persistent_workers=False,
        pin_memory=run.device.type == "cuda",
    )


def _end_epoch(
    run: Run, s: Progress, hooks: Hook, view: RunView, meter: EpochMeter, finished: bool
) -> VerificationMetrics | None:
    """Validate, keep best/last checkpoints, record the epoch, step epoch schedules.

    Rank 0 validates and writes; the other processes receive the record, so every process
    steps its schedule with the same metric and keeps the same history."""
    cfg = run.cfg
    m, val_time = run.evaluate(s)

    def decide() -> tuple[dict[str, Any], tuple[float | None, int | None], bool]:
        record: dict[str, Any] = {
            "epoch": s.epoch if finished else s.epoch + 1,
            "complete": finished,
            "train_loss": meter.mean_loss,
            "lr": run.opt.lr(),
            "images_per_s": meter.seen / meter.seconds if meter.seconds > 0 else None,
            "images_per_s_steady": meter.steady_images_per_s,
            "epoch_seconds": meter.seconds,
            "val_seconds": val_time,
        }
        ckpt = run.checkpoint(m, record["epoch"], s)
        improved = m is None  # no validation identities: "best" is simply the latest model
        best = (s.best_value, s.best_epoch)
        if m is not None:
            record |= metric_record(m, ckpt)
            value = metric_value(m, cfg.run.select_metric)
            improved = is_better(value, s.best_value, cfg.run.select_metric)
            if improved and not hooks.keeps_best(view, record):
                improved = False
            if improved:
                best = (value, record["epoch"])
        s.best_value, s.best_epoch = best
        save_epoch_checkpoints(ckpt, run.run_dir, best=improved)
        return record, best, improved

    record, (s.best_value, s.best_epoch), improved = main_decides(run.ctx, decide, OutputError)
    eer = record.get("val_eer")
    if eer is not None:
        run.opt.epoch_schedule(eer)
    s.history.append(record)
    run.reporter.epoch(record, m, improved and m is not None, s.history, s.global_step)
    run.opt.train_mode()
    hooks.on_epoch_end(view, record)
    return m
