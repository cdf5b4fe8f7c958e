"""The training loop: batches -> loss -> step, validation on unseen people, checkpoints.

What it fixes relative to the article's script: validation on held-out *identities* every
epoch, "best" chosen by a validation metric instead of the training loss, checkpoints that
carry their own config and a calibrated threshold, resumable state, and a data pipeline that
keeps the cores on the model (decoded pixels in memory, augmentation in a loader worker,
channels-last, optional bf16 autocast).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from siamface.data.transforms import normalize_batch
from siamface.embed import embed_uint8, plain_loader
from siamface.errors import SiamfaceError
from siamface.evaluate.metrics import (
    DEFAULT_FARS,
    VerificationMetrics,
    all_pair_scores,
    threshold_record,
    verification_metrics,
)
from siamface.model.checkpoint import Checkpoint, atomic_write, save_checkpoint
from siamface.model.network import ModelConfig, build_model
from siamface.model.pretrained import load_pretrained
from siamface.system import loader_workers, usable_cpus
from siamface.train.config import TrainConfig, make_config
from siamface.train.data import RunData, prepare_run_data
from siamface.train.losses import build_loss, build_miner
from siamface.train.optim import build_optimizer, param_groups
from siamface.train.state import capture_rng, load_state, restore_rng, save_state, seed_everything
from siamface.version import __version__

#: Impostor pairs scored per validation (all genuine pairs are always kept).
VAL_MAX_IMPOSTORS = 2_000_000
HIGHER_IS_BETTER = {"auc": True, "eer": False, "tar_at_far_1e-3": True, "accuracy": True}


class TrainingInterrupted(SiamfaceError):
    """Raised after Ctrl-C once the resumable state has been saved."""


@dataclass
class Progress:
    """Counters that survive a resume."""

    epoch: int = 0  # epochs fully completed
    step_in_epoch: int = 0
    global_step: int = 0
    train_seconds: float = 0.0  # wall time spent in this run, across resumes
    best_value: float | None = None
    best_epoch: int | None = None
    history: list[dict] = field(default_factory=list)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SiamfaceError("device=cuda requested but CUDA is not available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast: on by default on CUDA GPUs that support it. On CPU it is opt-in
    (``precision=bf16``): measured on this project's AVX512-BF16/AMX machine it was not faster
    for the depthwise-convolution backbones we default to (see bench/train_throughput.py)."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class Trainer:
    """Runs one training job into ``run_dir``; ``run()`` returns the summary dict."""

    def __init__(
        self,
        cfg: TrainConfig,
        data_dirs: list[str],
        run_dir: str | Path,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        self.cfg = cfg
        self.data_dirs = [str(Path(d).expanduser().resolve()) for d in data_dirs]
        self.run_dir = Path(run_dir)
        self.show_progress = progress
        self.log = log
        self.state = Progress()
        self._resume_state: dict | None = None

    # ------------------------------------------------------------------ set-up
    @classmethod
    def resume(
        cls,
        run_dir: str | Path,
        overrides: list[str] | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ) -> Trainer:
        """Continue a run from its saved state; only budget-like keys may be overridden."""
        run_dir = Path(run_dir)
        meta_path = run_dir / "run.json"
        if not meta_path.is_file():
            raise SiamfaceError(f"{run_dir} is not a siamface run directory (no run.json)")
        meta = json.loads(meta_path.read_text())
        allowed = {"epochs", "time_budget_min", "save_every_min", "num_workers"}
        for o in overrides or []:
            if o.split("=", 1)[0] not in allowed:
                raise SiamfaceError(
                    f"cannot change {o.split('=', 1)[0]!r} when resuming; "
                    f"only {', '.join(sorted(allowed))}"
                )
        cfg = make_config(base=meta["config"], overrides=overrides)
        trainer = cls(cfg, meta["data"], run_dir, progress=progress, log=log)
        trainer._resume_state = load_state(run_dir)
        return trainer

    def _setup(self) -> None:
        cfg = self.cfg
        self.device = pick_device(cfg.device)
        if self.device.type == "cpu":
            torch.set_num_threads(usable_cpus())
        self.bf16 = use_bf16(cfg.precision, self.device)
        if self._resume_state is None:
            seed_everything(cfg.seed)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log(f"run directory: {self.run_dir}")
        # Model and weights first: a bad backbone name or an unreachable hub must fail before
        # minutes are spent decoding the dataset.
        self.model_cfg = ModelConfig(backbone=cfg.backbone, embedding_size=cfg.embedding_size)
        self.model = build_model(self.model_cfg)
        if self._resume_state is None:
            self.weights_source = load_pretrained(self.model.backbone, cfg.backbone, cfg.pretrained)
        else:
            self.weights_source = "resumed"
        self.data: RunData = prepare_run_data(cfg, self.data_dirs, progress=self.show_progress)
        self._write_report()
        self.pre = self.data.preprocessing
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.loss_fn = build_loss(cfg, len(self.data.train_identities)).to(self.device)
        self.miner = build_miner(cfg)
        n = len(self.data.train)
        self.steps_per_epoch = max(1, n // cfg.batch_size)
        t_max_steps = (cfg.t_max or cfg.epochs) * self.steps_per_epoch
        budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min else None

        def progress_fraction() -> float:
            p = self.state.global_step / t_max_steps
            if budget_s:
                p = max(p, (self.state.train_seconds + self._elapsed()) / budget_s)
            return p

        self.opt = build_optimizer(
            param_groups(self.model, self.loss_fn, cfg), cfg, progress_fraction
        )
        from pytorch_metric_learning.samplers import MPerClassSampler

        self.sampler = MPerClassSampler(
            self.data.train.labels.tolist(),
            m=cfg.m_per_class,
            batch_size=cfg.batch_size,
            length_before_new_iter=self.steps_per_epoch * cfg.batch_size,
        )
        if cfg.num_workers >= 0:
            self.workers = cfg.num_workers
        else:
            self.workers = loader_workers()
        if self._resume_state is not None:
            self._load_resume_state(self._resume_state)
        else:
            meta = {"config": cfg.to_dict(), "data": self.data_dirs, "siamface": __version__}
            atomic_write(
                self.run_dir / "run.json",
                lambda p: p.write_text(json.dumps(meta, indent=1)),
            )
            atomic_write(
                self.run_dir / "config.yaml",
                lambda p: p.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)),
            )
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def _write_report(self) -> None:
        d = self.data
        rep = d.report.to_dict() | {
            "train_identities": len(d.train_identities),
            "val_identities": len(d.val_identities),
            "train_images": len(d.train),
            "val_images": len(d.val_labels),
            "excluded_cross_identity_duplicates": d.excluded_cross_duplicates,
            "val_identity_names": d.val_identities,
        }
        atomic_write(
            self.run_dir / "dataset_report.json",
            lambda p: p.write_text(json.dumps(rep, indent=1, ensure_ascii=False)),
        )
        self.log("dataset report:")
        for line in d.report.summary_lines():
            self.log(f"  {line}")
        self.log(
            f"  split by identity: {len(d.train_identities)} train identities "
            f"({len(d.train)} images), {len(d.val_identities)} validation identities "
            f"({len(d.val_labels)} images)"
        )
        if d.excluded_cross_duplicates:
            self.log(
                f"  {d.excluded_cross_duplicates} files duplicated across identities were left "
                "out of training and validation"
            )

    # ------------------------------------------------------------------ state
    def _state_dict(self, epoch_start_rng: dict) -> dict:
        s = self.state
        return {
            "model": self.model.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "optim": self.opt.state_dict(),
            "epoch": s.epoch,
            "step_in_epoch": s.step_in_epoch,
            "global_step": s.global_step,
            "train_seconds": s.train_seconds + self._elapsed(),
            "best_value": s.best_value,
            "best_epoch": s.best_epoch,
            "history": json.dumps(s.history),
            "epoch_start_rng": epoch_start_rng,
            # MPerClassSampler shuffles its label list in place every epoch, so its order is
            # state that the next epoch's batches depend on.
            "sampler_labels_at_epoch_start": self._sampler_labels_at_epoch_start,
        }

    def _load_resume_state(self, st: dict) -> None:
        self.model.load_state_dict(st["model"])
        self.loss_fn.load_state_dict(st["loss"])
        self.opt.load_state_dict(st["optim"])
        self.state = Progress(
            epoch=int(st["epoch"]),
            step_in_epoch=int(st["step_in_epoch"]),
            global_step=int(st["global_step"]),
            train_seconds=float(st["train_seconds"]),
            best_value=st["best_value"],
            best_epoch=st["best_epoch"],
            history=json.loads(st["history"]),
        )
        self._epoch_start_rng = st["epoch_start_rng"]
        # Replaying the epoch from its start needs the sampler as it was then.
        self.sampler.labels = list(st["sampler_labels_at_epoch_start"])
        self.log(
            f"resuming at epoch {self.state.epoch + 1}, step {self.state.step_in_epoch} "
            f"({self.state.train_seconds / 60:.1f} min already trained)"
        )

    def _elapsed(self) -> float:
        return time.perf_counter() - self._t0 if hasattr(self, "_t0") else 0.0

    def _out_of_time(self) -> bool:
        b = self.cfg.time_budget_min
        return bool(b) and self.state.train_seconds + self._elapsed() >= b * 60

    # ------------------------------------------------------------------ steps
    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        x = normalize_batch(x, self.pre).to(self.device, non_blocking=True)
        y = y.to(self.device)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            emb = self.model(x)
        emb = emb.float()
        indices = self.miner(emb, y) if self.miner is not None else None
        loss = self.loss_fn(emb, y, indices) if indices is not None else self.loss_fn(emb, y)
        self.opt.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.optimizer.step()
        self.opt.step_schedule()
        return float(loss.detach())

    @torch.no_grad()
    def _recalibrate_bn(self, batches: int = 20) -> None:
        """Schedule-free evaluates at averaged weights, whose BatchNorm statistics must be
        re-estimated on training images before validating or saving."""
        self.model.train()
        n = len(self.data.train)
        g = torch.Generator().manual_seed(self.state.global_step)
        for _ in range(batches):
            idx = torch.randint(0, n, (self.cfg.batch_size,), generator=g)
            x = torch.stack([self.data.train.raw(int(i)) for i in idx])
            x = normalize_batch(x, self.pre).to(self.device)
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                self.model(x)

    def _validate(self) -> VerificationMetrics | None:
        d = self.data
        if not d.val_identities:
            return None
        if d.val_pixels is not None:
            emb = embed_uint8(
                self.model, d.val_pixels, self.pre, 128, self.device, self.cfg.channels_last
            )
        else:
            from siamface.embed import embed_paths

            emb, _ = embed_paths(
                self.model,
                d.val_paths,
                self.pre,
                128,
                device=self.device,
                loader=plain_loader(self.pre),
                progress=False,
            )
        scores, same = all_pair_scores(emb, d.val_labels, max_impostors=VAL_MAX_IMPOSTORS)
        fars = tuple(sorted(set(DEFAULT_FARS) | {self.cfg.calib_far}, reverse=True))
        try:
            return verification_metrics(scores, same, fars)
        except ValueError:
            return None

    @staticmethod
    def _metric_value(m: VerificationMetrics, name: str) -> float:
        if name == "auc":
            return m.auc
        if name == "eer":
            return m.eer
        if name == "accuracy":
            return m.best_accuracy
        v = m.tar_at_far.get("1e-03")
        return -1.0 if v is None else v

    def _checkpoint(self, m: VerificationMetrics | None, epoch: int) -> Checkpoint:
        thr = threshold_record(m, self.cfg.calib_far, "validation identities") if m else None
        pair_head = None
        if hasattr(self.loss_fn, "pair_head"):
            pair_head = {
                k: v.detach().cpu() for k, v in self.loss_fn.pair_head.state_dict().items()
            }
        return Checkpoint(
            model_cfg=self.model_cfg,
            preprocessing=self.pre,
            state_dict={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            threshold=thr,
            pair_head=pair_head,
            info={
                "siamface_version": __version__,
                "epoch": epoch,
                "global_step": self.state.global_step,
                "loss": self.cfg.loss,
                "optimizer": self.cfg.optimizer,
                "weights_source": self.weights_source,
                "data": self.data_dirs,
                "val_identities": len(self.data.val_identities),
                "val_metrics": m.to_dict() if m else None,
                "config": self.cfg.to_dict(),
            },
        )

    # ------------------------------------------------------------------ loop
    def run(self) -> dict:
        self._setup()
        cfg, s = self.cfg, self.state
        self.log(
            f"model: {cfg.backbone} ({self.weights_source}) -> {cfg.embedding_size}-d, "
            f"{cfg.image_size}px; loss {cfg.loss}, miner {cfg.miner}, {cfg.optimizer}; "
            f"device {self.device}{' bf16' if self.bf16 else ''}, {self.workers} loader worker(s)"
        )
        self._t0 = time.perf_counter()
        epoch_start_rng = getattr(self, "_epoch_start_rng", None)
        last_save = time.perf_counter()
        last_metrics: VerificationMetrics | None = None
        stop_reason = f"{cfg.epochs} epochs done"
        try:
            while s.epoch < cfg.epochs:
                if self._out_of_time():
                    stop_reason = f"time budget of {cfg.time_budget_min} min reached"
                    break
                if epoch_start_rng is not None:
                    # Resuming: replay this epoch's RNG so the sampler yields the same order,
                    # then skip the batches that were already trained on.
                    restore_rng(epoch_start_rng)
                else:
                    epoch_start_rng = capture_rng()
                    s.step_in_epoch = 0
                self._sampler_labels_at_epoch_start = list(map(int, self.sampler.labels))
                order = list(iter(self.sampler))
                order = order[s.step_in_epoch * cfg.batch_size :]
                loader = DataLoader(
                    self.data.train,
                    batch_size=cfg.batch_size,
                    sampler=order,
                    drop_last=True,
                    num_workers=self.workers,
                    worker_init_fn=_worker_init,
                    prefetch_factor=4 if self.workers else None,
                    persistent_workers=False,
                )
                self.model.train()
                self.opt.train_mode()
                bar = tqdm(
                    total=self.steps_per_epoch,
                    initial=s.step_in_epoch,
                    desc=f"epoch {s.epoch + 1}/{cfg.epochs}",
                    unit="batch",
                    disable=not self.show_progress,
                    leave=False,
                )
                t_epoch, seen, run_loss = time.perf_counter(), 0, 0.0
                losses = []
                for x, y in loader:
                    loss = self._train_step(x, y)
                    if not math.isfinite(loss):
                        raise SiamfaceError(
                            f"loss became {loss} at step {s.global_step}: lower lr "
                            f"(now {cfg.lr}) or use precision=fp32"
                        )
                    losses.append(loss)
                    s.step_in_epoch += 1
                    s.global_step += 1
                    seen += len(y)
                    run_loss = 0.9 * run_loss + 0.1 * loss if len(losses) > 1 else loss
                    ips = seen / max(time.perf_counter() - t_epoch, 1e-9)
                    bar.update()
                    bar.set_postfix(
                        loss=f"{run_loss:.4f}", img_s=f"{ips:.1f}", lr=f"{self.opt.lr():.2e}"
                    )
                    if s.global_step % 10 == 0:
                        self.tb.add_scalar("train/loss", run_loss, s.global_step)
                        self.tb.add_scalar("train/lr", self.opt.lr(), s.global_step)
                        self.tb.add_scalar("train/images_per_s", ips, s.global_step)
                    if self._out_of_time():
                        break
                    if time.perf_counter() - last_save > cfg.save_every_min * 60:
                        save_state(self.run_dir, self._state_dict(epoch_start_rng))
                        last_save = time.perf_counter()
                bar.close()
                epoch_time = time.perf_counter() - t_epoch
                finished_epoch = s.step_in_epoch >= self.steps_per_epoch
                if finished_epoch:
                    s.epoch += 1
                    s.step_in_epoch = 0
                last_metrics = self._end_of_epoch(losses, seen, epoch_time, finished_epoch)
                # A finished epoch resumes at the next one (fresh RNG snapshot); a partial one
                # resumes inside this epoch, so it keeps this epoch's starting snapshot.
                resume_rng = capture_rng() if finished_epoch else epoch_start_rng
                if finished_epoch:
                    self._sampler_labels_at_epoch_start = list(map(int, self.sampler.labels))
                save_state(self.run_dir, self._state_dict(resume_rng))
                epoch_start_rng = None
                last_save = time.perf_counter()
                if not finished_epoch:
                    stop_reason = f"time budget of {cfg.time_budget_min} min reached"
                    break
        except KeyboardInterrupt:
            save_state(self.run_dir, self._state_dict(epoch_start_rng or capture_rng()))
            self.tb.close()
            raise TrainingInterrupted(
                f"interrupted at epoch {s.epoch + 1}, step {s.step_in_epoch}; state saved. "
                f"Continue with: siamface train --resume {self.run_dir}"
            ) from None
        self.tb.close()
        return self._summary(stop_reason, last_metrics)

    def _end_of_epoch(
        self, losses: list[float], seen: int, epoch_time: float, finished: bool
    ) -> VerificationMetrics | None:
        cfg, s = self.cfg, self.state
        if self.opt.schedule_free:
            self.opt.eval_mode()
            self._recalibrate_bn()
        self.model.eval()
        t_val = time.perf_counter()
        m = self._validate()
        val_time = time.perf_counter() - t_val
        train_loss = float(np.mean(losses)) if losses else float("nan")
        record = {
            "epoch": s.epoch if finished else s.epoch + 1,
            "complete": finished,
            "train_loss": train_loss,
            "lr": self.opt.lr(),
            "images_per_s": seen / epoch_time if epoch_time > 0 else None,
            "epoch_seconds": epoch_time,
            "val_seconds": val_time,
        }
        self.tb.add_scalar("train/epoch_loss", train_loss, s.global_step)
        ckpt = self._checkpoint(m, record["epoch"])
        improved = False
        if m is not None:
            record |= {
                "val_auc": m.auc,
                "val_eer": m.eer,
                "val_tar_at_far_1e-3": m.tar_at_far.get("1e-03"),
                "val_accuracy": m.best_accuracy,
                "val_threshold": ckpt.threshold["value"] if ckpt.threshold else None,
            }
            for k in ("val_auc", "val_eer", "val_tar_at_far_1e-3", "val_accuracy"):
                if record[k] is not None:
                    self.tb.add_scalar(k.replace("val_", "val/"), record[k], s.global_step)
            value = self._metric_value(m, cfg.select_metric)
            hib = HIGHER_IS_BETTER[cfg.select_metric]
            improved = s.best_value is None or (
                value > s.best_value if hib else value < s.best_value
            )
            if improved:
                s.best_value, s.best_epoch = value, record["epoch"]
                save_checkpoint(ckpt, self.run_dir / "best.safetensors")
            self.opt.epoch_schedule(m.eer)
        else:
            # No validation identities: "best" is simply the latest model.
            save_checkpoint(ckpt, self.run_dir / "best.safetensors")
        save_checkpoint(ckpt, self.run_dir / "last.safetensors")
        s.history.append(record)
        atomic_write(
            self.run_dir / "history.json",
            lambda p: p.write_text(json.dumps(s.history, indent=1)),
        )
        msg = f"epoch {record['epoch']}: loss {train_loss:.4f}"
        if record["images_per_s"]:
            msg += f", {record['images_per_s']:.1f} img/s"
        if m is not None:
            msg += f" | val {m.headline()}" + ("  * best" if improved else "")
        self.log(msg)
        self.opt.train_mode()
        return m

    def _summary(self, stop_reason: str, last: VerificationMetrics | None) -> dict:
        s = self.state
        total = s.train_seconds + self._elapsed()
        best_rec = next((h for h in s.history if h["epoch"] == s.best_epoch), None)
        summary = {
            "run_dir": str(self.run_dir),
            "stopped": stop_reason,
            "epochs_completed": s.epoch,
            "steps": s.global_step,
            "train_minutes": round(total / 60, 2),
            "select_metric": self.cfg.select_metric,
            "best_epoch": s.best_epoch,
            "best": best_rec,
            "last": s.history[-1] if s.history else None,
            "best_checkpoint": str(self.run_dir / "best.safetensors"),
            "tensorboard": f"tensorboard --logdir {self.run_dir / 'tensorboard'}",
        }
        atomic_write(
            self.run_dir / "summary.json",
            lambda p: p.write_text(json.dumps(summary, indent=1)),
        )
        self.log("")
        self.log(f"done: {stop_reason}; {s.global_step} steps in {total / 60:.1f} min")
        if best_rec and best_rec.get("val_auc") is not None:
            t3 = best_rec.get("val_tar_at_far_1e-3")
            self.log(
                f"best epoch {s.best_epoch}, on {len(self.data.val_identities)} unseen identities: "
                f"AUC {best_rec['val_auc']:.4f}, EER {best_rec['val_eer']:.4f}, TAR@FAR=1e-3 "
                f"{'n/a' if t3 is None else f'{t3:.4f}'}, best accuracy "
                f"{best_rec['val_accuracy']:.4f}"
            )
            self.log(
                f"decision threshold stored in the checkpoint: {best_rec['val_threshold']:.4f} "
                f"(cosine; calibrated for FAR {self.cfg.calib_far:g} on validation identities)"
            )
        self.log(f"checkpoint: {self.run_dir / 'best.safetensors'}")
        self.log(f"curves: {summary['tensorboard']}")
        return summary
