"""The training loop: batches -> steps -> epochs, with validation, checkpoints and resume.

What it fixes relative to the article's script: validation on held-out *identities* every
epoch, "best" chosen by a validation metric instead of the training loss, checkpoints that
carry their own config and a calibrated threshold, resumable state, and a data pipeline that
keeps the cores on the model (decoded pixels in memory, augmentation in a loader worker,
channels-last, optional bf16 autocast).

The :class:`Trainer` only sequences the run. Its parts live next to it, one job each:
:mod:`~siamface.train.step` (one optimisation step), :mod:`~siamface.train.objective` (loss
terms), :mod:`~siamface.train.optim` (presets, parameter groups), :mod:`~siamface.train.
validation`, :mod:`~siamface.train.checkpoints`, :mod:`~siamface.train.state` (resume),
:mod:`~siamface.train.reporting` (log, TensorBoard, JSON) and
:mod:`~siamface.train.callbacks` (hooks for behaviour that is not the loop's own job).
Extension points are methods meant to be overridden or called: :meth:`Trainer.
build_objective`, :meth:`Trainer.build_param_groups` and :meth:`Trainer.evaluate`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from siamface.data.batch_augment import BatchAugment
from siamface.data.batches import rank_steps
from siamface.errors import SiamfaceError
from siamface.evaluate.metrics import VerificationMetrics
from siamface.faces.cache import file_digest
from siamface.model.checkpoint import Checkpoint
from siamface.model.network import ModelConfig, build_model
from siamface.system import heap_kept
from siamface.train.callbacks import Callback, CallbackList
from siamface.train.checkpoints import build_checkpoint, save_epoch_checkpoints
from siamface.train.config import TrainConfig, make_config
from siamface.train.data import RunData, prepare_run_data
from siamface.train.device import (  # noqa: F401 - use_bf16 re-exported
    pick_device,
    precision_for,
    threads_for,
    use_bf16,
    workers_for,
)
from siamface.train.distill import DistillationTerm, ensemble, teacher_embeddings
from siamface.train.distributed import (
    DistContext,
    agree,
    broadcast_object,
    check_world,
    convert_sync_batchnorm,
    init_distributed,
    shutdown,
)
from siamface.train.feature_cache import FeatureCacheSwitch, cache_possible
from siamface.train.freeze import FreezeSchedule
from siamface.train.interrupt import GracefulStop
from siamface.train.losses import build_loss, is_classifier
from siamface.train.miners import build_miner
from siamface.train.objective import MetricLossTerm, Objective
from siamface.train.optim import build_optimizer, param_groups
from siamface.train.partial_fc import reshard_optimizer_state
from siamface.train.reporting import EpochMeter, Reporter
from siamface.train.rundir import OutputError, RunDir
from siamface.train.start import (
    StartingModel,
    class_means,
    compare_with_start,
    embed_dataset,
    init_class_centres,
    not_worse,
)
from siamface.train.state import (
    Progress,
    capture_rng,
    load_state,
    restore_rng,
    save_state,
    seed_everything,
)
from siamface.train.step import StepResult, TrainStep
from siamface.train.validation import Validator, is_better, metric_value, recalibrate_bn
from siamface.train.verdict import final_verdict
from siamface.train.weights import load_weights
from siamface.version import __version__

#: Keys a resume may change: budgets and machine sizing, nothing that alters the model.
RESUME_OVERRIDABLE = frozenset(
    {"epochs", "time_budget_min", "save_every_min", "num_workers", "nproc", "grad_accum"}
)


def metric_record(m: VerificationMetrics, ckpt: Checkpoint) -> dict[str, Any]:
    """An epoch's validation numbers as history.json records them."""
    return {
        "val_auc": m.auc,
        "val_eer": m.eer,
        "val_tar_at_far_1e-3": m.tar_at_far.get("1e-03"),
        "val_accuracy": m.best_accuracy,
        "val_threshold": ckpt.threshold["value"] if ckpt.threshold else None,
    }


class TrainingInterrupted(SiamfaceError):
    """Raised after Ctrl-C once the resumable state has been saved."""


def _quiet(_: str) -> None:
    """The log of processes other than rank 0."""


def _worker_init(_: int) -> None:
    import signal

    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group; the main process decides when to stop (at a
    # step boundary) and shuts the workers down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Trainer:
    """Runs one training job into ``run_dir``; ``run()`` returns the summary dict."""

    def __init__(
        self,
        cfg: TrainConfig,
        data_dirs: list[str],
        run_dir: str | Path,
        progress: bool = True,
        log: Callable[[str], None] = print,
        callbacks: list[Callback] | None = None,
    ) -> None:
        self.cfg = cfg
        self.data_dirs = [str(Path(d).expanduser().resolve()) for d in data_dirs]
        self.run_dir = Path(run_dir)
        self.files = RunDir(self.run_dir)
        self.show_progress = progress
        self.log = log
        self.reporter = Reporter(self.files, log, progress)
        self.callbacks = CallbackList(callbacks)
        self.state = Progress()
        self.ctx = DistContext()
        self._resume_state: dict | None = None
        self._t0: float | None = None
        self._step_seeds: torch.Tensor | None = None
        self._started_unix: float | None = None
        self.first_step_unix: float | None = None  # when this process finished its first step

    @classmethod
    def resume(
        cls,
        run_dir: str | Path,
        overrides: list[str] | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
        callbacks: list[Callback] | None = None,
    ) -> Trainer:
        """Continue a run from its saved state; only budget-like keys may be overridden."""
        meta = RunDir(run_dir).read_meta()
        for o in overrides or []:
            key = o.split("=", 1)[0]
            if key not in RESUME_OVERRIDABLE:
                raise SiamfaceError(
                    f"cannot change {key!r} when resuming; "
                    f"only {', '.join(sorted(RESUME_OVERRIDABLE))}"
                )
        cfg = make_config(base=meta["config"], overrides=overrides)
        trainer = cls(cfg, meta["data"], run_dir, progress=progress, log=log, callbacks=callbacks)
        trainer._resume_state = load_state(Path(run_dir))
        return trainer

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        self.device = pick_device(cfg.device, ctx.local_rank)
        if self.device.type == "cpu":
            torch.set_num_threads(threads_for(self.device, ctx.local_world_size))
        self.precision = precision_for(cfg.precision, self.device)
        self.autocast = self.precision.dtype
        self.bf16 = self.autocast is torch.bfloat16
        self.micro_batch = check_world(ctx, cfg.batch_size, cfg.m_per_class, cfg.grad_accum)
        parts = ctx.world_size * cfg.grad_accum
        if cfg.unlabeled_dirs() and cfg.unlabeled_per_batch % parts:
            raise SiamfaceError(
                f"unlabeled_per_batch ({cfg.unlabeled_per_batch}) must be a multiple of "
                f"processes x grad_accum ({parts}): each micro-batch gets an equal share"
            )
        if self._resume_state is None:
            seed_everything(cfg.seed)
        # The starting model (init) decides architecture, sizes and preprocessing; it is
        # resolved first so that a bad name or file fails before any work.
        self.start = StartingModel.resolve(cfg.init) if cfg.init else None
        if self.start is not None:
            cfg = self.cfg = self.start.apply(cfg)
        self.log(f"run directory: {self.run_dir}")
        # Model and weights first: a bad backbone name or an unreachable hub must fail before
        # minutes are spent decoding the dataset.
        self.model_cfg = ModelConfig(backbone=cfg.backbone, embedding_size=cfg.embedding_size)
        self.model = build_model(self.model_cfg)
        if self._resume_state is not None:
            self.weights_source = "resumed"
        elif self.start is not None:
            self.model.load_state_dict(self.start.checkpoint.state_dict)
            self.weights_source = f"init {self.start.name}"
        else:
            self.weights_source = load_weights(self.model.backbone, cfg.backbone, cfg.pretrained)
        self.data: RunData = prepare_run_data(
            cfg,
            self.data_dirs,
            progress=self.show_progress and ctx.is_main,
            ctx=ctx,
            base=self.start.preprocessing if self.start is not None else None,
        )
        self.reporter.dataset(self.data)
        self.pre = self.data.preprocessing
        if ctx.enabled and cfg.sync_bn:
            self.model = convert_sync_batchnorm(self.model, self.device)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.feature_cache: FeatureCacheSwitch | None = None
        if self._freezes():
            schedule = FreezeSchedule(cfg.freeze_epochs, cfg.trainable, cfg.bn_frozen)
            self.callbacks.callbacks.append(schedule)
            # Cached frozen-layer features bypass DDP's forward: one process only.
            if cache_possible(cfg) and not ctx.enabled:
                self.feature_cache = FeatureCacheSwitch(schedule, self.model, len(self.data.train))
                self.callbacks.callbacks.append(self.feature_cache)
                self.data.train.with_index = True
        self.train_model = self._wrap(self.model)
        self.objective = self.build_objective().to(self.device)
        self._add_reference_terms()
        self.objective.set_world(ctx.world_size, ctx.rank)  # after centres got their values
        self.steps_per_epoch = max(1, self.data.train.n_labeled // cfg.batch_size)
        self.opt = build_optimizer(self.build_param_groups(), cfg, self._schedule_progress)
        on_device = cfg.augment_on == "device" or (
            cfg.augment_on == "auto" and self.device.type == "cuda"
        )
        if on_device:
            self.data.train.transform = None  # the step augments whole batches instead
        self.step_fn = TrainStep(
            self.train_model,
            self.objective,
            self.opt,
            self.device,
            self.pre,
            cfg.channels_last,
            self.autocast,
            grad_scaler=self.precision.scaler,
            grad_accum=cfg.grad_accum,
            augment=BatchAugment(cfg.augment) if on_device else None,
        )
        self.validator = Validator(
            self.data, self.pre, self.device, cfg.channels_last, cfg.calib_far
        )
        from pytorch_metric_learning.samplers import MPerClassSampler

        self.sampler = MPerClassSampler(
            self.data.train.labels[: self.data.train.n_labeled].tolist(),
            m=cfg.m_per_class,
            batch_size=cfg.batch_size,
            length_before_new_iter=self.steps_per_epoch * cfg.batch_size,
        )
        self.workers = (
            cfg.num_workers
            if cfg.num_workers >= 0
            else workers_for(self.device, ctx.local_world_size)
        )
        if self._resume_state is not None:
            self.load_state_dict(self._resume_state)
        elif ctx.is_main:
            self.files.write_meta(cfg.to_dict(), self.data_dirs, __version__)
        self.reporter.open_tensorboard()

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the steps call: DDP across processes, torch.compile if asked."""
        wrapped = model
        if self.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # A freeze schedule leaves parameters without gradients in some epochs.
            wrapped = DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=self._freezes()
            )
        if self.cfg.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    def _freezes(self) -> bool:
        cfg = self.cfg
        return bool(cfg.freeze_epochs or cfg.trainable != "all" or cfg.bn_frozen)

    @property
    def loss_fn(self) -> torch.nn.Module:
        """The configured metric-learning loss (the objective's first term)."""
        return self.objective.metric.loss_fn

    def build_objective(self) -> Objective:
        """The loss terms of this run: the configured loss (+ miner). Override or extend
        (``objective.add(term)``) to train with extra terms such as distillation."""
        loss_fn = build_loss(self.cfg, len(self.data.train_identities))
        return Objective([MetricLossTerm(loss_fn, build_miner(self.cfg))])

    def _add_reference_terms(self) -> None:
        """Loss terms and initial values that need other models' embeddings of the training
        images: the starting model's (``keep_close``, class-mean centres) and the teachers'
        (distillation). Computed once per run; teacher embeddings are cached on disk."""
        cfg = self.cfg
        train = self.data.train
        dim = cfg.embedding_size
        classifier = is_classifier(cfg.loss)
        need_start = self.start is not None and (
            cfg.keep_close > 0 or (classifier and cfg.class_mean_centres)
        )
        if need_start:
            ref = self._start_embeddings()
            if self.data.train_source is not None:
                # Degraded copies are anchored to the start's embedding of the clean image:
                # the camera should not move a face away from where the start put it.
                ref = ref[torch.as_tensor(self.data.train_source)]
            if classifier and cfg.class_mean_centres and self._resume_state is None:
                n = train.n_labeled
                centres = class_means(ref[:n], train.labels[:n], len(self.data.train_identities))
                if init_class_centres(self.loss_fn, centres):
                    self.log("class centres start at each identity's mean embedding")
            if cfg.keep_close > 0:
                self.objective.add(
                    DistillationTerm(
                        "keep_close",
                        ref,
                        torch.ones(len(ref), dtype=torch.bool),
                        dim,
                        cfg.keep_close,
                        0.0,
                    ).to(self.device)
                )
        if self.start is not None and cfg.l2sp > 0:
            from siamface.train.l2sp import L2SPTerm

            start_state = self.start.checkpoint.state_dict
            self.objective.add(L2SPTerm(self.model, start_state, cfg.l2sp).to(self.device))
        teachers = cfg.teachers()
        if teachers:
            if train.paths is None:
                raise SiamfaceError("distillation needs the training images' file paths")
            digests = [file_digest(p) for p in train.paths]
            parts, masks = [], []
            for spec in teachers:
                emb, ok = teacher_embeddings(
                    spec, train.paths, digests, progress=self.show_progress, log_fn=self.log
                )
                parts.append(emb)
                masks.append(ok)
                self.log(f"teacher {spec}: {int(ok.sum())}/{len(ok)} training images embedded")
            targets, valid = ensemble(parts, masks)
            self.objective.add(
                DistillationTerm(
                    "distill",
                    torch.from_numpy(targets),
                    torch.from_numpy(valid),
                    dim,
                    cfg.distill_embedding,
                    cfg.distill_relational,
                ).to(self.device)
            )
        if any(isinstance(t, DistillationTerm) for t in self.objective.terms):
            self.data.train.with_index = True

    def _start_embeddings(self) -> torch.Tensor:
        """The starting model's embedding of every training image (kept in the run folder,
        so a resume, whose model is no longer the start, reuses them)."""
        from safetensors.torch import load_file, save_file

        path = self.run_dir / "start_embeddings.safetensors"
        if path.is_file():
            t = load_file(str(path))["embeddings"]
            if len(t) == len(self.data.train):
                return t
        if self._resume_state is not None:
            model = build_model(self.model_cfg)
            model.load_state_dict(self.start.checkpoint.state_dict)
            model.to(self.device)
        else:
            model = self.model
        self.log(f"embedding {len(self.data.train)} training images with the starting model")
        t = None
        if model is self.model and self.feature_cache is not None:
            t = self.feature_cache.prefill(self)  # one forward pass fills the cache too
        if t is None:
            t = embed_dataset(
                model, self.data.train, self.pre, self.device, progress=self.show_progress
            )
        t = t.contiguous()
        if self.ctx.is_main:
            save_file({"embeddings": t}, str(path))
        return t

    def build_param_groups(self) -> list[dict[str, Any]]:
        """Named optimizer groups (``backbone``, ``head``, ``loss``) with their lr. Override
        for per-group learning rates; freezing is a callback setting ``requires_grad``."""
        return param_groups(self.model, self.objective, self.cfg)

    def _schedule_progress(self) -> float:
        """Fraction of the cosine period done: steps over ``t_max`` epochs, or the share of
        the time budget spent, whichever is further."""
        cfg = self.cfg
        p = self.state.global_step / ((cfg.t_max or cfg.epochs) * self.steps_per_epoch)
        if cfg.time_budget_min:
            p = max(p, (self.state.train_seconds + self._elapsed()) / (cfg.time_budget_min * 60))
        return p

    # ------------------------------------------------------------------ state
    def state_dict(self, epoch_start_rng: dict) -> dict[str, Any]:
        """Everything a resume needs to continue exactly where this run is now (the same
        whatever the number of processes: batches and counters are global)."""
        optim = self.opt.state_dict()
        reshard_optimizer_state(optim["optimizer"], self.opt.optimizer, self.objective, True)
        return {
            "model": self.model.state_dict(),
            "loss": self.objective.state_dict(),
            "optim": optim,
            "grad_scaler": self.step_fn.scaler.state_dict(),
            **self.state.to_state(self._elapsed()),
            "epoch_start_rng": epoch_start_rng,
            # MPerClassSampler shuffles its label list in place every epoch, so its order is
            # state that the next epoch's batches depend on.
            "sampler_labels_at_epoch_start": self._sampler_labels_at_epoch_start,
        }

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.model.load_state_dict(st["model"])
        self.objective.load_state_dict(st["loss"])
        reshard_optimizer_state(st["optim"]["optimizer"], self.opt.optimizer, self.objective, False)
        self.opt.load_state_dict(st["optim"])
        if st.get("grad_scaler"):
            self.step_fn.scaler.load_state_dict(st["grad_scaler"])
        self.state = Progress.from_state(st)
        self._epoch_start_rng = st["epoch_start_rng"]
        # Replaying the epoch from its start needs the sampler as it was then.
        self.sampler.labels = list(st["sampler_labels_at_epoch_start"])
        self.log(
            f"resuming at epoch {self.state.epoch + 1}, step {self.state.step_in_epoch} "
            f"({self.state.train_seconds / 60:.1f} min already trained)"
        )

    def save_state(self, epoch_start_rng: dict) -> None:
        """Rank 0 writes the state; every rank learns whether that worked."""
        error: OutputError | None = None
        state = self.state_dict(epoch_start_rng)  # collective when centres are sharded
        if self.ctx.is_main:
            try:
                save_state(self.run_dir, state)
            except OutputError as err:
                error = err
        message = broadcast_object(self.ctx, str(error) if error else None)
        if error is not None:
            raise error
        if message:
            raise OutputError(message)

    def _elapsed(self) -> float:
        return time.perf_counter() - self._t0 if self._t0 is not None else 0.0

    def _out_of_time(self) -> bool:
        b = self.cfg.time_budget_min
        return bool(b) and self.state.train_seconds + self._elapsed() >= b * 60

    # ------------------------------------------------------------------ steps
    def _train_step(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None
    ) -> StepResult:
        if self._step_seeds is None:
            return self.step_fn(x, y, index)
        return self.step_fn(x, y, index, seeds=self._step_seeds)

    def _epoch_steps(self) -> list[list[tuple[int, int]]]:
        """This process's ``(image index, augmentation seed)`` lists, one per remaining step.

        The epoch's global order, the unlabeled faces added to each batch (distillation) and
        one augmentation seed per image are all drawn from the RNG state at the epoch's start,
        which a resume restores: the same batches and the same augmentation of every image,
        however many batches are then skipped as already trained and however many processes
        share them.
        """
        cfg, ctx, train = self.cfg, self.ctx, self.data.train
        order = [int(i) for i in iter(self.sampler)]
        extra = None
        if train.n_labeled < len(train):
            n_batches = len(order) // cfg.batch_size
            u = cfg.unlabeled_per_batch
            extra = torch.randint(train.n_labeled, len(train), (n_batches, u)).tolist()
        epoch_seed = int(torch.randint(0, 2**62, (1,)).item())
        keyed = [(i, epoch_seed + k) for k, i in enumerate(order)]
        extra_keyed = None
        if extra is not None:
            base = epoch_seed + len(order)
            extra_keyed = [
                [(i, base + j * len(row) + t) for t, i in enumerate(row)]
                for j, row in enumerate(extra)
            ]
        steps = rank_steps(
            keyed, cfg.batch_size, ctx.world_size, ctx.rank, cfg.grad_accum, extra_keyed
        )
        return steps[self.state.step_in_epoch :]

    def _loader(self, steps: list[list[tuple[int, int]]]) -> DataLoader:
        return DataLoader(
            self.data.train,
            batch_sampler=steps,
            num_workers=self.workers,
            worker_init_fn=_worker_init,
            prefetch_factor=4 if self.workers else None,
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
        )

    def _run_epoch(self, epoch_start_rng: dict, last_save: list[float]) -> EpochMeter:
        """Train through the rest of the current epoch (or until the time budget ends)."""
        cfg, s, ctx = self.cfg, self.state, self.ctx
        self._sampler_labels_at_epoch_start = list(map(int, self.sampler.labels))
        steps = self._epoch_steps()
        loader = self._loader(steps)
        self.model.train()
        self.opt.train_mode()
        self.callbacks.on_epoch_start(self)
        meter = self.reporter.epoch_meter(
            self.steps_per_epoch, s.step_in_epoch, f"epoch {s.epoch + 1}/{cfg.epochs}"
        )
        for j, batch in enumerate(loader):
            # (mid-epoch, the all-reduce after each step already agreed on this)
            if (j == 0 or not ctx.enabled) and agree(ctx, [self.stop.requested], self.device)[0]:
                self.stop.requested = self.stop.requested or "a signal to another process"
                break
            if self.step_fn.augment is not None and self.step_fn.augment.enabled:
                self._step_seeds = torch.tensor([sd for _, sd in steps[j]])
            result = self._train_step(*batch)  # (images, labels[, dataset indices])
            result.images *= ctx.world_size
            if not math.isfinite(result.loss):
                raise SiamfaceError(
                    f"loss became {result.loss} at step {s.global_step}: lower lr "
                    f"(now {cfg.lr}) or use precision=fp32"
                )
            s.step_in_epoch += 1
            s.global_step += 1
            if self.first_step_unix is None:
                self.first_step_unix = time.time()
                self.log(
                    f"first step after {self.first_step_unix - (self._started_unix or 0):.1f} s"
                )
            self.reporter.step(meter, result, self.opt.lr(), s.global_step)
            self.callbacks.on_step_end(self, result)
            stop, out_of_time, save_due = agree(
                ctx,
                [
                    bool(self.stop.requested),
                    self._out_of_time(),
                    time.perf_counter() - last_save[0] > cfg.save_every_min * 60,
                ],
                self.device,
            )
            if stop:
                self.stop.requested = self.stop.requested or "a signal to another process"
            if stop or out_of_time:
                break
            if save_due:
                self.save_state(epoch_start_rng)
                last_save[0] = time.perf_counter()
        meter.close()
        return meter

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        """Train until the epochs or the time budget are done; returns the summary.

        The run directory is locked for the whole run; Ctrl-C or SIGTERM stop at the next step
        boundary, save the state and raise :class:`TrainingInterrupted`. Under torchrun every
        process calls this; rank 0 writes the files.
        """
        self._started_unix = time.time()
        self.ctx = init_distributed(self.cfg.device)
        if not self.ctx.is_main:
            self.log = _quiet
            self.reporter = Reporter(self.files, _quiet, False, enabled=False)
        try:
            with contextlib.ExitStack() as stack:
                error: SiamfaceError | None = None
                if self.ctx.is_main:
                    try:
                        self.files.create()
                        stack.enter_context(self.files.lock())
                    except SiamfaceError as err:
                        error = err
                message = broadcast_object(self.ctx, str(error) if error else None)
                if error is not None:
                    raise error
                if message:
                    raise SiamfaceError(message)
                self.stop = stack.enter_context(GracefulStop(self.log))
                try:
                    self._setup()
                    cpu = self.device.type == "cpu"
                    if stack.enter_context(heap_kept(self.cfg.keep_heap and cpu)):
                        self.log("CPU heap kept between steps (keep_heap=true)")
                    return self._train()
                finally:
                    self.reporter.close()
        finally:
            shutdown(self.ctx)

    def _train(self) -> dict[str, Any]:
        cfg, s = self.cfg, self.state
        ctx = self.ctx
        procs = f", {ctx.world_size} processes ({ctx.backend})" if ctx.enabled else ""
        self.log(
            f"model: {cfg.backbone} ({self.weights_source}) -> {cfg.embedding_size}-d, "
            f"{cfg.image_size}px; loss {cfg.loss}, miner {cfg.miner}, {cfg.optimizer}; "
            f"device {self.device} {self.precision.name}{procs}, "
            f"{self.workers} loader worker(s)"
        )
        self._t0 = time.perf_counter()
        epoch_start_rng = getattr(self, "_epoch_start_rng", None)
        last_save = [time.perf_counter()]
        stop_reason = f"{cfg.epochs} epochs done"
        self.callbacks.on_train_start(self)
        if self.start is not None and not s.history:
            self.validate_start()
        try:
            while s.epoch < cfg.epochs:
                if agree(ctx, [self._out_of_time()], self.device)[0]:
                    stop_reason = f"time budget of {cfg.time_budget_min} min reached"
                    break
                if epoch_start_rng is not None:
                    # Resuming: replay this epoch's RNG so the sampler yields the same order,
                    # then skip the batches that were already trained on.
                    restore_rng(epoch_start_rng)
                else:
                    epoch_start_rng = capture_rng()
                    s.step_in_epoch = 0
                meter = self._run_epoch(epoch_start_rng, last_save)
                if self.stop.requested:
                    raise KeyboardInterrupt
                finished = s.step_in_epoch >= self.steps_per_epoch
                if finished:
                    s.epoch += 1
                    s.step_in_epoch = 0
                self.end_epoch(meter, finished)
                # A finished epoch resumes at the next one (fresh RNG snapshot); a partial one
                # resumes inside this epoch, so it keeps this epoch's starting snapshot.
                resume_rng = capture_rng() if finished else epoch_start_rng
                if finished:
                    self._sampler_labels_at_epoch_start = list(map(int, self.sampler.labels))
                self.save_state(resume_rng)
                epoch_start_rng = None
                last_save[0] = time.perf_counter()
                if not finished:
                    stop_reason = f"time budget of {cfg.time_budget_min} min reached"
                    break
        except KeyboardInterrupt:
            if self.step_fn.in_step:
                # A second Ctrl-C landed inside a step: the weights are half-updated.
                raise TrainingInterrupted(
                    f"aborted during step {s.global_step + 1}; nothing saved now, the last "
                    f"saved state is kept. Continue with: siamface train --resume {self.run_dir}"
                ) from None
            self.save_state(epoch_start_rng or capture_rng())
            raise TrainingInterrupted(
                f"interrupted at epoch {s.epoch + 1}, step {s.step_in_epoch}; state saved. "
                f"Continue with: siamface train --resume {self.run_dir}"
            ) from None
        self.reporter.close()
        summary = self.reporter.summary(
            stop_reason,
            s,
            s.train_seconds + self._elapsed(),
            cfg.select_metric,
            cfg.calib_far,
            len(self.data.val_identities),
            extra={"first_step_unix": self.first_step_unix, "data_scan": self.data.scan},
        )
        start = self.start_record()
        if start is not None and summary.get("best"):
            summary["vs_start"] = compare_with_start(summary["best"], start)
            summary["init"] = self.start.info()
            self.log(summary["vs_start"]["verdict"])
            if self.ctx.is_main:
                verdict = final_verdict(self)
                if verdict is not None:
                    summary["verdict"] = verdict
                    self.log(verdict["verdict"])
            self.files.write_json("summary.json", summary)
        self.callbacks.on_train_end(self, summary)
        return summary

    def start_record(self) -> dict[str, Any] | None:
        """The history entry of the starting model (epoch 0), if this run has one."""
        return next((h for h in self.state.history if h.get("epoch") == 0), None)

    def validate_start(self) -> None:
        """Epoch 0: the starting model on the validation identities, saved as the first
        ``best`` so that a fine-tune that never beats it leaves the start as the result."""
        s = self.state
        m, val_time = self.evaluate()
        if not self.ctx.is_main:  # rank 0 validates and writes; the others get the record
            record, s.best_value, s.best_epoch = broadcast_object(self.ctx, None)
            s.history.append(record)
            self.opt.train_mode()
            return
        record: dict[str, Any] = {
            "epoch": 0,
            "complete": True,
            "train_loss": None,
            "lr": None,
            "images_per_s": None,
            "epoch_seconds": 0.0,
            "val_seconds": val_time,
            "starting_model": self.start.name,
        }
        ckpt = self.checkpoint(m, 0)
        if m is not None:
            record |= metric_record(m, ckpt)
            s.best_value, s.best_epoch = metric_value(m, self.cfg.select_metric), 0
        broadcast_object(self.ctx, (record, s.best_value, s.best_epoch))
        save_epoch_checkpoints(ckpt, self.run_dir, best=True)
        s.history.append(record)
        self.files.write_json("history.json", s.history)
        self.log(
            f"epoch 0 (starting model {self.start.name})"
            + (f": val {m.headline()}" if m is not None else "")
        )
        self.opt.train_mode()

    # ------------------------------------------------------------------ epoch end
    def evaluate(self) -> tuple[VerificationMetrics | None, float]:
        """Validation metrics of the model as it is now, and the seconds they took.

        Leaves the model in eval mode (and a schedule-free optimizer at its averaged
        weights); the next epoch switches both back. Callable from a callback, e.g. to
        score the starting weights before the first epoch. Every process must call it (the
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
                self.state.global_step,
                self.cfg.channels_last,
                self.autocast,
            )
        self.model.eval()
        if not self.ctx.is_main:
            return None, 0.0
        t = time.perf_counter()
        emb = None
        if self.feature_cache is not None and self.validator.enabled:
            emb = self.feature_cache.validation_embeddings(self)
        m = self.validator.run(self.model, emb)
        return m, time.perf_counter() - t

    def checkpoint(self, m: VerificationMetrics | None, epoch: int) -> Checkpoint:
        """The model now, as a self-describing checkpoint with its validation threshold."""
        return build_checkpoint(
            self.model,
            self.model_cfg,
            self.pre,
            m,
            self.cfg.calib_far,
            self.loss_fn,
            {
                "epoch": epoch,
                "global_step": self.state.global_step,
                "loss": self.cfg.loss,
                "optimizer": self.cfg.optimizer,
                "weights_source": self.weights_source,
                "init": self.start.info() if self.start is not None else None,
                "train_identities": len(self.data.train_identities),
                "train_images": self.data.train.n_labeled,
                "unlabeled_images": len(self.data.train) - self.data.train.n_labeled,
                "data": self.data_dirs,
                "val_identities": len(self.data.val_identities),
                "val_metrics": m.to_dict() if m else None,
                "config": self.cfg.to_dict(),
            },
        )

    def end_epoch(self, meter: EpochMeter, finished: bool) -> VerificationMetrics | None:
        """Validate, keep best/last checkpoints, record the epoch, step epoch schedules.

        Rank 0 validates and writes; the other processes receive the record, so every
        process steps its schedule with the same metric and keeps the same history."""
        cfg, s = self.cfg, self.state
        m, val_time = self.evaluate()
        if not self.ctx.is_main:
            record, best, eer, failed = broadcast_object(self.ctx, None)
            if failed:
                raise OutputError(failed)
            s.best_value, s.best_epoch = best
            if eer is not None:
                self.opt.epoch_schedule(eer)
            s.history.append(record)
            self.opt.train_mode()
            self.callbacks.on_epoch_end(self, record)
            return None
        record: dict[str, Any] = {
            "epoch": s.epoch if finished else s.epoch + 1,
            "complete": finished,
            "train_loss": meter.mean_loss,
            "lr": self.opt.lr(),
            "images_per_s": meter.seen / meter.seconds if meter.seconds > 0 else None,
            "images_per_s_steady": meter.steady_images_per_s,
            "epoch_seconds": meter.seconds,
            "val_seconds": val_time,
        }
        ckpt = self.checkpoint(m, record["epoch"])
        improved = m is None  # no validation identities: "best" is simply the latest model
        if m is not None:
            record |= metric_record(m, ckpt)
            value = metric_value(m, cfg.select_metric)
            improved = is_better(value, s.best_value, cfg.select_metric)
            start = self.start_record()
            if improved and cfg.not_worse and start is not None and not not_worse(record, start):
                improved = False
                self.log(
                    f"epoch {record['epoch']} is worse than the starting model on a validation "
                    "metric: not kept as best"
                )
            if improved:
                s.best_value, s.best_epoch = value, record["epoch"]
        error: OutputError | None = None
        try:
            save_epoch_checkpoints(ckpt, self.run_dir, best=improved)
        except OutputError as err:
            error = err
        broadcast_object(
            self.ctx,
            (
                record,
                (s.best_value, s.best_epoch),
                m.eer if m is not None else None,
                str(error) if error else None,
            ),
        )
        if error is not None:
            raise error
        if m is not None:
            self.opt.epoch_schedule(m.eer)
        s.history.append(record)
        self.reporter.epoch(record, m, improved and m is not None, s.history, s.global_step)
        self.opt.train_mode()
        self.callbacks.on_epoch_end(self, record)
        return m
