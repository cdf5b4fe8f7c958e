"""``siamface watch`` on a 720p clip with 1-4 faces per frame: identity quality and speed.

The clip is built from sample photos (tests/video_clips.py; Debian's ffmpeg encodes it):
``--people`` enrolled actors and ``--strangers`` unenrolled ones walk through four lanes of a
1280x720, 30 fps frame, changing scale, leaving and coming back, so 1-4 faces are on screen
at any time and the ground truth of every frame is known. Enrolled actors are in the gallery
from three *other* photos each (plus the rest of the selected people as distractors).

Figures (one JSON document):

* identity per track (tracks with >= 3 faces, matched to actors by box position): accuracy for
  enrolled people with a Wilson 95 % interval, unenrolled tracks ever named, identity switches
  per track; tracks per actor appearance (fragmentation);
* baseline in the same run: the same faces named one frame at a time (no tracking, no quality
  weighting) - accuracy for enrolled faces and how many unenrolled faces got a name;
* speed: decode-only fps (the baseline), processed fps with detection on every frame (the
  default one-core loop, and the two-stage loop, ``--overlap``) and on every 3rd frame
  (tracking between), their ratios to decoding and to the 30 fps of the video; each run's
  CPU time per frame and the 1-minute load average at its start and end (on a shared
  machine wall-clock fps says as much about the other jobs as about the watch);
* latency: frame read -> identity event (p50/p99), and frame read -> frame done (p99);
* CPU milliseconds per step (decode, detect, align, embed) on the busiest frame and the frame
  rates they imply for one idle core; the model as loaded beside the frozen graph, the
  detector at smaller sides (``--stages-only`` prints just these);
* memory: RSS over ``--loop-minutes`` of the clip looped in real time through ffmpeg's HTTP
  server (a live stream), detection every 3rd frame; drift = last minus first sample after
  warm-up (``--rss-only``: just this; the hour-long check below).

    .venv/bin/python bench/watch.py --out watch-bench.json       # ~3 min on 2 cores
    .venv/bin/python bench/watch.py --stages-only                # ~40 s
    nice -n 10 .venv/bin/python bench/watch.py --rss-only --loop-minutes 60 --out watch-rss.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))
from _common import SHARED, machine  # noqa: E402
from video_clips import Actor, encode, person_of_track, single_face_people  # noqa: E402

SIZE = (1280, 720)
FPS = 30
LANES = (0.14, 0.38, 0.62, 0.86)


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(c - h, 4), round(c + h, 4)]


def make_actors(people: dict, enrolled: list[str], strangers: list[str], seconds: float, seed=0):
    """Actors in four lanes; each lane holds a sequence of visits (enter, stay, leave)."""
    rng = np.random.default_rng(seed)
    cast = [(p, True) for p in enrolled] + [(p, False) for p in strangers]
    visits: dict[tuple[str, bool], list] = {c: [] for c in cast}
    order = list(range(len(cast)))
    for lane in range(len(LANES)):
        t = float(rng.uniform(0, 1.5)) if lane else 0.0  # lane 0 opens at t=0: >= 1 face
        while t < seconds - 1.5:
            stay = float(rng.uniform(3.0, 7.0))
            who = cast[order[int(rng.integers(len(order)))]]
            visits[who].append((lane, t, min(seconds, t + stay)))
            t += stay + float(rng.uniform(0.3, 2.0)) if lane else stay
    actors = []
    for (person, is_enrolled), vs in visits.items():
        for lane, a, b in vs:
            x = LANES[lane]
            dx = float(rng.uniform(-0.03, 0.03))
            h0, h1 = float(rng.uniform(0.38, 0.55)), float(rng.uniform(0.38, 0.55))
            actors.append(
                Actor(
                    person,
                    people[person][0],
                    [(a, b)],
                    (x - dx, 0.42),
                    (x + dx, 0.58),
                    h0,
                    h1,
                    enrolled=is_enrolled,
                )  # fmt: skip
            )
    return actors


def faces_on_screen(actors, seconds) -> dict:
    counts = Counter(
        sum(a.box_at(i / FPS, *SIZE) is not None for a in actors)
        for i in range(round(seconds * FPS))
    )
    return {str(k): v for k, v in sorted(counts.items())}


def decode_fps(clip: Path) -> float:
    import cv2

    cap = cv2.VideoCapture(str(clip))
    n, t0 = 0, time.perf_counter()
    while cap.read()[0]:
        n += 1
    return n / (time.perf_counter() - t0)


def run(clip, gallery, embedder, actors, **options) -> dict:
    """One watch of the clip: events, track truth, timings."""
    from siamface.video import Watcher, WatchOptions

    boxes: dict[int, list] = {}
    frame_ms: list[float] = []

    def on_frame(view):
        frame_ms.append((time.monotonic() - view.frame.wall) * 1000)
        for b in view.boxes:
            if b["detected"]:
                boxes.setdefault(b["track"], []).append((view.frame.time, b["box"]))

    load0 = os.getloadavg()[0]
    w = Watcher(str(clip), gallery, embedder, WatchOptions(**options), on_frame)
    t0, c0 = time.perf_counter(), time.process_time()
    events = list(w.events())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    load = [round(load0, 2), round(os.getloadavg()[0], 2)]
    return {"events": events, "boxes": boxes, "frame_ms": frame_ms, "wall": wall, "cpu": cpu,
            "load": load}  # fmt: skip


def score_tracks(result, actors, enrolled: set[str]) -> dict:
    tracks = [e for e in result["events"] if e["event"] == "track" and e["faces"] >= 3]
    correct = n_enrolled = named_strangers = stranger_tracks = 0
    switches = []
    appearances: Counter = Counter()
    wrong = []
    for ev in tracks:
        votes = Counter(
            person_of_track(actors, box, t, SIZE) for t, box in result["boxes"][ev["track"]]
        )
        who = votes.most_common(1)[0][0]
        switches.append(ev["switches"])
        appearances[who] += 1
        if who in enrolled:
            n_enrolled += 1
            correct += ev["person"] == who
            if ev["person"] != who:
                wrong.append({"track": ev["track"], "truth": who, "named": ev["person"]})
        elif who is not None:
            stranger_tracks += 1
            named_strangers += bool(ev["named"])  # ever named, even if revised later
    visits = sum(len(a.spans) for a in actors)
    ident = [e for e in result["events"] if e["event"] == "identity"]
    lat = [e["latency_ms"] for e in ident]
    s = result["events"][-1]
    return {
        "tracks_scored": len(tracks),
        "enrolled_tracks": n_enrolled,
        "enrolled_track_accuracy": round(correct / max(n_enrolled, 1), 4),
        "enrolled_track_accuracy_ci95": wilson(correct, n_enrolled),
        "wrongly_named_tracks": wrong,
        "unenrolled_tracks": stranger_tracks,
        "unenrolled_tracks_named": named_strangers,
        "identity_switches_max_per_track": max(switches, default=0),
        "identity_switches_total": int(sum(switches)),
        "tracks_per_actor_visit": round(len(tracks) / max(visits, 1), 3),
        "frames": s["frames"],
        "processed": s["processed"],
        "detected": s["detected"],
        "processed_fps": round(s["processed"] / result["wall"], 2),
        # CPU seconds of the whole process (all its threads) per frame: what the load of other
        # jobs inflates far less than wall time. processed / CPU s = the rate one idle core
        # would sustain; two idle cores give up to twice that with the two-stage loop.
        "cpu_ms_per_frame": round(result["cpu"] / max(s["processed"], 1) * 1000, 2),
        "one_core_fps_from_cpu_time": round(s["processed"] / max(result["cpu"], 1e-9), 2),
        # The two halves' CPU (decode+detect+align, track+embed+decide): with the two-stage
        # loop on two idle cores the larger one bounds the rate.
        "cpu_seconds_by_half": s["cpu_seconds"],
        "two_idle_cores_fps_bound_from_cpu_time": round(
            s["processed"] / max(max(s["cpu_seconds"].values()), 1e-9), 2
        ),
        "loadavg_1min_start_end": result["load"],
        "faces": s["faces"],
        "embedded": s["embedded"],
        "embedding_graph": result["events"][0]["embedding_graph"],
        "overlap": result["events"][0]["overlap"],
        "event_latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if lat else None,
        "event_latency_ms_p99": round(float(np.percentile(lat, 99)), 1) if lat else None,
        "frame_latency_ms_p99": round(float(np.percentile(result["frame_ms"], 99)), 1),
    }


def single_frame_baseline(clip, gallery, embedder, actors, enrolled, every: int = 5) -> dict:
    """Name each detected face from its own frame only (what a per-image 'identify' does)."""
    import cv2

    from siamface.video.faces import FaceFinder
    from siamface.video.pipeline import resolve_threshold

    finder = FaceFinder(embedder, min_score=0.6)
    thr = resolve_threshold(gallery, embedder, None)
    cap = cv2.VideoCapture(str(clip))
    i = correct = n_enrolled = n_strangers = strangers_named = 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        if i % every == 0:
            faces = finder(img)
            if faces:
                res = gallery.search(
                    np.stack([f.embedding for f in faces]), 1,
                    fingerprint=embedder.fingerprint, threshold=thr,
                )  # fmt: skip
                for f, r in zip(faces, res, strict=True):
                    who = person_of_track(actors, f.box, i / FPS, SIZE)
                    if who in enrolled:
                        n_enrolled += 1
                        correct += r.identity == who
                    elif who is not None:
                        n_strangers += 1
                        strangers_named += r.known
        i += 1
    return {
        "faces_sampled_every_nth_frame": every,
        "enrolled_faces": n_enrolled,
        "enrolled_face_accuracy": round(correct / max(n_enrolled, 1), 4),
        "enrolled_face_accuracy_ci95": wilson(correct, n_enrolled),
        "unenrolled_faces": n_strangers,
        "unenrolled_faces_named": strangers_named,
    }


def cpu_per_stage(clip, embedder, reembed_every: int = 4) -> dict:
    """CPU milliseconds of each step on a frame of the clip with the most faces (process
    time, which a shared machine's load inflates far less than wall time), and the frame
    rates they imply for one core: a floor for an idle machine, not a measurement of one.
    Baselines in the same run: the model as loaded (eager PyTorch) beside the frozen graph the
    watch uses, and the detector at smaller ``--detect-side`` values (faces found on the
    same frame, to show what a smaller side loses)."""
    import cv2

    from siamface.video.faces import FaceFinder
    from siamface.video.fastpath import graph_name

    finder = FaceFinder(embedder)
    plain = FaceFinder(embedder, fast=False)
    cap = cv2.VideoCapture(str(clip))
    best, best_n = None, -1
    for _ in range(90):
        ok, img = cap.read()
        if not ok:
            break
        n = len(finder.detect(img))
        if n > best_n:
            best, best_n = img.copy(), n

    def cpu(fn, n: int) -> float:
        fn()
        c = time.process_time()
        for _ in range(n):
            fn()
        return (time.process_time() - c) / n * 1000

    cap = cv2.VideoCapture(str(clip))
    faces = finder.detect(best)
    crops = finder.crops(best, faces)
    k = max(len(faces), 1)
    decode = cpu(lambda: cap.read(), 60)
    detect = cpu(lambda: finder.detect(best), 20)
    align = cpu(lambda: finder.crops(best, faces), 20) / k
    embed = cpu(lambda: finder.embed(crops), 20) / k
    embed_plain = cpu(lambda: plain.embed(crops), 20) / k
    sides = {}
    for side in (480, 320):
        small = FaceFinder(embedder, detect_side=side)
        sides[str(side)] = {
            "detect_ms": round(cpu(lambda s=small: s.detect(best), 20), 2),
            "faces_found": len(small.detect(best)),
        }
    every_face = decode + detect + k * (align + embed)
    settled = decode + detect + k * (align + embed / reembed_every)
    return {
        "faces_in_frame": len(faces),
        "decode_ms": round(decode, 2),
        "detect_ms": round(detect, 2),
        "detect_side": finder.detect_side,
        "smaller_detect_side": sides,
        "align_quality_ms_per_face": round(align, 2),
        "embedding_graph": graph_name(finder.embedder),
        "embed_ms_per_face": round(embed, 2),
        "embed_ms_per_face_as_loaded": round(embed_plain, 2),
        "embed_speedup_vs_as_loaded": round(embed_plain / embed, 2),
        "one_core_fps_every_face_embedded": round(1000 / every_face, 1),
        "one_core_fps_settled_tracks": round(1000 / settled, 1),
        "one_core_fps_settled_detect_every_3rd": round(3000 / (2 * decode + settled), 1),
    }


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_loop(clip, gallery, embedder, minutes: float, partial=None) -> dict:
    """The clip looped as a live HTTP stream (ffmpeg -listen) for ``minutes``; RSS sampled.
    ``partial(samples)`` is called with every new sample, so an hour-long run that dies late
    still leaves its curve on disk."""
    from siamface.video import Watcher, WatchOptions

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy",
         "-f", "mpegts", "-listen", "1", f"http://127.0.0.1:{port}/live.ts"],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    samples: list[tuple[float, float]] = []
    t0 = time.monotonic()

    def on_frame(view):
        if not samples or time.monotonic() - t0 - samples[-1][0] >= 10:
            samples.append((time.monotonic() - t0, rss_mb()))
            if partial is not None:
                partial(samples)

    try:
        time.sleep(0.5)
        opts = WatchOptions(detect_every=3, max_seconds=minutes * 60, timeout=10)
        events = list(
            Watcher(f"http://127.0.0.1:{port}/live.ts", gallery, embedder, opts, on_frame).events()
        )
    finally:
        server.kill()
        server.wait()
    warm = [s for s in samples if s[0] >= 30] or samples
    s = events[-1]
    return {
        "minutes": minutes,
        "frames": s["frames"],
        "processed": s["processed"],
        "tracks": s["tracks"],
        "rss_mb_first_after_30s": round(warm[0][1], 1),
        "rss_mb_last": round(samples[-1][1], 1),
        "rss_mb_max": round(max(v for _, v in samples), 1),
        "rss_drift_mb": round(samples[-1][1] - warm[0][1], 1),
        "samples": [[round(t), round(v, 1)] for t, v in samples],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="clip length")
    ap.add_argument("--people", type=int, default=8, help="enrolled actors")
    ap.add_argument("--strangers", type=int, default=4, help="unenrolled actors")
    ap.add_argument("--distractors", type=int, default=8, help="enrolled, never on screen")
    ap.add_argument("--loop-minutes", type=float, default=0.0, help="RSS loop length (0: no loop)")
    ap.add_argument("--detect-side", type=int, default=640, help="the watch's --detect-side")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--stages-only", action="store_true", help="only the CPU cost per step")
    ap.add_argument("--rss-only", action="store_true", help="only the looped-stream memory check")
    args = ap.parse_args()

    import torch

    from siamface.embed.load import create_embedder
    from siamface.gallery import Gallery

    info = {"machine": machine(), "torch_threads": args.threads}
    n = args.people + args.strangers + args.distractors
    people = single_face_people(SHARED / "data" / "celeba_wild", n, 4, min_face=50)
    names = list(people)
    if len(names) < n:
        raise SystemExit(f"only {len(names)} usable people in celeba_wild")
    enrolled = names[: args.people]
    strangers = names[args.people : args.people + args.strangers]
    distractors = names[args.people + args.strangers :]
    actors = make_actors(people, enrolled, strangers, args.seconds)
    embedder = create_embedder("sface")
    torch.set_num_threads(args.threads)  # after loading: the model's loader sets its own count
    with tempfile.TemporaryDirectory() as tmp:
        g = Gallery.create(
            Path(tmp) / "gallery",
            fingerprint=embedder.fingerprint,
            embedding_size=embedder.embedding_size,
            threshold=embedder.threshold["value"],
            model_source="sface",
        )
        for name in enrolled + distractors:
            emb, _ = embedder.embed_paths(people[name][1:], progress=False)
            g.enroll(name, emb, fingerprint=embedder.fingerprint)
        clip = Path(tmp) / "clip.mp4"
        t0 = time.perf_counter()
        encode(actors, clip, args.seconds, FPS, SIZE)
        info["clip"] = {
            "size": list(SIZE),
            "fps": FPS,
            "seconds": args.seconds,
            "encode_s": round(time.perf_counter() - t0, 1),
            "actors_enrolled": len(enrolled),
            "actors_unenrolled": len(strangers),
            "gallery_people": len(g),
            "actor_visits": sum(len(a.spans) for a in actors),
            "frames_by_faces_on_screen": faces_on_screen(actors, args.seconds),
            "threshold": g.threshold and g.threshold.value,
        }
        if args.rss_only:

            def partial(samples) -> None:
                if args.out:
                    info["rss_loop_partial"] = [[round(t), round(v, 1)] for t, v in samples]
                    info["machine"]["loadavg_now"] = [round(x, 2) for x in os.getloadavg()]
                    Path(args.out).write_text(json.dumps(info, indent=1) + "\n")

            info["rss_loop"] = rss_loop(clip, g, embedder, args.loop_minutes, partial)
            info.pop("rss_loop_partial", None)
            info["machine"].pop("loadavg_now", None)
            g.close()
            finish(info, args.out)
            return
        info["cpu_ms_per_stage"] = cpu_per_stage(clip, embedder)
        if args.stages_only:
            g.close()
            finish(info, args.out)
            return
        dec = decode_fps(clip)
        info["decode_only_fps"] = round(dec, 1)
        enr = set(enrolled)
        side = {"detect_side": args.detect_side}
        every1 = score_tracks(run(clip, g, embedder, actors, detect_every=1, **side), actors, enr)
        two = score_tracks(
            run(clip, g, embedder, actors, detect_every=1, overlap=True, **side), actors, enr
        )
        every3 = score_tracks(run(clip, g, embedder, actors, detect_every=3, **side), actors, enr)
        for r in (every1, two, every3):
            r["ratio_to_decode_only"] = round(r["processed_fps"] / dec, 3)
            r["ratio_to_realtime_30fps"] = round(r["processed_fps"] / FPS, 3)
        info["detect_every_frame"] = every1
        info["detect_every_frame_two_stage_loop"] = two
        info["detect_every_3rd_frame"] = every3
        info["speedup_two_stage_vs_one_core_loop"] = round(
            two["processed_fps"] / every1["processed_fps"], 3
        )
        info["speedup_every3_vs_every1"] = round(
            every3["processed_fps"] / every1["processed_fps"], 3
        )
        info["single_frame_baseline"] = single_frame_baseline(
            clip, g, embedder, actors, set(enrolled)
        )
        if args.loop_minutes > 0:
            info["rss_loop"] = rss_loop(clip, g, embedder, args.loop_minutes)
        g.close()
    finish(info, args.out)


def finish(info: dict, out: str | None) -> None:
    """Load average at the end (a shared machine's load changes over a run), print, save."""
    info["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(info, indent=1)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main()
