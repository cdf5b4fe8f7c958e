"""Centring a fine-tuned model on its training faces, when validation people say it helps.

Every face a model embeds shares a component along the mean embedding of the population it
sees, and poor faces (small, blurred, compressed, badly lit) lean towards it most: they look
like "the average face". Impostor pairs of such faces therefore score high, and those are the
pairs that set the threshold at a low false-accept rate. Subtracting the mean and normalising
again (:meth:`siamface.model.network.EmbeddingNet.finish`) removes that shared part. The mean is
estimated on the run's own training faces as training saw them (with a condition, clean and
degraded copies alike), so it is the user's population and camera, not ours.

It is a choice, so validation people make it: the candidate weights are validated plain and
centred, and the centre stays only when ``select_metric`` improves. The test-people verdict
that follows judges the centred model like any other candidate (a centre that helps validation
people but not test people is refused with the rest).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from siamface.embed.tensors import embed_tensors
from siamface.train.validation import is_better, metric_value

if TYPE_CHECKING:
    from siamface.train.hooks import RunView

#: Training faces embedded for the mean: enough for a mean of unit vectors to settle
#: (its standard error is below 0.02 per coordinate of a 128-d embedding), cheap on a CPU.
MAX_FACES = 2000
CENTRE_KEY = "centre"


@torch.no_grad()
def training_mean(view: RunView, limit: int = MAX_FACES) -> torch.Tensor:
    """The mean unit embedding of (a seeded sample of) the training faces, as the model in
    ``view`` embeds them now (not centred)."""
    train = view.data.train
    n = len(train)
    g = torch.Generator().manual_seed(view.cfg.run.seed + 7919)
    idx = torch.randperm(n, generator=g)[:limit].sort().values if n > limit else torch.arange(n)

    def load(a: int, b: int) -> torch.Tensor:
        return torch.stack([train.raw(int(i)) for i in idx[a:b]])

    emb = embed_tensors(
        view.model,
        load,
        view.pre,
        count=len(idx),
        batch_size=128,
        device=view.device,
        channels_last=view.cfg.machine.channels_last,
        desc="training mean",
    )
    return emb.mean(dim=0)


def choose_centre(view: RunView, sd: dict) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """(centre or None, a record for the summary) for the weights ``sd``, on validation.

    Leaves ``view.model`` holding ``sd``, not centred."""
    model = view.model
    metric = view.cfg.run.select_metric
    model.set_centre(None)
    model.load_state_dict(sd)
    plain = view.validate_here()
    centre = training_mean(view)
    model.set_centre(centre)
    centred = view.validate_here()
    model.set_centre(None)
    if plain is None or centred is None:
        return None, {"kept": False, "why": "no validation people"}
    before, after = metric_value(plain, metric), metric_value(centred, metric)
    kept = is_better(after, before, metric)
    rec = {
        "kept": kept,
        "metric": metric,
        "plain": round(before, 5),
        "centred": round(after, 5),
        "norm": round(float(centre.norm()), 4),
        "faces": min(len(view.data.train), MAX_FACES),
    }
    view.log(
        f"centring on the training faces' mean (norm {rec['norm']:.3f}): validation {metric} "
        f"{before:.4f} -> {after:.4f}: " + ("kept" if kept else "not kept")
    )
    return (centre if kept else None), rec


def with_centre(sd: dict, centre: torch.Tensor | None) -> dict:
    """``sd`` with the centre buffer (or without one, for None)."""
    out = {k: v for k, v in sd.items() if k != CENTRE_KEY}
    if centre is not None:
        out[CENTRE_KEY] = centre.detach().cpu()
    return out


def load_weights(model: torch.nn.Module, sd: dict) -> None:
    """Load ``sd`` into the run's network, centred exactly when ``sd`` holds a centre."""
    model.set_centre(sd.get(CENTRE_KEY))
    model.load_state_dict(sd)
