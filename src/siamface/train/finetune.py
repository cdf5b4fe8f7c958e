"""Fine-tuning as one plugin: everything a run does because it starts from a face model.

With ``init`` set, a run differs from training from backbone weights in six places, all here:
the starting model decides the architecture and preprocessing (:meth:`FineTune.apply`) and the
initial weights (:meth:`FineTune.load_into`); its embeddings of the training images anchor the
``keep_close`` term and start the class centres at each identity's mean
(:meth:`FineTune.add_anchor_terms`); it is scored on the validation identities as epoch 0
(:meth:`FineTune.on_train_start`); a later epoch becomes ``best`` only if it is not worse than
it (:meth:`FineTune.keeps_best`); and the run ends with the comparison and the verdict on test
identities, WiSE-FT included (:meth:`FineTune.on_summary`). The loop knows none of this: the
plugin is a :class:`~siamface.train.hooks.Hook` plus two calls from
:func:`~siamface.train.run.build_run`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from siamface.model.network import ModelConfig, build_model
from siamface.tensors.transforms import Preprocessing
from siamface.train.checkpoints import save_epoch_checkpoints
from siamface.train.config import TrainConfig
from siamface.train.data import RunData
from siamface.train.distill import DistillationTerm
from siamface.train.distributed import main_decides
from siamface.train.feature_cache import FeatureCache
from siamface.train.hooks import Hook, RunView
from siamface.train.l2sp import L2SPTerm
from siamface.train.losses import is_classifier
from siamface.train.objective import Objective
from siamface.train.start import (
    StartingModel,
    class_means,
    compare_with_start,
    embed_dataset,
    init_class_centres,
    not_worse,
)
from siamface.train.validation import metric_record, metric_value
from siamface.train.verdict import final_verdict

#: The starting model's embeddings of the training images, kept in the run folder so that a
#: resume (whose model is no longer the start) reuses them.
START_EMBEDDINGS = "start_embeddings.safetensors"


class FineTune(Hook):
    """The fine-tuning plugin of a run with ``init``."""

    def __init__(self, start: StartingModel) -> None:
        self.start = start

    @classmethod
    def resolve(cls, cfg: TrainConfig) -> FineTune | None:
        """The plugin for ``cfg.finetune.init``, or None. Resolved before anything else, so a
        bad name or file fails before any work."""
        return cls(StartingModel.resolve(cfg.finetune.init)) if cfg.finetune.init else None

    @property
    def name(self) -> str:
        return self.start.name

    @property
    def preprocessing(self) -> Preprocessing:
        return self.start.preprocessing

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` with the starting model's architecture, embedding size and input size."""
        return self.start.apply(cfg)

    def load_into(self, model: nn.Module) -> str:
        """Load the starting weights; returns how the run names its weight source."""
        model.load_state_dict(self.start.checkpoint.state_dict)
        return f"init {self.start.name}"

    def info(self) -> dict[str, Any]:
        return self.start.info()

    # ------------------------------------------------------------------ build
    def add_anchor_terms(
        self,
        cfg: TrainConfig,
        objective: Objective,
        model: nn.Module,
        model_cfg: ModelConfig,
        data: RunData,
        run_dir: Path,
        device: torch.device,
        *,
        resumed: bool,
        is_main: bool,
        feature_cache: FeatureCache | None,
        progress: bool,
        log: Callable[[str], None],
    ) -> None:
        """The ``keep_close`` term and class-mean centres, from the start's embeddings of the
        training images (computed only when one of them is asked for), and the L2-SP term
        on the weights themselves."""
        if cfg.finetune.l2sp > 0:
            start_state = self.start.checkpoint.state_dict
            objective.add(L2SPTerm(model, start_state, cfg.finetune.l2sp).to(device))
        classifier = is_classifier(cfg.objective.name)
        if not (cfg.finetune.keep_close > 0 or (classifier and cfg.class_mean_centres)):
            return
        ref = self._start_embeddings(
            model,
            model_cfg,
            data,
            run_dir,
            device,
            resumed=resumed,
            is_main=is_main,
            feature_cache=feature_cache,
            channels_last=cfg.machine.channels_last,
            progress=progress,
            log=log,
        )
        if data.train_source is not None:
            # Degraded copies are anchored to the start's embedding of the clean image:
            # the camera should not move a face away from where the start put it.
            ref = ref[torch.as_tensor(data.train_source)]
        train = data.train
        if classifier and cfg.class_mean_centres and not resumed:
            n = train.n_labeled
            centres = class_means(ref[:n], train.labels[:n], len(data.train_identities))
            if init_class_centres(objective.metric.loss_fn, centres):
                log("class centres start at each identity's mean embedding")
        if cfg.finetune.keep_close > 0:
            objective.add(
                DistillationTerm(
                    "keep_close",
                    ref,
                    torch.ones(len(ref), dtype=torch.bool),
                    cfg.model.embedding_size,
                    cfg.finetune.keep_close,
                    0.0,
                ).to(device)
            )

    def _start_embeddings(
        self,
        model: nn.Module,
        model_cfg: ModelConfig,
        data: RunData,
        run_dir: Path,
        device: torch.device,
        *,
        resumed: bool,
        is_main: bool,
        feature_cache: FeatureCache | None,
        channels_last: bool,
        progress: bool,
        log: Callable[[str], None],
    ) -> torch.Tensor:
        """The starting model's embedding of every training image (cached in the run)."""
        path = run_dir / START_EMBEDDINGS
        if path.is_file():
            t = load_file(str(path))["embeddings"]
            if len(t) == len(data.train):
                return t
        start_model = model
        if resumed:  # the run's model holds the resumed weights: embed with the start's own
            start_model = build_model(model_cfg)
            start_model.load_state_dict(self.start.checkpoint.state_dict)
            start_model.to(device)
        log(f"embedding {len(data.train)} training images with the starting model")
        t = None
        if start_model is model and feature_cache is not None:
            # One forward pass fills the cache too.
            t = feature_cache.prefill(
                data.train, data.preprocessing, device, channels_last, progress
            )
        if t is None:
            t = embed_dataset(
                start_model, data.train, data.preprocessing, device, progress=progress
            )
        t = t.contiguous()
        if is_main:
            save_file({"embeddings": t}, str(path))
        return t

    # ------------------------------------------------------------------ hooks
    def start_record(self, view: RunView) -> dict[str, Any] | None:
        """The history entry of the starting model (epoch 0), if the run has one yet."""
        return next((h for h in view.state.history if h.get("epoch") == 0), None)

    def on_train_start(self, view: RunView) -> None:
        """Epoch 0: the starting model on the validation identities, saved as the first
        ``best`` so that a fine-tune that never beats it leaves the start as the result."""
        s = view.state
        if s.history:  # resumed: epoch 0 was scored already
            return
        m, val_time = view.evaluate()

        def score() -> tuple[dict[str, Any], float | None, int | None]:
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
            ckpt = view.checkpoint(m, 0)
            best_value, best_epoch = s.best_value, s.best_epoch
            if m is not None:
                record |= metric_record(m, ckpt)
                best_value, best_epoch = metric_value(m, view.cfg.run.select_metric), 0
            save_epoch_checkpoints(ckpt, view.run_dir, best=True)
            return record, best_value, best_epoch

        record, s.best_value, s.best_epoch = main_decides(view.ctx, score)
        s.history.append(record)
        if view.ctx.is_main:
            view.files.write_json("history.json", s.history)
            view.log(
                f"epoch 0 (starting model {self.start.name})"
                + (f": val {m.headline()}" if m is not None else "")
            )
        view.opt.train_mode()

    def keeps_best(self, view: RunView, record: dict[str, Any]) -> bool:
        """``select_rule=not_worse``: no validation metric below the start's."""
        start = self.start_record(view)
        if view.cfg.not_worse and start is not None and not not_worse(record, start):
            view.log(
                f"epoch {record['epoch']} is worse than the starting model on a validation "
                "metric: not kept as best"
            )
            return False
        return True

    def on_summary(self, view: RunView, summary: dict[str, Any]) -> bool:
        """The comparison with the start, then (rank 0) WiSE-FT and the test verdict."""
        start = self.start_record(view)
        if start is None or not summary.get("best"):
            return False
        summary["vs_start"] = compare_with_start(summary["best"], start)
        summary["init"] = self.start.info()
        view.log(summary["vs_start"]["verdict"])
        if view.ctx.is_main:
            verdict = final_verdict(view, self.start)
            if verdict is not None:
                summary["verdict"] = verdict
                view.log(verdict["verdict"])
        return True
