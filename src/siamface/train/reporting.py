"""What a run tells its user: log lines, progress bars, TensorBoard, history and summary.

All output goes through :class:`Reporter`, so the loop says *what* happened (a step, an
epoch's record, the end of the run) and this module decides how it is shown and stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from tqdm import tqdm

from siamface.scores.metrics import VerificationMetrics
from siamface.train.data import RunData
from siamface.train.rundir import RunDir
from siamface.train.step import StepResult

#: TensorBoard scalars of the training loss are written every this many steps.
TB_EVERY = 10
#: Steps left out of the steady images/s (first-step allocations, torch.compile compiling).
WARMUP_STEPS = 3


class EpochMeter:
    """Running loss, images/s and the progress bar of one epoch."""

    def __init__(self, total: int, initial: int, desc: str, show: bool) -> None:
        self.bar = tqdm(
            total=total, initial=initial, desc=desc, unit="batch", disable=not show, leave=False
        )
        self.t0 = time.perf_counter()
        self.t_end: float | None = None  # set by close(): later work is not epoch time
        self.seen = 0
        self.losses: list[float] = []
        self.running = 0.0
        self._warm: tuple[float, int] | None = None  # (time, images) after the warm-up steps

    def update(self, result: StepResult, lr: float) -> None:
        self.losses.append(result.loss)
        self.seen += result.images
        if len(self.losses) == WARMUP_STEPS:
            self._warm = (time.perf_counter(), self.seen)
        if len(self.losses) > 1:
            self.running = 0.9 * self.running + 0.1 * result.loss
        else:
            self.running = result.loss
        self.bar.update()
        self.bar.set_postfix(
            loss=f"{self.running:.4f}", img_s=f"{self.images_per_s:.1f}", lr=f"{lr:.2e}"
        )

    @property
    def seconds(self) -> float:
        return (self.t_end or time.perf_counter()) - self.t0

    @property
    def images_per_s(self) -> float:
        return self.seen / max(self.seconds, 1e-9)

    @property
    def steady_images_per_s(self) -> float | None:
        """Images/s after the first few steps of this epoch, None if too few steps."""
        if self._warm is None or self.seen == self._warm[1]:
            return None
        t = (self.t_end or time.perf_counter()) - self._warm[0]
        return (self.seen - self._warm[1]) / max(t, 1e-9)

    @property
    def mean_loss(self) -> float:
        return float(np.mean(self.losses)) if self.losses else float("nan")

    def close(self) -> None:
        self.t_end = time.perf_counter()
        self.bar.close()


class Reporter:
    """Log lines, TensorBoard scalars and the run's JSON files."""

    def __init__(
        self,
        run_dir: RunDir,
        log: Callable[[str], None],
        show_progress: bool,
        enabled: bool = True,
    ) -> None:
        self.run_dir = run_dir
        self.log = log
        self.show_progress = show_progress and enabled
        #: False in data-parallel processes other than rank 0: they report nothing.
        self.enabled = enabled
        self.tb = None

    def open_tensorboard(self) -> None:
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(log_dir=str(self.run_dir.tensorboard))

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.tb is not None:
            self.tb.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    # ---------------------------------------------------------------- dataset
    def dataset(self, d: RunData) -> None:
        """dataset_report.json plus its summary in the log."""
        if not self.enabled:
            return
        rep = d.report.to_dict() | {
            "train_identities": len(d.train_identities),
            "unused_train_identities": d.unused_train_identities,
            "val_identities": len(d.val_identities),
            "train_images": len(d.train),
            "val_images": len(d.val_labels),
            "excluded_cross_identity_duplicates": d.excluded_cross_duplicates,
            "val_identity_names": d.val_identities,
            "test_identities": len(d.test_identities),
            "test_images": len(d.test_labels),
            "test_identity_names": d.test_identities,
            "condition": d.condition,
        }
        self.run_dir.write_json("dataset_report.json", rep)
        self.log("dataset report:")
        for line in d.report.summary_lines():
            self.log(f"  {line}")
        self.log(
            f"  split by identity: {len(d.train_identities)} train identities "
            f"({len(d.train)} images"
            + (
                f"; {d.unused_train_identities} more left unused by data.train_identities"
                if d.unused_train_identities
                else ""
            )
            + f"), {len(d.val_identities)} validation identities "
            f"({len(d.val_labels)} images)"
            + (
                f", {len(d.test_identities)} test identities ({len(d.test_labels)} images, "
                "for the final verdict only)"
                if d.test_identities
                else ""
            )
        )
        if d.condition:
            copies = sum(1 for i, j in enumerate(d.train_source or []) if i != j)
            self.log(
                f"  condition {d.condition}: {copies} of the {len(d.train)} training images "
                "are degraded copies; validation and test people are seen under it"
            )
        if d.excluded_cross_duplicates:
            self.log(
                f"  {d.excluded_cross_duplicates} files duplicated across identities were left "
                "out of training and validation"
            )

    # ---------------------------------------------------------------- steps
    def epoch_meter(self, total: int, initial: int, desc: str) -> EpochMeter:
        return EpochMeter(total, initial, desc, self.show_progress)

    def step(self, meter: EpochMeter, result: StepResult, lr: float, global_step: int) -> None:
        meter.update(result, lr)
        if global_step % TB_EVERY == 0:
            self.scalar("train/loss", meter.running, global_step)
            self.scalar("train/lr", lr, global_step)
            self.scalar("train/images_per_s", meter.images_per_s, global_step)
            if len(result.parts) > 1:
                for name, value in result.parts.items():
                    self.scalar(f"train/loss_{name}", value, global_step)

    # ---------------------------------------------------------------- epochs
    def epoch(
        self,
        record: dict[str, Any],
        metrics: VerificationMetrics | None,
        improved: bool,
        history: list[dict],
        global_step: int,
    ) -> None:
        """TensorBoard scalars, history.json and the epoch's log line."""
        if not self.enabled:
            return
        self.scalar("train/epoch_loss", record["train_loss"], global_step)
        for k in ("val_auc", "val_eer", "val_tar_at_far_1e-3", "val_accuracy"):
            if record.get(k) is not None:
                self.scalar(k.replace("val_", "val/"), record[k], global_step)
        self.run_dir.write_json("history.json", history)
        msg = f"epoch {record['epoch']}: loss {record['train_loss']:.4f}"
        if record.get("images_per_s"):
            msg += f", {record['images_per_s']:.1f} img/s"
        if metrics is not None:
            msg += f" | val {metrics.headline()}" + ("  * best" if improved else "")
        self.log(msg)

    # ---------------------------------------------------------------- end
    def summary(
        self,
        stop_reason: str,
        progress: Any,
        total_seconds: float,
        select_metric: str,
        calib_far: float,
        val_identities: int,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """summary.json and the closing lines of the log."""
        s = progress
        if not self.enabled:
            return {"run_dir": str(self.run_dir.path), "stopped": stop_reason, "rank": "other"}
        best_rec = next((h for h in s.history if h["epoch"] == s.best_epoch), None)
        best_path = self.run_dir / "best.safetensors"
        summary = {
            "run_dir": str(self.run_dir.path),
            "stopped": stop_reason,
            "epochs_completed": s.epoch,
            "steps": s.global_step,
            "train_minutes": round(total_seconds / 60, 2),
            "select_metric": select_metric,
            "best_epoch": s.best_epoch,
            "best": best_rec,
            "last": s.history[-1] if s.history else None,
            "best_checkpoint": str(best_path),
            "tensorboard": f"tensorboard --logdir {self.run_dir.tensorboard}",
            **(extra or {}),
        }
        self.run_dir.write_json("summary.json", summary)
        self.log("")
        self.log(f"done: {stop_reason}; {s.global_step} steps in {total_seconds / 60:.1f} min")
        if best_rec and best_rec.get("val_auc") is not None:
            t3 = best_rec.get("val_tar_at_far_1e-3")
            self.log(
                f"best epoch {s.best_epoch}, on {val_identities} unseen identities: "
                f"AUC {best_rec['val_auc']:.4f}, EER {best_rec['val_eer']:.4f}, TAR@FAR=1e-3 "
                f"{'n/a' if t3 is None else f'{t3:.4f}'}, best accuracy "
                f"{best_rec['val_accuracy']:.4f}"
            )
            self.log(
                f"decision threshold stored in the checkpoint: {best_rec['val_threshold']:.4f} "
                f"(cosine; calibrated for FAR {calib_far:g} on validation identities)"
            )
        self.log(f"checkpoint: {best_path}")
        self.log(f"curves: {summary['tensorboard']}")
        return summary
