"""The watch's speed-ups change nothing but speed.

* the frozen inference graph embeds real faces exactly like the model as loaded (a gallery
  enrolled with one is searched with the other), and is not applied where it cannot be;
* the two-stage loop (decode + detect in a thread ahead of embedding) keeps frames in order,
  hands the producer's errors to the caller, stops and releases its source when the caller
  stops early, and gives the same events as the one-core loop on a real clip.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import pytest
from conftest import SHARED_DATA, needs_data
from test_watch import setup  # noqa: F401 - the clip, gallery and model fixture
from video_clips import have_ffmpeg

from siamface.video.ahead import run_ahead

needs_clip = [
    pytest.mark.skipif(not (SHARED_DATA / "celeba_wild").is_dir(), reason="no sample data"),
    pytest.mark.skipif(not have_ffmpeg(), reason="!!! ffmpeg missing: run scripts/video-deps.sh"),
]


def clip_test(fn):
    for mark in needs_clip:
        fn = mark(fn)
    return fn


def test_run_ahead_keeps_order_and_runs_in_another_thread():
    seen_threads = set()

    def produce():
        for i in range(50):
            seen_threads.add(threading.get_ident())
            yield i

    assert list(run_ahead(produce())) == list(range(50))
    assert seen_threads and threading.get_ident() not in seen_threads


def test_run_ahead_prepares_one_item_ahead_and_no_more():
    """The next frame is read only once the previous one was taken: a frame never waits in
    a queue growing older (latency), and one prepared frame is all the memory it takes."""
    produced = []

    def produce():
        for i in range(30):
            produced.append(i)
            yield i

    for i in run_ahead(produce()):
        time.sleep(0.01)  # the consumer is the slower stage
        assert len(produced) <= i + 2  # item i in use, at most item i + 1 prepared


def test_run_ahead_raises_the_producers_error_in_the_consumer():
    def produce():
        yield 1
        raise ValueError("decoder broke at frame 2")

    got = []
    with pytest.raises(ValueError, match="frame 2"):
        for x in run_ahead(produce()):
            got.append(x)
    assert got == [1]


def test_run_ahead_stops_and_closes_the_producer_when_the_consumer_stops():
    closed = threading.Event()
    produced = []

    def produce():
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.set()  # where a source releases its capture

    it = run_ahead(produce())
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    assert closed.wait(5)
    time.sleep(0.2)
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n <= 4  # stopped, and never ran ahead of the consumer


@needs_data
def test_frozen_graph_gives_the_same_embeddings_on_real_faces():
    from PIL import Image

    from siamface.embed import create_embedder
    from siamface.video.fastpath import PARITY_ATOL, fast_embedder, graph_name

    model = create_embedder("sface")
    fast = fast_embedder(model)
    assert fast is not model and graph_name(fast) in ("torchscript-frozen", "fx-bn-folded")
    assert graph_name(model) == "as loaded"
    assert fast.fingerprint == model.fingerprint  # the gallery sees the same model
    person = sorted((SHARED_DATA / "pins90").iterdir())[0]
    faces = np.stack(
        [
            np.asarray(Image.open(p).convert("RGB").resize((112, 112)), dtype=np.uint8)
            for p in sorted(person.iterdir())[:5]
        ]
    ).transpose(0, 3, 1, 2)
    a, b = model.embed_batch(faces), fast.embed_batch(faces)
    assert np.abs(a - b).max() <= PARITY_ATOL
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert np.abs(model.embed_batch(faces[:1]) - fast.embed_batch(faces[:1])).max() <= PARITY_ATOL


def test_frozen_graph_is_not_forced_on_other_models(tmp_path):
    """A model that is not a PyTorch network (here OpenCV Zoo's SFace file run by
    onnxruntime through its card) is used as it is."""
    import shutil

    pytest.importorskip("onnxruntime")
    from siamface.embed import create_embedder
    from siamface.model.zoo import sface_onnx_path
    from siamface.video.fastpath import fast_embedder, graph_name

    dst = tmp_path / "sface.onnx"
    shutil.copy2(sface_onnx_path(), dst)
    (tmp_path / "sface.onnx.card.yaml").write_text("mean: 0\nstd: 1\nalignment: arcface\n")
    onnx_model = create_embedder(dst)
    assert fast_embedder(onnx_model) is onnx_model
    assert graph_name(onnx_model) == "as loaded"


def _comparable(events: list[dict]) -> list[dict]:
    """Events without the timing fields (latency, seconds, fps, CPU time, the overlap flag)."""
    drop = {"latency_ms", "seconds", "processed_fps", "overlap", "cpu_seconds"}
    out = []
    for ev in events:
        out.append({k: v for k, v in ev.items() if k not in drop})
    return out


@clip_test
def test_two_stage_loop_gives_the_same_events_as_one_core(setup):  # noqa: F811
    import siamface

    runs = {
        ov: list(siamface.watch(setup["clip"], setup["gallery"], setup["model"], overlap=ov))
        for ov in (True, False)
    }
    assert runs[True][0]["overlap"] is True and runs[False][0]["overlap"] is False
    assert runs[False][0]["embedding_graph"] != "as loaded"
    assert _comparable(runs[True]) == _comparable(runs[False])
    assert sum(e["event"] == "identity" for e in runs[True]) >= 2
    for events in runs.values():  # both halves' CPU time is reported (what the bench divides)
        cpu = events[-1]["cpu_seconds"]
        assert set(cpu) == {"prepare", "identify"} and min(cpu.values()) > 0
    # The summary's running totals (ended tracks' events are not kept) agree with the events.
    events = runs[False]
    tracks = [e for e in events if e["event"] == "track"]
    seen = [e for e in tracks if e["faces"] >= 3]
    summary = events[-1]
    assert summary["tracks"] == len(tracks)
    assert summary["unknown_tracks"] == sum(e["person"] == "unknown" for e in seen)
    named = Counter(e["person"] for e in seen if e["person"] != "unknown")
    assert {k: v["tracks"] for k, v in summary["people"].items()} == dict(named)
    for person, info in summary["people"].items():
        mine = [e for e in seen if e["person"] == person]
        assert info["first"]["time"] == min(e["first"]["time"] for e in mine)
        assert info["seconds"] == pytest.approx(sum(e["seconds"] for e in mine), abs=1e-3)


@clip_test
def test_two_stage_loop_releases_the_source_when_the_caller_stops(setup):  # noqa: F811
    import siamface
    from siamface.video import VideoSource

    src = VideoSource(setup["clip"])
    it = siamface.watch(src, setup["gallery"], setup["model"], overlap=True)
    first = [next(it) for _ in range(2)]
    assert first[0]["event"] == "start"
    it.close()
    assert src._cap is None  # released, not left open by the producer thread
