"""Every ``auto`` decided once, before the run starts, and written into its config.yaml.

A run folder then says what actually ran (``machine.precision: bf16``, ``finetune.bn:
frozen``), a resumed run keeps the choices it started with, and nothing later asks "auto"
again. :func:`resolve_autos` is the pure rule (testable without a GPU); :func:`resolve_here`
feeds it this machine's facts. ``data.align``, ``data.scan_cache`` and ``model.pretrained``
stay as given: they depend on the data folders and the network and are recorded in
dataset_report.json and the checkpoint instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from siamface.train.config.schema import TrainConfig
from siamface.train.device import pick_device, precision_for, workers_for


@dataclass(frozen=True)
class MachineFacts:
    """What ``auto`` depends on: the device kind, its precision support, processes here."""

    device: str  # "cpu" | "cuda"
    precision: str  # what precision=auto gives on it: "fp32" | "bf16" | "fp16"
    workers: int  # loader workers per process for num_workers=-1


def resolve_autos(cfg: TrainConfig, facts: MachineFacts) -> TrainConfig:
    """``cfg`` with every ``auto`` (and ``num_workers=-1``) replaced by its decision."""
    fine_tuning = cfg.finetune.init is not None
    m, f, r = cfg.machine, cfg.finetune, cfg.run
    values: dict[str, object] = {}
    if f.bn == "auto":
        values["finetune.bn"] = "frozen" if fine_tuning else "train"
    if f.centre_init == "auto":
        values["finetune.centre_init"] = "class_mean" if fine_tuning else "random"
    if r.select_rule == "auto":
        values["run.select_rule"] = "not_worse" if fine_tuning else "best"
    device = facts.device if m.device == "auto" else m.device
    if m.device == "auto":
        values["machine.device"] = device
    if m.precision == "auto":
        values["machine.precision"] = facts.precision if device == facts.device else "fp32"
    if m.augment_on == "auto":
        values["machine.augment_on"] = "device" if device == "cuda" else "loader"
    if m.num_workers < 0:
        values["machine.num_workers"] = facts.workers
    return cfg.with_values(values) if values else cfg


def resolve_here(cfg: TrainConfig) -> TrainConfig:
    """:func:`resolve_autos` with this machine's facts (one process of ``machine.nproc``)."""
    device = pick_device(cfg.machine.device)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", cfg.machine.nproc))
    facts = MachineFacts(
        device=device.type,
        precision=precision_for("auto", device).name,
        workers=workers_for(device, local_world),
    )
    return resolve_autos(cfg, facts)
