"""Identity folders -> the training and validation sets of one run, with their report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from siamface.data.dataset import (
    DEFAULT_CACHE_LIMIT_BYTES,
    DecodedImages,
    FaceImageDataset,
    decode_images,
)
from siamface.data.folders import Sample, scan_identity_folders, scan_images
from siamface.data.marker import MARKER_NAME, check_complete, read_marker
from siamface.data.report import DatasetReport, build_report
from siamface.data.split import split_identities
from siamface.data.transforms import Preprocessing, train_augmentation
from siamface.errors import SiamfaceError
from siamface.faces.cache import CachedAlignedDecoder
from siamface.model.network import backbone_default_norm
from siamface.system import usable_cpus
from siamface.train.config import TrainConfig


def alignment_for(
    cfg: TrainConfig, data_dirs: list[str], model_aligned: bool = False
) -> tuple[bool, dict, bool]:
    """Decide (aligned, align params, align on the fly) for a run.

    Folders written by ``siamface prepare`` carry a marker with the alignment they used; the
    checkpoint then records it, so verify/embed align raw photos the same way. ``align=true``
    aligns raw folders during the decode pass instead, and so does ``align=auto`` when the
    starting model (``init``) was trained on aligned faces: a face model fed unaligned crops
    is a different, worse model.
    """
    if cfg.align == "false":
        return False, {}, False
    markers = {d: read_marker(d) for d in data_dirs}
    found = {d: m for d, m in markers.items() if m is not None}
    if found and len(found) != len(markers):
        raise SiamfaceError(
            "some data folders were prepared (aligned) by 'siamface prepare' and some were not: "
            f"{', '.join(str(d) for d, m in markers.items() if m is None)} lack "
            f"{MARKER_NAME}. Prepare them too, or set align=false to treat all as plain crops"
        )
    if found:
        for d, m in found.items():
            check_complete(d, m)
        aligns = [m.get("align", {}) for m in found.values()]
        if any(a != aligns[0] for a in aligns):
            raise SiamfaceError(
                "the data folders were prepared with different alignment settings; prepare "
                "them with the same options (one model expects one kind of crop)"
            )
        return True, dict(aligns[0]), False
    if cfg.align == "true" or model_aligned:
        return True, {}, True
    return False, {}, False


@dataclass
class RunData:
    """Everything the loop needs about the data, decided once before training."""

    train: FaceImageDataset
    train_identities: list[str]
    val_pixels: torch.Tensor | None
    val_paths: list[Path]
    val_labels: np.ndarray
    val_identities: list[str]
    report: DatasetReport
    excluded_cross_duplicates: int
    preprocessing: Preprocessing


def _rows(decoded: DecodedImages, picks: list[int]) -> torch.Tensor | None:
    if decoded.pixels is None:
        return None
    pos = {idx: row for row, idx in enumerate(decoded.ok)}
    return decoded.pixels[[pos[i] for i in picks]]


def prepare_run_data(
    cfg: TrainConfig,
    data_dirs: list[str],
    progress: bool = True,
    workers: int | None = None,
    base: Preprocessing | None = None,
) -> RunData:
    """Scan, decode (listing unreadable files), report, split by identity, build datasets.

    ``base``: the starting model's preprocessing (``init``), whose size, normalisation and
    alignment the run must keep; otherwise they come from the config and the backbone.
    """
    scan = scan_identity_folders(data_dirs)
    aligned, align_params, on_the_fly = alignment_for(
        cfg, data_dirs, model_aligned=bool(base and base.aligned)
    )
    if base is not None:
        prepared_other = aligned and not on_the_fly and align_params and base.align
        if prepared_other and align_params != base.align:
            raise SiamfaceError(
                "the data folders were prepared with other alignment settings than the "
                f"starting model uses ({align_params} vs {base.align}); prepare them again "
                "with the model's settings, or set align=false"
            )
        pre = Preprocessing(
            base.image_size, base.mean, base.std, aligned=aligned, align=dict(base.align)
        )
    else:
        mean, std = backbone_default_norm(cfg.backbone)
        pre = Preprocessing(cfg.image_size, mean, std, aligned=aligned, align=align_params)
    decoder = CachedAlignedDecoder(pre) if on_the_fly else None
    decoded = decode_images(
        [s.path for s in scan.samples],
        pre.image_size,
        workers=workers or usable_cpus(),
        progress=progress,
        desc="detecting + aligning faces" if on_the_fly else "decoding images",
        decoder=decoder,
    )
    good: list[int] = decoded.ok
    unreadable = {scan.samples[i].path: r for i, r in decoded.errors.items()}
    report = build_report(
        [scan.samples[i] for i in good],
        unreadable,
        scan.ignored,
        cfg.min_images_per_identity,
        empty_identities=scan.empty_identities,
    )
    # Files that appear under two identities are label errors: keep them out of both sets.
    cross = {Path(f) for d in report.duplicates_across_identities for f in d["files"]}
    good = [i for i in good if scan.samples[i].path not in cross]
    counts = Counter(scan.samples[i].identity for i in good)
    kept_ids = sorted(i for i, n in counts.items() if n >= cfg.min_images_per_identity)
    if len(kept_ids) < 2:
        raise SiamfaceError(
            f"need at least 2 identities with >= {cfg.min_images_per_identity} readable images; "
            f"found {len(kept_ids)}"
        )
    train_ids, val_ids = split_identities(kept_ids, cfg.val_identities, cfg.seed)
    if len(train_ids) * cfg.m_per_class < cfg.batch_size:
        raise SiamfaceError(
            f"m_per_class ({cfg.m_per_class}) x training identities ({len(train_ids)}) must be "
            f">= batch_size ({cfg.batch_size}); lower batch_size or add identities"
        )
    tr_set, va_set = set(train_ids), set(val_ids)
    tr_idx = [i for i in good if scan.samples[i].identity in tr_set]
    va_idx = [i for i in good if scan.samples[i].identity in va_set]
    label_of = {ident: k for k, ident in enumerate(train_ids)}
    samples: list[Sample] = scan.samples
    train = FaceImageDataset(
        labels=[label_of[samples[i].identity] for i in tr_idx],
        size=pre.image_size,
        pixels=_rows(decoded, tr_idx),
        paths=[samples[i].path for i in tr_idx],
        transform=train_augmentation(pre.image_size, cfg.augment),
        decoder=decoder,
    )
    n_unlabeled = 0
    if cfg.unlabeled_dirs():
        # Faces without identities: appended after the labelled images with label -1; only
        # the distillation terms use them (the sampler and the metric loss skip them).
        extra = scan_images(cfg.unlabeled_dirs())
        dec = decode_images(
            extra,
            pre.image_size,
            workers=workers or usable_cpus(),
            progress=progress,
            desc="unlabeled faces",
            decoder=decoder,
            cache_limit_bytes=0 if train.pixels is None else DEFAULT_CACHE_LIMIT_BYTES,
        )
        if not dec.ok:
            raise SiamfaceError("none of the unlabeled images could be used")
        n_unlabeled = len(dec.ok)
        train = FaceImageDataset(
            labels=train.labels.tolist() + [-1] * n_unlabeled,
            size=pre.image_size,
            pixels=None if train.pixels is None else torch.cat([train.pixels, dec.pixels]),
            paths=list(train.paths) + [extra[i] for i in dec.ok],
            transform=train.transform,
            decoder=decoder,
        )
    train.n_labeled = len(train) - n_unlabeled
    val_label_of = {ident: k for k, ident in enumerate(val_ids)}
    return RunData(
        train=train,
        train_identities=train_ids,
        val_pixels=_rows(decoded, va_idx),
        val_paths=[samples[i].path for i in va_idx],
        val_labels=np.array([val_label_of[samples[i].identity] for i in va_idx], dtype=np.int64),
        val_identities=val_ids,
        report=report,
        excluded_cross_duplicates=len(cross),
        preprocessing=pre,
    )
