"""The end of a fine-tuning run: WiSE-FT mixing, then an honest verdict on test people.

Validation identities choose the epoch (and the WiSE-FT mixing weight), so their numbers are
optimistic: a run that picks the best of 30 noisy epochs on 78 people "beats" its start there
even when nothing was learnt. The verdict is therefore measured on *test* identities that
chose nothing (``test_identities``), as a paired comparison of the candidate with the start on
the same people, with a 95 % interval by bootstrap over identities
(:mod:`siamface.scores.bootstrap`). ``best.safetensors`` stays the candidate only when the
gain on ``select_metric`` is positive at the interval's lower bound and no metric is
significantly worse (under the training condition and, with one, on clean faces too);
otherwise it is rewritten as the starting model and the run says "no significant gain".

WiSE-FT (Wortsman et al., 2022): the weights ``(1 - a) * start + a * fine_tuned`` usually keep
what the start knew on other people while keeping most of the fine-tune's gain; ``a`` is
chosen on the validation identities from a small grid (with a condition, among the mixes that
are not significantly worse than the start on the clean validation faces). Then, with
``finetune.centre``, validation decides whether the candidate is centred on its training faces'
mean embedding (:mod:`siamface.train.centre`); a run whose epochs never beat the start may still
offer the start centred. Either way the test people have the last word.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from siamface.embed.tensors import embed_tensors
from siamface.errors import SiamfaceError
from siamface.model.checkpoint import load_checkpoint, save_checkpoint
from siamface.scores.bootstrap import (
    METRICS,
    clusters_of,
    compare,
    format_delta,
    histograms_all_pairs,
)
from siamface.train.centre import CENTRE_KEY, choose_centre, load_weights, with_centre
from siamface.train.checkpoints import BEST
from siamface.train.guard import load_guard
from siamface.train.rundir import writing
from siamface.train.validation import metric_value

if TYPE_CHECKING:
    from siamface.train.guard import GuardSet
    from siamface.train.hooks import RunView
    from siamface.train.start import StartingModel

#: Mixing weights tried by WiSE-FT (1.0, the fine-tuned weights, is the best epoch itself),
#: from the fine-tuned end towards the start: on a tie the mix nearer the start wins.
WISE_ALPHAS = (0.75, 0.5, 0.25)
MAX_CLUSTERS = 80


def mix_weights(start: dict, tuned: dict, alpha: float) -> dict:
    """``(1 - alpha) * start + alpha * tuned`` for floating tensors; the rest from ``tuned``."""
    out = {}
    for k, v in tuned.items():
        s = start.get(k)
        if s is not None and v.is_floating_point() and s.shape == v.shape:
            out[k] = torch.lerp(s.to(v.dtype), v, alpha)
        else:
            out[k] = v
    return out


def worse_beyond(row: dict, metric: str, margin: float) -> bool:
    """Is the candidate significantly worse than the start by more than ``margin``: the whole
    95 % interval of the difference beyond ``-margin`` (``+margin`` for EER)?"""
    lo, hi = row["delta_ci"]
    return hi < -margin if METRICS[metric] else lo > margin


def choose_alpha(table: list[dict], metric: str) -> float:
    """The mixing weight of the best ``metric`` among the rows that are not worse on clean
    validation faces (``clean_worse`` empty or absent); rows are in the order tried, and a tie
    goes to the later row (the mix nearer the start). When every row is worse on clean faces,
    the best of all rows: the verdict on test people then decides."""
    higher = METRICS[metric]
    scored = [r for r in table if r.get(metric) is not None]
    allowed = [r for r in scored if not r.get("clean_worse")] or scored
    chosen = None
    for r in allowed:
        if chosen is None or (
            r[metric] >= chosen[metric] if higher else r[metric] <= chosen[metric]
        ):
            chosen = r
    return 1.0 if chosen is None else float(chosen["alpha"])


def wise_ft(view: RunView, start_sd: dict, tuned_sd: dict) -> tuple[float, list[dict]]:
    """Choose the mixing weight on validation; returns (alpha, table). ``alpha = 1`` keeps the
    fine-tuned weights.

    With a training condition, validation people are seen under it, so the best mix there can
    be one that lost what the start knew on clean faces, which the verdict then refuses and
    the whole run ships the start. Each mix is therefore also compared with the start on the
    *clean* validation faces, and only mixes with no metric significantly worse there compete.
    The rule is stricter than the verdict's clean check (which tolerates ``guard_margin``):
    validation people are few, and a mix just inside the margin on them can fall outside it on
    the test people (the L2-SP run in docs/finetune.md: clean TAR@FAR=1e-3 upper bound -0.009
    on validation people, -0.016 on test people, and the run shipped the start).
    """
    cfg, d = view.cfg, view.data
    metric = cfg.run.select_metric
    best = next((h for h in view.state.history if h.get("epoch") == view.state.best_epoch), {})
    table = [{"alpha": 1.0, metric: best.get("val_" + metric)}]  # history.json's key
    for a in WISE_ALPHAS:
        load_weights(view.model, mix_weights(start_sd, tuned_sd, a))
        m = view.validate_here()
        if m is not None:
            table.append({"alpha": a, metric: metric_value(m, metric), "auc": m.auc, "eer": m.eer})
    if d.val_clean_pixels is not None and len(d.val_identities) >= 2:
        groups = clusters_of(d.val_labels, MAX_CLUSTERS, cfg.run.seed)
        clean, labels = d.val_clean_pixels, d.val_labels
        ref = _histograms(view, start_sd, clean, labels, groups)
        for row in table:
            sd = tuned_sd if row["alpha"] == 1.0 else mix_weights(start_sd, tuned_sd, row["alpha"])
            new = _histograms(view, sd, clean, labels, groups)
            comp = compare(new, ref, cfg.run.verdict_replicates, cfg.run.seed)
            row["clean_worse"] = [k for k, r in comp.items() if worse_beyond(r, k, 0.0)]
    chosen = choose_alpha(table, metric)
    view.log(
        "WiSE-FT on validation: "
        + ", ".join(
            f"a={r['alpha']}: {r[metric]:.4f}"
            + (f" (clean: worse on {', '.join(r['clean_worse'])})" if r.get("clean_worse") else "")
            for r in table
            if r.get(metric) is not None
        )
        + f" -> a={chosen}"
    )
    return chosen, table


@torch.no_grad()
def _embed(view: RunView, sd: dict, pixels) -> np.ndarray:
    load_weights(view.model, sd)
    return embed_tensors(
        view.model,
        pixels,
        view.pre,
        batch_size=128,
        device=view.device,
        channels_last=view.cfg.machine.channels_last,
    ).numpy()


def _histograms(view: RunView, sd: dict, pixels, labels: np.ndarray, groups):
    """Pair-score histograms of the weights ``sd`` on these faces, for a paired comparison."""
    return histograms_all_pairs(_embed(view, sd, pixels), labels, groups)


def final_verdict(view: RunView, start: StartingModel) -> dict[str, Any] | None:
    """WiSE-FT (if asked), then the candidate vs the start on the test identities; rewrites
    ``best.safetensors`` with whatever the verdict keeps. None without a start or test set."""
    d, cfg = view.data, view.cfg
    if not d.test_identities or d.test_pixels is None:
        return None
    run = view.run_dir
    start_sd = {k: v.cpu() for k, v in start.checkpoint.state_dict.items()}
    best_ck = load_checkpoint(run / BEST)
    tuned_sd = best_ck.state_dict
    was = {k: v.detach().clone() for k, v in view.model.state_dict().items()}
    out: dict[str, Any] = {
        "test_identities": len(d.test_identities),
        "test_images": int(len(d.test_labels)),
        "condition": d.condition,
        "select_metric": cfg.run.select_metric,
        "best_epoch": view.state.best_epoch,
    }
    try:
        cand_sd, cand = tuned_sd, f"epoch {view.state.best_epoch}"
        if view.state.best_epoch == 0:
            cand_sd, cand = start_sd, "the starting model"
        elif cfg.finetune.wise_ft:
            alpha, table = wise_ft(view, start_sd, tuned_sd)
            out["wise_ft"] = {"alpha": alpha, "validation": table}
            if alpha < 1.0:
                cand_sd = mix_weights(start_sd, tuned_sd, alpha)
                cand = f"WiSE-FT a={alpha} of epoch {view.state.best_epoch}"
        if cfg.finetune.centre and CENTRE_KEY not in cand_sd:
            centre, out["centre"] = choose_centre(view, cand_sd)
            if centre is not None:
                cand_sd, cand = with_centre(cand_sd, centre), f"{cand}, centred"
        if cand_sd is start_sd:
            out.update(
                kept="start",
                verdict="no epoch beat the start on validation; "
                "best.safetensors is the starting model",
            )
            return out
        out["candidate"] = cand
        sets = {"test": (d.test_pixels, d.test_labels)}
        if d.test_clean_pixels is not None:
            sets["test_clean"] = (d.test_clean_pixels, d.test_labels)
        if cfg.run.guard:
            guard = guard_set(view, out)
            if guard is not None:
                sets["guard"] = (guard.pixels, guard.labels)
        comps = {}
        for name, (pix, labels) in sets.items():
            groups = clusters_of(labels, MAX_CLUSTERS, cfg.run.seed)
            h_new = _histograms(view, cand_sd, pix, labels, groups)
            h_ref = _histograms(view, start_sd, pix, labels, groups)
            comps[name] = compare(h_new, h_ref, cfg.run.verdict_replicates, cfg.run.seed)
        out["comparisons"] = comps
        main = comps["test"][cfg.run.select_metric]
        worse = [
            f"{k} ({n})"
            for n, c in comps.items()
            for k, r in c.items()
            if worse_beyond(r, k, 0.0 if n == "test" else cfg.run.guard_margin)
        ]
        gain = main["significant"] == "better"
        where = f"on {len(d.test_identities)} test people" + (
            f" under {d.condition}" if d.condition else ""
        )
        if gain and not worse:
            out["kept"] = "fine-tuned"
            out["verdict"] = (
                f"fine-tuning kept ({cand}): {where}, {format_delta(cfg.run.select_metric, main)}; "
                "no metric significantly worse"
            )
            if cand_sd is not tuned_sd:
                _save_best(view, cand_sd, best_ck.info.get("epoch", view.state.best_epoch))
        else:
            why = f"significantly worse: {', '.join(worse)}" if worse else "gain not significant"
            out["kept"] = "start"
            out["verdict"] = (
                f"no significant gain ({format_delta(cfg.run.select_metric, main)}, {where}; "
                f"{why}); best.safetensors is the starting model"
            )
            _save_best(view, start_sd, 0)
        return out
    finally:
        load_weights(view.model, was)


def guard_set(view: RunView, out: dict[str, Any]) -> GuardSet | None:
    """The ``guard`` people as the model sees them; an unusable guard is reported in the
    verdict (``guard``) and skipped, never allowed to lose the finished run."""
    try:
        g = load_guard(view.cfg.run.guard, view.pre)
    except SiamfaceError as err:
        out["guard"] = {"folder": str(view.cfg.run.guard), "skipped": str(err)}
        view.log(f"guard skipped: {err}")
        return None
    out["guard"] = {
        "folder": str(view.cfg.run.guard),
        "identities": g.identities,
        "images": len(g.labels),
        "unreadable_or_no_face": g.unreadable,
    }
    return g


def _save_best(view: RunView, sd: dict, epoch: int) -> None:
    """Rewrite best.safetensors with ``sd``, its validation threshold measured now."""
    load_weights(view.model, sd)
    m = view.validate_here()
    ckpt = view.checkpoint(m, epoch)
    with writing(view.run_dir / BEST, "a checkpoint"):
        save_checkpoint(ckpt, view.run_dir / BEST)
