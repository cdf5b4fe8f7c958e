"""The flat keys of the release before sections, and where each one lives now.

One table, :data:`FLAT_KEYS`, read three ways: to translate an old YAML file, ``key=value``
override or a resumed run's saved config into nested keys (with one deprecation line per key);
to give :class:`~siamface.train.config.schema.TrainConfig` read-only attributes under the old
names (``cfg.lr``), so code written against the flat config keeps working for one release; and
to spell a nested key the old way for code that still checks flat names.

A target such as ``loss.margin@arcface`` applies only while that entry is chosen: the old
``arc_margin`` was the ArcFace margin and meant nothing under CosFace. A target inside a chosen
section without ``@`` applies to the entries that declare the parameter (``eps`` is not a
setting of SGD). Old files set such keys regardless of the entry, and they were ignored then,
so they are ignored now too.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

#: Old flat key -> nested key (``@a,b``: only while entry a or b of that section is chosen).
FLAT_KEYS: dict[str, str] = {
    "backbone": "model.backbone",
    "pretrained": "model.pretrained",
    "embedding_size": "model.embedding_size",
    "image_size": "model.image_size",
    "init": "finetune.init",
    "trainable": "finetune.trainable",
    "freeze_epochs": "finetune.freeze_epochs",
    "backbone_lr_mult": "optim.backbone_lr_mult",
    "bn": "finetune.bn",
    "keep_close": "finetune.keep_close",
    "teacher": "distill.teacher",
    "unlabeled": "distill.unlabeled",
    "unlabeled_per_batch": "distill.unlabeled_per_batch",
    "distill_embedding": "distill.embedding",
    "distill_relational": "distill.relational",
    "centre_init": "finetune.centre_init",
    "val_identities": "data.val_identities",
    "test_identities": "data.test_identities",
    "condition": "data.condition",
    "condition_rate": "data.condition_rate",
    "wise_ft": "finetune.wise_ft",
    "guard_margin": "run.guard_margin",
    "guard": "run.guard",
    "l2sp": "finetune.l2sp",
    "verdict_replicates": "run.verdict_replicates",
    "min_images_per_identity": "data.min_images_per_identity",
    "augment": "data.augment",
    "augment_on": "machine.augment_on",
    "align": "data.align",
    "cache_gb": "machine.cache_gb",
    "scan_cache": "data.scan_cache",
    "batch_size": "data.batch_size",
    "m_per_class": "data.m_per_class",
    "loss": "loss.name",
    "margin": "loss.margin@triplet,contrastive",
    "miner": "loss.miner",
    "arc_margin": "loss.margin@arcface",
    "cos_margin": "loss.margin@cosface",
    "softmax_scale": "loss.scale",
    "head_lr_mult": "optim.head_lr_mult",
    "class_sample_rate": "loss.class_sample_rate",
    "optimizer": "optim.name",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "eps": "optim.eps",
    "momentum": "optim.momentum",
    "t_max": "optim.t_max",
    "eta_min": "optim.eta_min",
    "warmup_steps": "optim.warmup_steps",
    "step_size": "optim.step_size",
    "gamma": "optim.gamma@sgd_step",
    "exp_gamma": "optim.gamma@ranger_exponential",
    "plateau_patience": "optim.patience",
    "plateau_factor": "optim.factor",
    "epochs": "run.epochs",
    "time_budget_min": "run.time_budget_min",
    "select_metric": "run.select_metric",
    "select_rule": "run.select_rule",
    "calib_far": "run.calib_far",
    "save_every_min": "run.save_every_min",
    "val_max_images": "run.val_max_images",
    "seed": "run.seed",
    "num_workers": "machine.num_workers",
    "precision": "machine.precision",
    "channels_last": "machine.channels_last",
    "keep_heap": "machine.keep_heap",
    "device": "machine.device",
    "grad_accum": "machine.grad_accum",
    "nproc": "machine.nproc",
    "sync_bn": "machine.sync_bn",
    "compile": "machine.compile",
}


@dataclass(frozen=True)
class Moved:
    """Where one flat key went."""

    old: str
    path: str  # e.g. "loss.margin"
    only_for: tuple[str, ...] | None  # entries of the section it applies to (None: any)

    @property
    def section(self) -> str:
        return self.path.split(".", 1)[0]

    @property
    def key(self) -> str:
        return self.path.split(".", 1)[1]

    def hint(self) -> str:
        """``'optim.lr'``, or ``'loss.margin' (with loss.name=arcface)``."""
        if not self.only_for:
            return f"'{self.path}'"
        return f"'{self.path}' (with {self.section}.name={'|'.join(self.only_for)})"


def _parse(old: str, target: str) -> Moved:
    path, _, entries = target.partition("@")
    return Moved(old, path, tuple(entries.split(",")) if entries else None)


MOVED: dict[str, Moved] = {old: _parse(old, target) for old, target in FLAT_KEYS.items()}


def flat_name(path: str) -> str | None:
    """The old flat spelling of nested key ``path`` when one old key meant exactly it."""
    olds = [m.old for m in MOVED.values() if m.path == path and m.only_for is None]
    return olds[0] if len(olds) == 1 else None


# ------------------------------------------------------------------ deprecation lines
_warned: set[str] = set()


def deprecated(old: str, where: str = "") -> None:
    """Say once per key and process that a flat key was read; the line names the new key, so
    the fix is a search-and-replace. Printed (stderr) rather than a Python warning, because the
    reader is the person who wrote the config, not a developer running with -W."""
    if old in _warned:
        return
    _warned.add(old)
    at = f" ({where})" if where else ""
    print(f"config: '{old}' is deprecated, use {MOVED[old].hint()}{at}", file=sys.stderr)


def saved_config_read() -> None:
    """One line for a resumed run whose saved config has the flat keys: its owner did not
    write them today and needs no line per key."""
    if "<saved>" not in _warned:
        _warned.add("<saved>")
        print(
            "config: the run's saved config uses the old flat keys (deprecated); "
            "they were read as the nested keys",
            file=sys.stderr,
        )


def silence(olds: set[str]) -> None:
    """Treat these flat keys as already reported (the caller spelled a nested key the old way
    itself, for code that still checks flat names)."""
    _warned.update(olds)


def forget_warnings() -> None:
    """Report every flat key again (tests)."""
    _warned.clear()
