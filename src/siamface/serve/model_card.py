"""The model card: what the served model is, where it came from, and what its threshold means.

Everything is read from the model file itself (checkpoint, exported ONNX or a built-in model:
architecture, preprocessing, the calibrated threshold record and the ``info`` it carries) and,
when the server was given one, from a ``siamface evaluate`` report. Models differ in what they
record (a built-in model has no training data, an old checkpoint no ``init``), so every key is
optional and the card shows what is there. The card is public: folders on the server are shown
by their last name only.
"""

from __future__ import annotations

import math
from pathlib import PurePath

from siamface.embed.load import Embedder

#: Keys of a model's ``info`` shown on the card (anything else stays in the file).
INFO_KEYS = (
    *Embedder.CARD_KEYS,
    "paper",
    "init",
    "weights_source",
    "data",
    "train_identities",
    "train_images",
    "val_identities",
    "loss",
    "epoch",
    "centring",
    "siamface_version",
)
VALIDATION_KEYS = ("auc", "eer", "tar_at_far", "n_genuine", "n_impostor")


def backbone_of(embedder: Embedder) -> str | None:
    info = embedder.info if isinstance(getattr(embedder, "info", None), dict) else {}
    if info.get("backbone"):
        return str(info["backbone"])
    ckpt = getattr(embedder, "checkpoint", None)
    if ckpt is not None:
        return ckpt.model_cfg.backbone
    meta = getattr(embedder, "metadata", None)
    if isinstance(meta, dict) and isinstance(meta.get("model"), dict):
        return meta["model"].get("backbone")
    return None


def has_pair_head(embedder: Embedder) -> bool:
    ckpt = getattr(embedder, "checkpoint", None)
    if ckpt is not None:
        return bool(ckpt.pair_head)
    return bool(getattr(embedder, "pair_head", None))


def public_names(value: object) -> object:
    """Server paths reduced to their last part ('/data/faces/pins90' -> 'pins90'), also
    inside comma-separated lists, lists and dicts; other values unchanged."""
    if isinstance(value, str):
        if "/" not in value and "\\" not in value:
            return value
        parts = [p.strip() for p in value.split(",")]
        return ", ".join(PurePath(p).name if p.startswith(("/", "~", ".")) else p for p in parts)
    if isinstance(value, list):
        return [public_names(v) for v in value]
    if isinstance(value, dict):
        return {k: public_names(v) for k, v in value.items()}
    return value


def training_section(info: dict) -> dict:
    return {k: public_names(info[k]) for k in INFO_KEYS if info.get(k) is not None}


def validation_section(info: dict) -> dict | None:
    val = info.get("val_metrics")
    if not isinstance(val, dict):
        return None
    return {k: val[k] for k in VALIDATION_KEYS if k in val}


def model_card(service) -> dict:
    """The card as JSON for ``GET /model-card`` (the page renders it in either language)."""
    e = service.embedder
    info = e.info if isinstance(getattr(e, "info", None), dict) else {}
    thr = service.decision_threshold
    threshold = None if thr is None else thr.to_record()
    if threshold is not None and "source" in threshold:
        threshold = {**threshold, "source": public_names(threshold["source"])}
    report = None
    if service.report is not None:
        report = service.report.summary(e.fingerprint)
        report["data"] = public_names(report["data"])
    return finite(
        {
            **service.model_info(),
            "backbone": backbone_of(e),
            "pair_head": has_pair_head(e),
            "threshold": threshold,
            "training": training_section(info),
            "validation": validation_section(info),
            "report": report,
        }
    )


def finite(value: object) -> object:
    """NaN and infinities as null: JSON has no such numbers (an ROC's first threshold is
    +inf, a damaged model's metrics may be NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
