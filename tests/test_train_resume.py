"""Resume after kill -9, Ctrl-C and a full disk, with augmentation on; the run-directory lock.

Every interrupted run here is compared with an uninterrupted run of the same config: the final
weights must be bit-identical (``torch.equal``), which is what the README promises.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_BACKBONE
from safetensors.torch import load_file

from siamface.cli.main import main
from siamface.train.config import make_config
from siamface.train.fit import TrainingInterrupted
from siamface.train.hooks import Hook, RunView
from siamface.train.job import resume, train

# Default augmentation on (the case that used to drift on resume); 8 steps per epoch.
CFG = [
    f"backbone={TINY_BACKBONE}",
    "pretrained=none",
    "image_size=32",
    "embedding_size=16",
    "batch_size=8",
    "val_identities=4",
    "num_workers=0",
    "precision=fp32",
    "lr=1e-3",
    "t_max=2",
    "augment=default",
]
QUIET = {"progress": False, "log": lambda s: None}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last.safetensors"))


def _assert_identical(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


@pytest.fixture(scope="module")
def reference(pins_small, tmp_path_factory) -> Path:
    """The uninterrupted 2-epoch run every interrupted run must reproduce exactly."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(make_config(None, [*CFG, "epochs=2"]), [pins_small], out, **QUIET)
    return out


def _driver(tmp_path: Path, body: str) -> Path:
    """A Python script that trains in a child process (for kills a test cannot survive)."""
    script = tmp_path / "driver.py"
    script.write_text(
        "import os, signal, sys\n"
        "from siamface.train.config import make_config\n"
        "from siamface.train.job import train\n"
        "from siamface.train.hooks import Hook\n"
        f"CFG = {CFG!r}\n" + body
    )
    return script


def _env() -> dict[str, str]:
    """The child imports conftest and this checkout's siamface (not an installed one)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO / "src")])}


class SignalDuringForward:
    """Sends ``sig`` to this process from inside the model's forward pass at step ``step``:
    half of the BatchNorm layers have seen the batch when the signal arrives."""

    def __init__(self, view: RunView, step: int, sig: int) -> None:
        self.view, self.step, self.sig = view, step, sig

    def __call__(self, module, inputs) -> None:
        s = self.view.state
        if s.global_step + 1 == self.step and self.view.model.training:
            os.kill(os.getpid(), self.sig)
            time.sleep(0.05)  # let the signal be delivered here, mid-forward


def test_kill_9_mid_epoch_with_augmentation_resumes_bit_exactly(pins_small, tmp_path, reference):
    out = tmp_path / "run"
    # Dies by SIGKILL inside the forward pass of step 11 (epoch 2, step 3); the state is saved
    # after every step (save_every_min tiny), so the last one on disk is step 10's.
    script = _driver(
        tmp_path,
        "class Kill(Hook):\n"
        "    def on_train_start(self, tr):\n"
        "        def hook(m, i):\n"
        "            if tr.state.global_step == 10 and tr.model.training:\n"
        "                os.kill(os.getpid(), signal.SIGKILL)\n"
        "        blocks = list(tr.model.backbone.blocks.modules())\n"
        "        blocks[len(blocks) // 2].register_forward_pre_hook(hook)\n"
        "train(make_config(None, CFG + ['epochs=2', 'save_every_min=1e-6']), "
        f"[{str(pins_small)!r}], {str(out)!r}, progress=False, hooks=[Kill()])\n",
    )
    r = subprocess.run([sys.executable, str(script)], env=_env(), capture_output=True, timeout=600)
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()[-2000:]
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 2, 10)
    resume(out, **QUIET)
    _assert_identical(reference, out)


def test_ctrl_c_during_forward_finishes_the_step_and_resumes_bit_exactly(
    pins_small, tmp_path, reference
):
    out = tmp_path / "run"

    class ArmAtStart(Hook):
        def on_train_start(self, view):
            blocks = list(view.model.backbone.blocks.modules())
            blocks[len(blocks) // 2].register_forward_pre_hook(
                SignalDuringForward(view, step=11, sig=signal.SIGINT)
            )

    # Python's default, or SIG_IGN when the suite runs in the background (`cmd &`).
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="state saved"):
        train(
            make_config(None, [*CFG, "epochs=2"]), [pins_small], out, hooks=[ArmAtStart()], **QUIET
        )
    state = torch.load(out / "train_state.pt", weights_only=True)
    # The interrupted step was completed, not half-applied: 11 steps, all of them whole.
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 3, 11)
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is back
    resume(out, **QUIET)
    _assert_identical(reference, out)


def test_run_directory_lock_and_ctrl_c_to_the_cli(pins_small, tmp_path, capsys):
    """A second process cannot train in a run directory in use; SIGINT (what Ctrl-C sends)
    makes the first stop at a step boundary, save, exit 130; then resuming works."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "siamface.cli.main", "train", "--data", str(pins_small)]
    cmd += ["--out", str(out), "--no-progress", *CFG, "epochs=500", "save_every_min=1e-6"]
    first = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not (out / "train_state.pt").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None
        before = (out / "train_state.pt").stat().st_mtime_ns
        rc = main(["train", "--resume", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2
        assert f"process {first.pid} is training in it" in err and "Traceback" not in err
        deadline = time.time() + 120
        while (out / "train_state.pt").stat().st_mtime_ns == before and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None  # the first run was not disturbed...
        assert (out / "train_state.pt").stat().st_mtime_ns > before  # ...and kept saving
    finally:
        first.send_signal(signal.SIGINT)
        _, first_err = first.communicate(timeout=300)
    assert first.returncode == 130, first_err.decode()[-2000:]
    assert b"state saved" in first_err and b"Traceback" not in first_err
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["global_step"] >= 1
    # The lock died with its holder: resuming now works.
    assert main(["train", "--resume", str(out), "--no-progress", "epochs=1"]) == 0


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_failed_state_save_keeps_the_previous_state_resumable(pins_small, tmp_path, reference):
    out = tmp_path / "run"
    train(make_config(None, [*CFG, "epochs=1"]), [pins_small], out, **QUIET)
    state_size = (out / "train_state.pt").stat().st_size
    ckpt_size = (out / "last.safetensors").stat().st_size
    assert ckpt_size < state_size  # the state holds optimizer moments too
    before = (out / "train_state.pt").read_bytes()
    # The file-size limit lets checkpoints and logs through and makes the state file's write
    # fail half-way, as a full disk would.
    cmd = [sys.executable, "-m", "siamface.cli.main", "train", "--resume", str(out)]
    r = subprocess.run(
        [*cmd, "--no-progress", "epochs=2"],
        env=_env(),
        capture_output=True,
        timeout=600,
        preexec_fn=_limit_file_size((ckpt_size + state_size) // 2),
    )
    err = r.stderr.decode()
    assert r.returncode == 2, err[-2000:]
    assert "cannot write the training state" in err and "previous train_state.pt is intact" in err
    assert "Traceback" not in err
    assert (out / "train_state.pt").read_bytes() == before
    assert not list(out.glob(".*.tmp"))
    assert main(["train", "--resume", str(out), "--no-progress", "epochs=2"]) == 0
    _assert_identical(reference, out)
    hist = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]


def test_out_that_is_a_file_is_refused_before_work(pins_small, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("x")
    rc = main(["train", "--data", str(pins_small), "--out", str(target), "--no-progress", *CFG])
    err = capsys.readouterr().err
    assert rc == 2 and "taken is a file" in err and "Traceback" not in err
