"""``build_run(cfg) -> Run``: every part of a training run, assembled in the order it is read.

Model (and its weights), data, objective, optimizer, step, validator, sampler: each is built
here from the flat config by one call into the module that owns it, so reading this function
top to bottom answers "what does one training step run?". :func:`~siamface.train.fit.fit`
then loops over epochs with the parts; it builds nothing. Optional behaviour enters as
plugins that the run carries (:attr:`Run.plugins`: the freeze schedule, fine-tuning) or as
objective terms (distillation, ``keep_close``), never as code paths in the loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from siamface.errors import SiamfaceError
from siamface.model.checkpoint import Checkpoint
from siamface.model.network import ModelConfig, build_model
from siamface.scores.metrics import VerificationMetrics
from siamface.tensors.batch_augment import BatchAugment
from siamface.tensors.transforms import Preprocessing
from siamface.train.checkpoints import build_checkpoint
from siamface.train.config import TrainConfig
from siamface.train.data import RunData, prepare_run_data
from siamface.train.device import Precision, pick_device, precision_for, threads_for, workers_for
from siamface.train.distill import DistillationTerm, teacher_term
from siamface.train.distributed import DistContext, check_world, convert_sync_batchnorm
from siamface.train.feature_cache import FeatureCache, cache_possible
from siamface.train.finetune import FineTune
from siamface.train.freeze import FreezeSchedule
from siamface.train.hooks import Hook, RunView
from siamface.train.interrupt import GracefulStop
from siamface.train.losses import build_loss, build_miner
from siamface.train.objective import LossTerm, MetricLossTerm, Objective
from siamface.train.optim import OptimizerBundle, build_optimizer, param_groups
from siamface.train.reporting import Reporter
from siamface.train.rundir import RunDir
from siamface.train.snapshot import restore_run
from siamface.train.state import Progress, seed_everything
from siamface.train.step import TrainStep
from siamface.train.validation import Validator, recalibrate_bn
from siamface.train.weights import load_weights
from siamface.version import __version__


@dataclass
class Run:
    """The parts of one training run; :func:`build_run` makes it, ``fit`` uses it."""

    cfg: TrainConfig
    ctx: DistContext
    files: RunDir
    data_dirs: list[str]
    log: Callable[[str], None]
    show_progress: bool
    device: torch.device
    precision: Precision
    micro_batch: int  # images per process per micro-batch
    model_cfg: ModelConfig
    model: nn.Module  # the model itself: saved, validated, seen by hooks
    train_model: nn.Module  # what the step calls: DDP and/or torch.compile around ``model``
    weights_source: str
    data: RunData
    objective: Objective
    opt: OptimizerBundle
    step: TrainStep
    validator: Validator
    sampler: MPerClassSampler
    workers: int
    steps_per_epoch: int
    reporter: Reporter
    feature_cache: FeatureCache | None = None
    finetune: FineTune | None = None
    #: Built-in hooks (freeze schedule, fine-tuning), called after the caller's own.
    plugins: list[Hook] = field(default_factory=list)
    #: Ctrl-C / SIGTERM flag; the caller enters it around the run (see ``train.job``).
    stop: GracefulStop = field(default_factory=GracefulStop)
    started_unix: float = field(default_factory=time.time)

    @property
    def pre(self) -> Preprocessing:
        return self.data.preprocessing

    @property
    def run_dir(self) -> Path:
        return self.files.path

    @property
    def loss_fn(self) -> nn.Module:
        """The configured metric-learning loss (the objective's first term)."""
        return self.objective.metric.loss_fn

    def step_for(self, epoch: int) -> TrainStep:
        """The step that trains ``epoch``: on cached frozen-layer features when it can."""
        if self.feature_cache is None:
            return self.step
        return self.feature_cache.step_for(epoch, self.step)

    def validate_here(self, state: Progress) -> VerificationMetrics | None:
        """Validation metrics of the model as it is, on this process (no collectives)."""
        self.model.eval()
        emb = None
        if self.feature_cache is not None and self.validator.enabled and not self.opt.schedule_free:
            emb = self.feature_cache.validation_embeddings(
                self.data.val_pixels,
                state.epoch,
                self.pre,
                self.device,
                self.cfg.machine.channels_last,
            )
        return self.validator.run(self.model, emb)

    def evaluate(self, state: Progress) -> tuple[VerificationMetrics | None, float]:
        """Validation metrics of the model as it is now, and the seconds they took.

        Leaves the model in eval mode (and a schedule-free optimizer at its averaged
        weights); the next epoch switches both back. Every process must call it (the
        BatchNorm re-estimation of schedule-free is collective); rank 0 validates, the
        others get ``None``.
        """
        if self.opt.schedule_free:
            self.opt.eval_mode()
            recalibrate_bn(
                self.model,
                self.data,
                self.pre,
                self.device,
                self.micro_batch,
                state.global_step,
                self.cfg.machine.channels_last,
                self.precision.dtype,
            )
        self.model.eval()
        if not self.ctx.is_main:
            return None, 0.0
        t = time.perf_counter()
        m = self.validate_here(state)
        return m, time.perf_counter() - t

    def checkpoint(self, m: VerificationMetrics | None, epoch: int, state: Progress) -> Checkpoint:
        """The model now, as a self-describing checkpoint with its validation threshold."""
        d = self.data
        return build_checkpoint(
            self.model,
            self.model_cfg,
            self.pre,
            m,
            self.cfg.run.calib_far,
            self.loss_fn,
            {
                "epoch": epoch,
                "global_step": state.global_step,
                "loss": self.cfg.objective.name,
                "optimizer": self.cfg.optim.name,
                "weights_source": self.weights_source,
                "init": self.finetune.info() if self.finetune is not None else None,
                "train_identities": len(d.train_identities),
                "train_images": d.train.n_labeled,
                "unlabeled_images": len(d.train) - d.train.n_labeled,
                "data": self.data_dirs,
                "val_identities": len(d.val_identities),
                "val_metrics": m.to_dict() if m else None,
                "config": self.cfg.to_dict(),
            },
        )

    def view(self, state: Progress) -> RunView:
        """The narrow window hooks get on this run."""
        return RunView(
            cfg=self.cfg,
            ctx=self.ctx,
            files=self.files,
            data=self.data,
            model=self.model,
            opt=self.opt,
            state=state,
            device=self.device,
            pre=self.pre,
            log=self.log,
            show_progress=self.show_progress,
            evaluate=lambda: self.evaluate(state),
            validate_here=lambda: self.validate_here(state),
            checkpoint=lambda m, epoch: self.checkpoint(m, epoch, state),
        )


def build_run(
    cfg: TrainConfig,
    data_dirs: Sequence[str | Path],
    run_dir: str | Path,
    state: Progress,
    *,
    ctx: DistContext | None = None,
    resume: dict[str, Any] | None = None,
    terms: Sequence[LossTerm] = (),
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Run:
    """Assemble a run of ``cfg`` on ``data_dirs`` into the existing folder ``run_dir``.

    ``state`` is the run's progress (the optimizer's schedule reads it); ``resume`` a saved
    state to continue from (:func:`~siamface.train.state.load_state`); ``terms`` extra loss
    terms added to the objective before the optimizer is made. Under torchrun every process
    builds its own run with its ``ctx``; rank 0 writes the files.
    """
    ctx = ctx or DistContext()
    files = RunDir(run_dir)
    dirs = [str(Path(d).expanduser().resolve()) for d in data_dirs]
    reporter = Reporter(files, log, progress, enabled=ctx.is_main)

    # Machine: device, threads, precision, and how the global batch splits.
    device = pick_device(cfg.machine.device, ctx.local_rank)
    if device.type == "cpu":
        torch.set_num_threads(threads_for(device, ctx.local_world_size))
    precision = precision_for(cfg.machine.precision, device)
    micro_batch = check_world(
        ctx, cfg.data.batch_size, cfg.data.m_per_class, cfg.machine.grad_accum
    )
    parts = ctx.world_size * cfg.machine.grad_accum
    if cfg.unlabeled_dirs() and cfg.distill.unlabeled_per_batch % parts:
        raise SiamfaceError(
            f"unlabeled_per_batch ({cfg.distill.unlabeled_per_batch}) must be a multiple of "
            f"processes x grad_accum ({parts}): each micro-batch gets an equal share"
        )
    if resume is None:
        seed_everything(cfg.run.seed)

    # Model and weights first: a bad backbone name, starting model or unreachable hub must
    # fail before minutes are spent decoding the dataset. A starting model (init) decides
    # architecture, sizes and preprocessing.
    finetune = FineTune.resolve(cfg)
    if finetune is not None:
        cfg = finetune.apply(cfg)
    log(f"run directory: {files.path}")
    model_cfg = ModelConfig(
        backbone=cfg.model.backbone,
        embedding_size=cfg.model.embedding_size,
        # a start that was centred by an earlier run keeps its centre (a fixed buffer)
        centred=finetune is not None and finetune.start.checkpoint.model_cfg.centred,
    )
    model = build_model(model_cfg)
    if resume is not None:
        weights_source = "resumed"
    elif finetune is not None:
        weights_source = finetune.load_into(model)
    else:
        weights_source = load_weights(model.backbone, cfg.model.backbone, cfg.model.pretrained)

    # Data: identity folders -> split by identity -> decoded pixels.
    data = prepare_run_data(
        cfg,
        dirs,
        progress=progress and ctx.is_main,
        ctx=ctx,
        base=finetune.preprocessing if finetune is not None else None,
    )
    reporter.dataset(data)
    if ctx.enabled and cfg.machine.sync_bn:
        model = convert_sync_batchnorm(model, device)
    model.to(device)
    if cfg.machine.channels_last:
        model.to(memory_format=torch.channels_last)

    # Which layers train when; frozen layers' features can be computed once.
    plugins: list[Hook] = []
    feature_cache = None
    freezes = bool(cfg.finetune.freeze_epochs or cfg.finetune.trainable != "all" or cfg.bn_frozen)
    if freezes:
        schedule = FreezeSchedule(cfg.finetune.freeze_epochs, cfg.finetune.trainable, cfg.bn_frozen)
        plugins.append(schedule)
        # Cached frozen-layer features bypass DDP's forward: one process only.
        if cache_possible(cfg) and not ctx.enabled:
            feature_cache = FeatureCache(schedule, model, len(data.train), log)
            data.train.with_index = True
    train_model = _wrap(model, cfg, ctx, device, freezes)

    # Objective: the configured loss (+ miner), the caller's terms, then the terms that need
    # other models' embeddings of the training images (the start's, the teachers').
    loss_fn = build_loss(cfg, len(data.train_identities))
    objective = Objective([MetricLossTerm(loss_fn, build_miner(cfg)), *terms]).to(device)
    if finetune is not None:
        finetune.add_anchor_terms(
            cfg,
            objective,
            model,
            model_cfg,
            data,
            files.path,
            device,
            resumed=resume is not None,
            is_main=ctx.is_main,
            feature_cache=feature_cache,
            progress=progress,
            log=log,
        )
        plugins.append(finetune)
    distill = teacher_term(cfg, data.train, progress=progress, log_fn=log)
    if distill is not None:
        objective.add(distill.to(device))
    if any(isinstance(t, DistillationTerm) for t in objective.terms):
        data.train.with_index = True
    objective.set_world(ctx.world_size, ctx.rank)  # after centres got their values

    # Optimizer: named parameter groups; the schedule reads its progress from ``state``.
    steps_per_epoch = max(1, data.train.n_labeled // cfg.data.batch_size)
    t_max = getattr(cfg.optim, "t_max", None)  # only the cosine presets have a period
    state.period_steps = (t_max or cfg.run.epochs) * steps_per_epoch
    state.budget_seconds = (cfg.run.time_budget_min or 0) * 60
    opt = build_optimizer(param_groups(model, objective, cfg), cfg, state)

    # Step: uint8 batch in, updated weights out.
    on_device = cfg.machine.augment_on == "device" or (
        cfg.machine.augment_on == "auto" and device.type == "cuda"
    )
    if on_device:
        data.train.transform = None  # the step augments whole batches instead
    step = TrainStep(
        train_model,
        objective,
        opt,
        device,
        data.preprocessing,
        cfg.machine.channels_last,
        precision.dtype,
        grad_scaler=precision.scaler,
        grad_accum=cfg.machine.grad_accum,
        augment=BatchAugment(cfg.data.augment) if on_device else None,
    )
    validator = Validator(
        data, data.preprocessing, device, cfg.machine.channels_last, cfg.run.calib_far
    )
    sampler = MPerClassSampler(
        data.train.labels[: data.train.n_labeled].tolist(),
        m=cfg.data.m_per_class,
        batch_size=cfg.data.batch_size,
        length_before_new_iter=steps_per_epoch * cfg.data.batch_size,
    )
    workers = (
        cfg.machine.num_workers
        if cfg.machine.num_workers >= 0
        else workers_for(device, ctx.local_world_size)
    )
    run = Run(
        cfg=cfg,
        ctx=ctx,
        files=files,
        data_dirs=dirs,
        log=log,
        show_progress=progress,
        device=device,
        precision=precision,
        micro_batch=micro_batch,
        model_cfg=model_cfg,
        model=model,
        train_model=train_model,
        weights_source=weights_source,
        data=data,
        objective=objective,
        opt=opt,
        step=step,
        validator=validator,
        sampler=sampler,
        workers=workers,
        steps_per_epoch=steps_per_epoch,
        reporter=reporter,
        feature_cache=feature_cache,
        finetune=finetune,
        plugins=plugins,
    )
    if resume is not None:
        restore_run(run, state, resume)
    elif ctx.is_main:
        files.write_meta(cfg.to_dict(), dirs, __version__)
    reporter.open_tensorboard()
    return run


def _wrap(
    model: nn.Module, cfg: TrainConfig, ctx: DistContext, device: torch.device, freezes: bool
) -> nn.Module:
    """The module the steps call: DDP across processes, torch.compile if asked."""
    wrapped = model
    if ctx.enabled:
        ids = [device.index] if device.type == "cuda" else None
        # A freeze schedule leaves parameters without gradients in some epochs.
        wrapped = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=freezes)
    if cfg.machine.compile:
        wrapped = torch.compile(wrapped)
    return wrapped
