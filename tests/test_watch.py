"""``siamface watch`` on real clips and real network streams, with known ground truth.

The clips are built here from sample photos (tests/video_clips.py) and encoded by Debian's
ffmpeg: three people on screen, moving and changing scale; two are enrolled (one of them leaves
and comes back), one is not. Streams are served by real servers started by the tests: ffmpeg's
own HTTP server (``-listen 1``), killed mid-stream and restarted to check reconnection, and
GStreamer's RTSP server (Debian's python runs it; tests/rtsp_server.py). Without ffmpeg or
GStreamer (scripts/video-deps.sh installs them) the tests skip and say so.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from video_clips import Actor, encode, have_ffmpeg, person_of_track, single_face_people

pytestmark = [
    pytest.mark.skipif(not (SHARED_DATA / "celeba_wild").is_dir(), reason="no sample data"),
    pytest.mark.skipif(
        not have_ffmpeg(),
        reason="!!! ffmpeg is not installed: run scripts/video-deps.sh (apt-get install ffmpeg)",
    ),
]

SIZE = (480, 270)
FPS = 10
SECONDS = 6.0
RTSP_PY = "/usr/bin/python3"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Actors, an SFace gallery with the enrolled ones (other photos of them), the clip."""
    from siamface.embed.load import create_embedder
    from siamface.gallery import Gallery

    root = tmp_path_factory.mktemp("watch")
    people = single_face_people(SHARED_DATA / "celeba_wild", 4, 4)
    names = list(people)
    a, b, c = names[0], names[1], names[3]
    actors = [
        # A: the whole clip, walking right and growing
        Actor(a, people[a][0], [(0, SECONDS)], (0.15, 0.7), (0.5, 0.65), 0.45, 0.6),
        # B: leaves at 2 s, comes back at 4 s
        Actor(b, people[b][0], [(0, 2), (4, SECONDS)], (0.5, 0.25), (0.6, 0.25), 0.45, 0.45),
        # C: not enrolled, from 1 s to 5 s, shrinking
        Actor(c, people[c][0], [(1, 5)], (0.88, 0.55), (0.8, 0.5), 0.6, 0.45, enrolled=False),
    ]
    embedder = create_embedder("sface")
    gallery = root / "gallery"
    g = Gallery.create(
        gallery,
        fingerprint=embedder.fingerprint,
        embedding_size=embedder.embedding_size,
        threshold=embedder.threshold["value"],
        model_source="sface",
    )
    with g:
        for name in (a, b, names[2]):  # names[2]: enrolled, never on screen
            emb, errors = embedder.embed_paths(people[name][1:], progress=False)
            assert not errors
            g.enroll(name, emb, fingerprint=embedder.fingerprint)
    clip = encode(actors, root / "clip.mp4", SECONDS, FPS, SIZE)
    return {"root": root, "actors": actors, "gallery": gallery, "clip": clip, "model": embedder}


def run_watch(setup, source, **options):
    """Events, and each track's boxes (frame time, box), from the Python API."""
    import siamface

    boxes: dict[int, list] = {}

    def on_frame(view):
        for b in view.boxes:
            if b["detected"]:
                boxes.setdefault(b["track"], []).append((view.frame.time, b["box"]))

    events = list(
        siamface.watch(source, setup["gallery"], setup["model"], on_frame=on_frame, **options)
    )
    return events, boxes


def truth_of(setup, track_boxes) -> str | None:
    votes = Counter(person_of_track(setup["actors"], box, t, SIZE) for t, box in track_boxes)
    return votes.most_common(1)[0][0]


def check_identities(setup, events, boxes) -> dict[str, list[dict]]:
    """Every real track (>= 3 faces) is named correctly, the unenrolled person never named;
    returns tracks by true person."""
    enrolled = {a.person for a in setup["actors"] if a.enrolled}
    by_person: dict[str, list[dict]] = {}
    for ev in (e for e in events if e["event"] == "track" and e["faces"] >= 3):
        who = truth_of(setup, boxes[ev["track"]])
        assert who is not None, f"track {ev['track']} follows no actor"
        by_person.setdefault(who, []).append(ev)
        expected = who if who in enrolled else "unknown"
        assert ev["person"] == expected, (who, ev)
        assert ev["switches"] == 0
    named = [e["person"] for e in events if e["event"] == "identity"]
    unenrolled = {a.person for a in setup["actors"] if not a.enrolled}
    assert not unenrolled & set(named), "an unenrolled person was named"
    assert set(by_person) == {a.person for a in setup["actors"]}
    return by_person


def test_file_every_face_tracked_and_named(setup, tmp_path):
    events, boxes = run_watch(setup, setup["clip"], crops_dir=str(tmp_path / "crops"))
    a, b, c = (x.person for x in setup["actors"])
    tracks = check_identities(setup, events, boxes)
    assert len(tracks[a]) == 1  # one track for the whole clip
    assert tracks[a][0]["seconds"] >= SECONDS - 0.5
    # B left and came back: two tracks, the second starting after the return
    assert len(tracks[b]) == 2
    first, second = sorted(tracks[b], key=lambda e: e["first"]["time"])
    assert first["last"]["time"] < 2.0 <= 4.0 <= second["first"]["time"] + 0.2
    for ev in tracks[a] + tracks[b] + tracks[c]:
        assert Path(ev["crop"]).is_file()
    # never named on one frame: the first identity event comes after >= 3 faces
    assert all(e["faces"] >= 3 for e in events if e["event"] == "identity")
    summary = events[-1]
    assert summary["event"] == "summary"
    assert set(summary["people"]) == {a, b}
    assert summary["people"][b]["tracks"] == 2
    assert summary["unknown_tracks"] == 1
    assert summary["processed"] == summary["frames"] == round(SECONDS * FPS)


def test_detect_every_third_frame_tracks_in_between(setup):
    events, boxes = run_watch(setup, setup["clip"], detect_every=3)
    check_identities(setup, events, boxes)
    s = events[-1]
    assert s["processed"] == round(SECONDS * FPS)
    assert s["detected"] == -(-s["processed"] // 3)


def test_frame_options_start_stop_every_roi(setup):
    events, _ = run_watch(setup, setup["clip"], start=1.0, stop=3.0, every=2)
    s = events[-1]
    assert s["frames"] == pytest.approx(20, abs=1)
    assert s["processed"] == pytest.approx(10, abs=1)
    firsts = [e["first"]["time"] for e in events if e["event"] == "track"]
    assert min(firsts) >= 1.0 - 1e-6
    # the left half only: C (right side) is never seen
    w, h = SIZE
    events, boxes = run_watch(setup, setup["clip"], roi=(0, 0, w // 2, h))
    for track_boxes in boxes.values():
        assert all((bx[0] + bx[2]) / 2 < w / 2 for _, bx in track_boxes)
    c = setup["actors"][2].person
    assert c not in {truth_of(setup, tb) for tb in boxes.values()}


def test_folder_of_frames(setup, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(setup["clip"]), str(folder / "%04d.jpg")], check=True
    )
    events, boxes = run_watch(setup, str(folder), folder_fps=FPS)
    check_identities(setup, events, boxes)
    assert events[0]["kind"] == "folder"


def test_cli_events_video_and_crops(setup, tmp_path, capsys):
    import cv2

    from siamface.cli.main import main

    out = tmp_path / "out.mp4"
    rc = main(
        [
            "watch", str(setup["clip"]), "--gallery", str(setup["gallery"]), "--model", "sface",
            "--events", str(tmp_path / "ev.jsonl"), "--video", str(out),
            "--crops", str(tmp_path / "crops"), "--max-side", "400",
        ]
    )  # fmt: skip
    assert rc == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    saved = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert printed == saved
    assert printed[-1]["event"] == "summary"
    names = {e["person"] for e in printed if e["event"] == "track"}
    assert {a.person for a in setup["actors"] if a.enrolled} <= names
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == printed[-1]["processed"]
    assert max(cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == 400
    crops = sorted((tmp_path / "crops").glob("track-*.jpg"))
    assert len(crops) == printed[-1]["tracks"]


# ---------------------------------------------------------------------------- streams


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_server(clip: Path, port: int) -> subprocess.Popen:
    """ffmpeg as an HTTP server: the clip looped in real time as MPEG-TS, one client."""
    return subprocess.Popen(
        ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy",
         "-f", "mpegts", "-listen", "1", f"http://127.0.0.1:{port}/live.ts"],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_http_stream_killed_mid_stream_reconnects(setup):
    import siamface

    port = free_port()
    servers = [http_server(setup["clip"], port)]
    seen = {"frames": 0, "after_gap": 0}
    restart = threading.Timer(4.0, lambda: servers.append(http_server(setup["clip"], port)))

    def on_frame(view):
        seen["frames"] += 1
        if seen["frames"] == 15:
            servers[0].kill()  # the stream drops mid-way
            restart.start()  # and comes back 4 s later

    events = []
    deadline = time.monotonic() + 60
    try:
        time.sleep(0.3)
        for ev in siamface.watch(
            f"http://127.0.0.1:{port}/live.ts",
            setup["gallery"],
            setup["model"],
            on_frame=on_frame,
            timeout=3,
            reconnect_for=20,
        ):
            events.append(ev)
            if any(e["event"] == "gap" for e in events):
                seen["after_gap"] += ev["event"] == "identity"
            if seen["after_gap"] >= 1 or time.monotonic() > deadline:
                break
    finally:
        restart.cancel()
        for s in servers:
            s.kill()
            s.wait()
    gaps = [e for e in events if e["event"] == "gap"]
    assert len(gaps) == 1 and gaps[0]["recovered"], events
    # from the last frame before the drop to the first after it (the client's socket buffer
    # still delivers frames for a while after the kill, so the gap is shorter than 4 s)
    assert gaps[0]["seconds"] >= 0.5 and gaps[0]["attempts"] >= 1
    assert events[0]["kind"] == "stream"
    named_before = {
        e["person"] for e in events[: events.index(gaps[0])] if e["event"] == "identity"
    }
    assert named_before & {a.person for a in setup["actors"] if a.enrolled}
    assert seen["after_gap"] >= 1  # frames came again and people were named after the gap


def _gst_rtsp_available() -> bool:
    if not Path(RTSP_PY).exists():
        return False
    probe = "import gi; gi.require_version('GstRtspServer', '1.0')"
    probe += "; from gi.repository import GstRtspServer"
    return subprocess.run([RTSP_PY, "-c", probe], capture_output=True).returncode == 0


@pytest.mark.skipif(
    not _gst_rtsp_available(),
    reason="!!! GStreamer's RTSP server is not installed: run scripts/video-deps.sh "
    "(gir1.2-gst-rtsp-server-1.0 python3-gst-1.0 gstreamer1.0-plugins-good/bad)",
)
def test_rtsp_stream(setup):
    port = free_port()
    server = subprocess.Popen(
        [RTSP_PY, str(Path(__file__).with_name("rtsp_server.py")), str(setup["clip"]), str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout.readline().strip() == "ready"
        events, boxes = run_watch(
            setup, f"rtsp://127.0.0.1:{port}/live", max_seconds=SECONDS + 1, timeout=5
        )
    finally:
        server.kill()
        server.wait()
    assert events[0]["kind"] == "stream"
    names = {e["person"] for e in events if e["event"] == "identity"}
    assert {a.person for a in setup["actors"] if a.enrolled} <= names
    assert setup["actors"][2].person not in names
    s = events[-1]
    # a live source is read at its own pace: frames the CPU could not keep up with are
    # skipped (only the newest is processed) and counted, never queued
    assert s["processed"] + s["dropped"] >= SECONDS * FPS * 0.8
    assert s["processed"] >= 10


# ---------------------------------------------------------------------------- bad input


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "siamface", "watch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_line_exit_2(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("siamface watch: error:")
    for w in words:
        assert w in lines[0]


def test_corrupt_file_and_unknown_codec(setup, tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    data = setup["clip"].read_bytes()
    corrupt.write_bytes(data[: len(data) // 3][::-1])  # reversed, truncated: no container
    _one_line_exit_2(cli(str(corrupt), "--gallery", str(setup["gallery"])), "corrupt.mp4")
    # a real AVI whose video codec tag no decoder knows
    avi = tmp_path / "ok.avi"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(setup["clip"]), "-t", "1", "-c:v", "mpeg4", str(avi)],
        check=True,
    )
    odd = tmp_path / "odd.avi"
    odd.write_bytes(avi.read_bytes().replace(b"FMP4", b"QQQQ"))
    _one_line_exit_2(cli(str(odd), "--gallery", str(setup["gallery"])), "odd.avi", "codec")


def test_url_that_never_answers(setup):
    with socket.socket() as s:  # accepts connections (kernel backlog) but never replies
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        t0 = time.monotonic()
        r = cli(
            f"http://127.0.0.1:{port}/cam", "--gallery", str(setup["gallery"]), "--timeout", "2"
        )
        elapsed = time.monotonic() - t0
    _one_line_exit_2(r, "no answer within 2 s")
    assert elapsed < 30


def test_missing_source_and_empty_folder(setup, tmp_path):
    _one_line_exit_2(
        cli(str(tmp_path / "nope.mp4"), "--gallery", str(setup["gallery"])), "not found"
    )
    _one_line_exit_2(cli(str(tmp_path), "--gallery", str(setup["gallery"])), "no image files")


def test_no_watch_is_a_clear_404(setup, tmp_path):
    from fastapi.testclient import TestClient

    from siamface.serve import create_app

    with TestClient(create_app(setup["model"], setup["gallery"])) as client:
        r = client.get("/watch/events")
    assert r.status_code == 404
    assert r.json()["code"] == "no_watch"


def test_someone_else_in_the_same_place_starts_a_new_track(setup, tmp_path):
    """A leaves and, 0.2 s later, the unenrolled C appears where A was: the tracker links the
    boxes, the faces do not match, so the track is split and C is never named A."""
    import siamface

    a, c = setup["actors"][0], setup["actors"][2]
    swap = [
        Actor(a.person, a.photo, [(0, 2.5)], (0.4, 0.5), (0.45, 0.5), 0.6, 0.6),
        Actor(c.person, c.photo, [(2.7, 5.0)], (0.45, 0.5), (0.4, 0.5), 0.6, 0.6, enrolled=False),
    ]
    clip = encode(swap, tmp_path / "swap.mp4", 5.0, FPS, SIZE)
    events = list(siamface.watch(clip, setup["gallery"], setup["model"]))
    tracks = [e for e in events if e["event"] == "track" and e["faces"] >= 3]
    assert [t["person"] for t in tracks] == [a.person, "unknown"], tracks
    # C's track starts only once C is there; A's may run on a few frames into C's (until the
    # next embedded face shows the change: at most --reembed-every detections)
    assert tracks[0]["last"]["time"] < tracks[1]["first"]["time"]
    assert 2.7 <= tracks[1]["first"]["time"] <= 2.7 + 5 / FPS
    assert all(t["named"] in ([], [a.person]) for t in tracks)
