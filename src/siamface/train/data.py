"""Identity folders -> the training and validation sets of one run, with their report."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from siamface.errors import SiamfaceError
from siamface.faces.cache import CachedAlignedDecoder
from siamface.folders.identities import Sample, scan_identity_folders, scan_images
from siamface.folders.marker import MARKER_NAME, check_complete, read_marker
from siamface.folders.report import DatasetReport, build_report
from siamface.folders.scan_index import ScanIndex, index_path, scan_files
from siamface.folders.split import keep_share, split_identities
from siamface.model.network import backbone_default_norm
from siamface.system import usable_cpus
from siamface.tensors.conditions import Condition, parse_condition, path_key
from siamface.tensors.dataset import FaceImageDataset
from siamface.tensors.transforms import Preprocessing, train_augmentation
from siamface.train.config import TrainConfig
from siamface.train.distributed import DistContext, barrier


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
    if cfg.data.align == "false":
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
    if cfg.data.align == "true" or model_aligned:
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
    scan: dict = field(default_factory=dict)  # how the file check went (for the log/bench)
    # Test identities: held out for the final verdict only, never used to choose anything.
    test_identities: list[str] = field(default_factory=list)
    test_pixels: object | None = None  # rows as seen under ``condition`` (or clean)
    test_clean_pixels: object | None = None  # the same rows clean (None without condition)
    test_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    test_paths: list[Path] = field(default_factory=list)
    # With a training condition: item i of ``train`` shows the clean image ``train_source[i]``
    # (its own index for clean items), the anchor of keep_close and of class-mean centres.
    train_source: list[int] | None = None
    condition: str | None = None
    # With a condition: the validation rows clean, so that WiSE-FT chooses its mix among those
    # that keep clean faces as the start had them (the verdict's clean check, on people who
    # may choose).
    val_clean_pixels: object | None = None
    # Training identities left out by ``data.train_identities`` (a learning curve's point).
    unused_train_identities: int = 0


def cache_bytes(cfg: TrainConfig, local_world: int) -> int:
    """Decoded-pixel budget of one process: ``cache_gb`` is per machine."""
    return int(cfg.machine.cache_gb * 1024**3) // max(1, local_world)


def cap_validation(val_ids: list[str], counts: Counter, cap: int, seed: int) -> list[str]:
    """Whole validation identities, in a seeded order, until ``cap`` images (0 = no cap).

    Validation embeds every image and scores its pairs; past a few tens of thousands of
    images that costs minutes per epoch and adds nothing the metric needs.
    """
    if not cap or sum(counts[i] for i in val_ids) <= cap:
        return val_ids
    order = list(val_ids)
    np.random.default_rng(seed).shuffle(order)
    kept, total = [], 0
    for ident in order:
        if total + counts[ident] > cap and len(kept) >= 2:
            break
        kept.append(ident)
        total += counts[ident]
    return sorted(kept)


def prepare_run_data(
    cfg: TrainConfig,
    data_dirs: list[str],
    progress: bool = True,
    workers: int | None = None,
    ctx: DistContext | None = None,
    base: Preprocessing | None = None,
) -> RunData:
    """Scan (cached), check every file, report, split by identity, build the datasets.

    ``base``: the starting model's preprocessing (``init``), whose size, normalisation and
    alignment the run must keep; otherwise they come from the config and the backbone.
    Under data parallelism rank 0 scans first and fills the index; the other processes then
    find every file in it.
    """
    ctx = ctx or DistContext()
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
        mean, std = backbone_default_norm(cfg.model.backbone)
        pre = Preprocessing(cfg.model.image_size, mean, std, aligned=aligned, align=align_params)
    decoder = CachedAlignedDecoder(pre) if on_the_fly else None
    check = f"align:{json.dumps(pre.align, sort_keys=True)}" if on_the_fly else "decode"
    # Faces without identities (distillation only) are checked in the same pass and share
    # the pixel store; they come after the labelled files.
    extra = scan_images(cfg.unlabeled_dirs()) if cfg.unlabeled_dirs() else []
    paths = [s.path for s in scan.samples]
    n_samples = len(paths)
    all_paths = paths + list(extra)
    keep = len(all_paths) * 3 * pre.image_size**2 <= cache_bytes(cfg, ctx.local_world_size)
    index = ScanIndex(index_path(cfg.data.scan_cache))
    try:
        if ctx.enabled and not ctx.is_main:
            barrier(ctx)  # wait for rank 0 to fill the index
        result = scan_files(
            all_paths,
            pre.image_size,
            check,
            index,
            keep_pixels=keep,
            decoder=decoder,
            workers=workers or usable_cpus(),
            progress=progress,
            desc="detecting + aligning faces" if on_the_fly else "checking images",
        )
        if ctx.enabled and ctx.is_main:
            barrier(ctx)
    finally:
        index.close()
    facts = result.facts[:n_samples]
    good = [i for i, f in enumerate(facts) if f.ok]
    unreadable = {paths[i]: f.error or "unreadable" for i, f in enumerate(facts) if not f.ok}
    digests = {paths[i]: f.sha256 for i, f in enumerate(facts) if f.sha256}
    report = build_report(
        [scan.samples[i] for i in good],
        unreadable,
        scan.ignored,
        cfg.data.min_images_per_identity,
        empty_identities=scan.empty_identities,
        digests=digests,
    )
    # Files that appear under two identities are label errors: keep them out of both sets.
    cross = {Path(f) for d in report.duplicates_across_identities for f in d["files"]}
    good = [i for i in good if scan.samples[i].path not in cross]
    counts = Counter(scan.samples[i].identity for i in good)
    kept_ids = sorted(i for i, n in counts.items() if n >= cfg.data.min_images_per_identity)
    if len(kept_ids) < 2:
        raise SiamfaceError(
            f"need at least 2 identities with >= {cfg.data.min_images_per_identity} readable "
            f"images; found {len(kept_ids)}"
        )
    # The test identities are carved first, with their own seed, so that adding a test split
    # leaves the rule that draws validation identities from the rest unchanged.
    rest, test_ids = split_identities(kept_ids, cfg.data.test_identities, cfg.run.seed + 7919)
    train_ids, val_ids = split_identities(rest, cfg.data.val_identities, cfg.run.seed)
    val_ids = cap_validation(val_ids, counts, cfg.run.val_max_images, cfg.run.seed)
    # data.train_identities: a learning curve's point, the same validation and test people.
    all_train = len(train_ids)
    train_ids = keep_share(train_ids, cfg.data.train_identities, cfg.run.seed + 104729)
    if len(train_ids) * cfg.data.m_per_class < cfg.data.batch_size:
        raise SiamfaceError(
            f"m_per_class ({cfg.data.m_per_class}) x training identities ({len(train_ids)}) "
            f"must be >= batch_size ({cfg.data.batch_size}); lower batch_size or add identities"
        )
    tr_set, va_set, te_set = set(train_ids), set(val_ids), set(test_ids)
    tr_idx = [i for i in good if scan.samples[i].identity in tr_set]
    va_idx = [i for i in good if scan.samples[i].identity in va_set]
    te_idx = [i for i in good if scan.samples[i].identity in te_set]
    label_of = {ident: k for k, ident in enumerate(train_ids)}
    samples: list[Sample] = scan.samples
    labels = [label_of[samples[i].identity] for i in tr_idx]
    rows, train_paths = list(tr_idx), [samples[i].path for i in tr_idx]
    pixels = result.pixels
    cond = parse_condition(cfg.data.condition, cfg.run.seed) if cfg.data.condition else None
    train_source = None
    va_rows, te_rows = list(va_idx), list(te_idx)
    if cond:
        if pixels is None:
            raise SiamfaceError(
                f"condition={cfg.data.condition} needs the decoded images in memory; raise "
                f"cache_gb (now {cfg.machine.cache_gb}) or train on fewer images"
            )
        pixels, extra_rows, va_rows, te_rows = degraded_rows(
            pixels, tr_idx, va_idx, te_idx, [s.path for s in samples], cond, cfg.data.condition_rate
        )
        n_clean = len(tr_idx)
        train_source = list(range(n_clean)) + [j % n_clean for j in range(len(extra_rows))]
        labels += [labels[j % n_clean] for j in range(len(extra_rows))]
        train_paths += [train_paths[j % n_clean] for j in range(len(extra_rows))]
        rows += extra_rows
    n_unlabeled = 0
    if extra:
        # Appended after the labelled images with label -1; only the distillation terms use
        # them (the sampler and the metric loss skip them).
        ok_extra = [j for j, f in enumerate(result.facts[n_samples:]) if f.ok]
        if not ok_extra:
            raise SiamfaceError("none of the unlabeled images could be used")
        n_unlabeled = len(ok_extra)
        labels += [-1] * n_unlabeled
        rows += [n_samples + j for j in ok_extra]
        train_paths += [extra[j] for j in ok_extra]
        if train_source is not None:
            train_source += list(range(len(train_source), len(train_source) + n_unlabeled))
    train = FaceImageDataset(
        labels=labels,
        size=pre.image_size,
        pixels=pixels,
        rows=rows if pixels is not None else None,
        paths=train_paths,
        transform=train_augmentation(pre.image_size, cfg.data.augment),
        decoder=decoder,
    )
    train.n_labeled = len(train) - n_unlabeled
    val_label_of = {ident: k for k, ident in enumerate(val_ids)}
    return RunData(
        train=train,
        train_identities=train_ids,
        unused_train_identities=all_train - len(train_ids),
        val_pixels=_RowView(pixels, va_rows) if pixels is not None else None,
        val_paths=[samples[i].path for i in va_idx],
        val_labels=np.array([val_label_of[samples[i].identity] for i in va_idx], dtype=np.int64),
        val_identities=val_ids,
        report=report,
        excluded_cross_duplicates=len(cross),
        preprocessing=pre,
        scan={
            "files": len(all_paths),
            "checked_now": result.checked,
            "from_index": len(all_paths) - result.checked,
            "seconds": round(result.seconds, 2),
            "pixels_in_ram": keep,
            "pixels_from_disk_cache": result.pixels_from_disk,
        },
        test_identities=test_ids,
        test_pixels=_RowView(pixels, te_rows) if pixels is not None and te_rows else None,
        test_clean_pixels=_RowView(pixels, te_idx) if cond and te_idx else None,
        val_clean_pixels=_RowView(pixels, va_idx) if cond and va_idx else None,
        test_labels=np.array([test_ids.index(samples[i].identity) for i in te_idx], dtype=np.int64),
        test_paths=[samples[i].path for i in te_idx],
        train_source=train_source,
        condition=cond.spec if cond else None,
    )


def degraded_rows(
    pixels: torch.Tensor,
    tr_idx: list[int],
    va_idx: list[int],
    te_idx: list[int],
    paths: list[Path],
    cond: Condition,
    rate: float,
) -> tuple[torch.Tensor, list[int], list[int], list[int]]:
    """The pixel store with degraded images appended: ``rate`` of the training set becomes
    degraded copies (a fixed number per image, so frozen-layer features stay cacheable), and
    the validation and test images as the condition shows them (one fixed version each).

    Each copy's degradation is keyed by its file path and copy number, and the seed: the same
    run, a resume or another run on the same data degrade every image identically."""
    n = len(tr_idx)
    copies = round(n * rate / (1.0 - rate)) if n else 0
    jobs = [(tr_idx[j % n], f"{paths[tr_idx[j % n]]}#{j // n}") for j in range(copies)]
    jobs += [(i, str(paths[i])) for i in va_idx + te_idx]
    out = torch.empty((len(jobs), *pixels.shape[1:]), dtype=torch.uint8)
    for k, (row, key) in enumerate(jobs):
        out[k] = cond.apply_chw(pixels[row], path_key(key))
    base = len(pixels)
    allpix = torch.cat([pixels, out])
    new = list(range(base, base + len(jobs)))
    return allpix, new[:copies], new[copies : copies + len(va_idx)], new[copies + len(va_idx) :]


class _RowView:
    """Rows of a shared pixel tensor, sliced in batches without copying the whole set.

    Validation embeds ``view[a:b]``; only that batch is materialised."""

    def __init__(self, pixels: torch.Tensor, rows: list[int]) -> None:
        self.pixels = pixels
        self.rows = torch.as_tensor(rows, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.pixels.shape[1:])

    def __getitem__(self, key: slice) -> torch.Tensor:
        return self.pixels[self.rows[key]]
