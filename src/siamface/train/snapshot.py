"""What a resume needs of a run, taken from it and given back: weights, loss parameters,
optimizer and loss-scaler state, counters, and the RNG and sampler order of the epoch's start.

The snapshot is the same whatever the number of processes (batches and counters are global;
sharded class centres are gathered), so a run may resume on another world size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from siamface.train.distributed import main_decides
from siamface.train.partial_fc import reshard_optimizer_state
from siamface.train.rundir import OutputError
from siamface.train.state import Progress, save_state

if TYPE_CHECKING:
    from siamface.train.run import Run


def run_state(run: Run, state: Progress, epoch_start_rng: dict) -> dict[str, Any]:
    """Everything a resume needs to continue exactly where ``run`` is now."""
    optim = run.opt.state_dict()
    reshard_optimizer_state(optim["optimizer"], run.opt.optimizer, run.objective, True)
    return {
        "model": run.model.state_dict(),
        "loss": run.objective.state_dict(),
        "optim": optim,
        "grad_scaler": run.step.scaler.state_dict(),
        **state.to_state(state.elapsed()),
        "epoch_start_rng": epoch_start_rng,
        # MPerClassSampler shuffles its label list in place every epoch, so its order is
        # state that the next epoch's batches depend on.
        "sampler_labels_at_epoch_start": state.sampler_labels,
    }


def restore_run(run: Run, state: Progress, st: dict[str, Any]) -> None:
    """Put a saved snapshot back into a freshly built ``run`` and ``state``."""
    run.model.load_state_dict(st["model"])
    run.objective.load_state_dict(st["loss"])
    reshard_optimizer_state(st["optim"]["optimizer"], run.opt.optimizer, run.objective, False)
    run.opt.load_state_dict(st["optim"])
    if st.get("grad_scaler"):
        run.step.scaler.load_state_dict(st["grad_scaler"])
    state.restore(st)
    # Replaying the epoch from its start needs the sampler as it was then.
    run.sampler.labels = list(state.sampler_labels or [])
    run.log(
        f"resuming at epoch {state.epoch + 1}, step {state.step_in_epoch} "
        f"({state.train_seconds / 60:.1f} min already trained)"
    )


def save_run_state(run: Run, state: Progress, epoch_start_rng: dict) -> None:
    """Rank 0 writes the snapshot; every rank learns whether that worked."""
    snapshot = run_state(run, state, epoch_start_rng)  # collective when centres are sharded
    main_decides(run.ctx, lambda: save_state(run.run_dir, snapshot), OutputError)
