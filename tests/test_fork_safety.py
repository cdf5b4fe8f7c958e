"""Forked loader workers and the garbage they inherit.

A worker process forked from a process holding an unreachable onnxruntime session (left in a
reference cycle by a model used earlier) hung for ever when its own garbage collector freed
that session: the session's destructor waits for threads of the parent that do not exist in
the child. The suite hung this way once (an ONNX model used, then a PyTorch model embedding
with workers). The script below sets that up on purpose and makes the worker collect."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

from PIL import Image

from siamface.system import frozen_for_fork

SCRIPT = textwrap.dedent(
    """
    import gc, sys
    from pathlib import Path
    import numpy as np, onnxruntime as ort
    from onnx import TensorProto, helper
    from PIL import Image
    from siamface.embed.pipeline import embed_files
    from siamface.tensors.transforms import Preprocessing

    def session():
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
        g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 2
        s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        s.run(None, {"x": np.ones((64, 4), np.float32)})  # its threads are now waiting
        return s

    class Cycle:
        def __init__(self):
            self.session, self.me = session(), self

    gc.disable()
    Cycle()  # garbage that only the cyclic collector frees

    def load(path):
        gc.collect()  # the worker's collector runs, as it does sooner or later
        return np.asarray(Image.open(path).convert("RGB").resize((16, 16)), np.uint8)

    paths = sorted(Path(sys.argv[1]).glob("*.png"))
    emb, errors = embed_files(
        lambda x: np.ones((len(x), 2), np.float32), paths, Preprocessing(image_size=16),
        batch_size=8, workers=1, loader=load, progress=False,
    )
    print("embedded", len(emb), "errors", len(errors))
    """
)


def test_a_worker_collecting_an_inherited_onnx_session_does_not_hang(tmp_path):
    for i in range(24):  # more than one batch, so a worker process is started
        Image.new("RGB", (20, 20), (i * 10, 0, 0)).save(tmp_path / f"{i:02d}.png")
    script = tmp_path / "fork.py"
    script.write_text(SCRIPT)
    try:
        r = subprocess.run(
            [sys.executable, str(script), str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError("the loader worker hung collecting an inherited session") from e
    assert r.returncode == 0, r.stderr[-2000:]
    assert "embedded 24 errors 0" in r.stdout


def test_frozen_for_fork_collects_then_freezes_and_lets_go():
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        Cycle()
        assert any(type(o) is Cycle for o in gc.get_objects())
        with frozen_for_fork():
            assert not any(type(o) is Cycle for o in gc.get_objects()), "collected first"
            assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() == 0
        with frozen_for_fork(enabled=False):
            assert gc.get_freeze_count() == 0
    finally:
        if was_enabled:
            gc.enable()
