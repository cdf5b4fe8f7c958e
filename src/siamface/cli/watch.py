"""``siamface watch SOURCE --gallery G``: every face in a video or stream, tracked and named."""

from __future__ import annotations

import argparse
import json
import sys

from siamface.cli._model_args import threshold_value
from siamface.cli.gallery._shared import load_gallery_model
from siamface.errors import OutputError, SiamfaceError
from siamface.gallery import open_gallery
from siamface.video import Watcher, WatchOptions
from siamface.video.pipeline import open_source
from siamface.video.render import VideoOut


def _roi(text: str) -> tuple[int, int, int, int]:
    try:
        parts = tuple(int(v) for v in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4 or min(parts) < 0:
        raise argparse.ArgumentTypeError(f"--roi wants X,Y,W,H in pixels, got {text!r}")
    return parts  # type: ignore[return-value]


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "watch",
        help="find, track and identify every face in a video file, folder of frames, "
        "webcam or rtsp/http stream",
        description="Detect every face in each frame, follow each person with a tracker, and "
        "name each track from the quality-weighted mean of its faces' embeddings, searched in "
        "the gallery at its open-set threshold (a track is never named from a single face). "
        "Prints one JSON line per event (identity decided or revised, track ended, stream gap) "
        "and a summary at the end. Streams that drop are reconnected with backoff.",
        epilog="SOURCE: a video file, a folder of frames, a webcam index (0) or an rtsp:// / "
        "http(s):// URL. exit status: 0 = the source was watched to its end (or --max-seconds), "
        "2 = an error (source cannot be opened or decoded, a stream that never came back, "
        "bad options). See docs/watch.md.",
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--gallery", required=True, help="gallery folder or milvus://HOST:PORT/NAME")
    p.add_argument("--model", help="model (default: the one the gallery records)")
    p.add_argument("--threshold", type=threshold_value, help="override the open-set threshold")
    g = p.add_argument_group("which frames")
    g.add_argument("--every", type=int, default=1, help="process every Nth frame (default 1)")
    g.add_argument("--fps", type=_positive, help="process at most this many frames per second")
    g.add_argument(
        "--detect-every",
        type=int,
        default=1,
        help="detect faces on every Kth processed frame; the tracker predicts in between",
    )
    g.add_argument("--start", type=float, default=0.0, help="files: start at this second")
    g.add_argument("--stop", type=float, help="files: stop at this second")
    g.add_argument("--max-seconds", type=_positive, help="stop after this many seconds of work")
    g.add_argument("--folder-fps", type=_positive, default=25.0, help="frame rate of a folder")
    f = p.add_argument_group("which faces")
    f.add_argument("--roi", type=_roi, help="only look inside X,Y,W,H (pixels)")
    f.add_argument("--max-side", type=int, help="downscale larger frames to this longest side")
    f.add_argument(
        "--detect-side", type=int, default=640, help="detector's longest side (default 640)"
    )
    f.add_argument("--min-face", type=float, default=24.0, help="smallest face, px (default 24)")
    f.add_argument(
        "--min-score", type=float, default=0.6, help="detector confidence 0-1 (default 0.6)"
    )
    f.add_argument("--detector", help="face detector (default: yunet-opencv)")
    f.add_argument(
        "--reembed-every",
        type=int,
        default=4,
        help="once a track's name is settled, embed its face every Nth detection (default 4)",
    )
    o = p.add_argument_group("output")
    o.add_argument("--events", help="also write the JSON lines to this file")
    o.add_argument("--crops", help="save each track's best face crop in this folder")
    o.add_argument("--video", help="write the frames with boxes and names to this .mp4")
    o.add_argument("--quiet", action="store_true", help="print only the summary")
    o.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for the model (default 1: on a busy 2-core machine one thread "
        "embedded a face 8x faster than two; raise it on an idle many-core one)",
    )
    o.add_argument(
        "--overlap",
        action="store_true",
        help="decode and detect the next frame in a thread while this one is embedded (two "
        "cores at once; for idle machines: on a loaded one it was no faster and had higher "
        "latency, see docs/watch.md)",
    )
    s = p.add_argument_group("streams")
    s.add_argument(
        "--timeout", type=_positive, default=10.0, help="seconds to wait when opening/reading"
    )
    s.add_argument(
        "--reconnect-for",
        type=float,
        default=60.0,
        help="retry a dropped stream this long, with backoff (default 60 s)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    opts = WatchOptions(
        every=args.every,
        fps=args.fps,
        detect_every=args.detect_every,
        roi=args.roi,
        max_side=args.max_side,
        detect_side=args.detect_side,
        start=args.start,
        stop=args.stop,
        max_seconds=args.max_seconds,
        min_face=args.min_face,
        min_score=args.min_score,
        detector=args.detector,
        reembed_every=args.reembed_every,
        threshold=args.threshold,
        crops_dir=args.crops,
        timeout=args.timeout,
        reconnect_for=args.reconnect_for,
        folder_fps=args.folder_fps,
        overlap=args.overlap,
    )
    if not 0.0 <= args.min_score <= 1.0:
        raise SiamfaceError(f"--min-score must be in [0, 1], got {args.min_score}")
    source = open_source(args.source, opts)  # a bad source fails before the model loads
    log = None
    if args.events:
        try:
            log = open(args.events, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as err:
            source.close()
            raise OutputError(f"--events: cannot write {args.events}: {err.strerror}") from err
    writer = None
    gave_up = False
    try:
        with open_gallery(args.gallery) as g:
            embedder = load_gallery_model(g, args.model)
            _set_threads(args.threads)
            watcher = Watcher(source, g, embedder, opts)
            if args.video:
                writer = VideoOut(args.video, (watcher.source.fps or 25.0) / watcher.step)
                watcher.on_frame = writer
            for ev in watcher.events():
                line = json.dumps(ev)
                if log is not None:
                    log.write(line + "\n")
                    log.flush()
                if ev["event"] == "gap" and not ev["recovered"]:
                    gave_up = True
                if not args.quiet or ev["event"] == "summary":
                    print(line, flush=True)
    finally:
        source.close()
        if writer is not None:
            writer.close()
        if log is not None:
            log.close()
    if gave_up:
        print(
            f"siamface watch: error: {args.source} dropped and did not come back within "
            f"{args.reconnect_for:g} s (events up to the drop were reported)",
            file=sys.stderr,
        )
        return 2
    return 0


def _set_threads(n: int) -> None:
    """CPU threads for torch, after the model loaded (its loader sets its own count)."""

    if n < 1:
        raise SiamfaceError(f"--threads must be at least 1, got {n}")
    import sys

    if "torch" in sys.modules:  # an ONNX model never imports torch
        sys.modules["torch"].set_num_threads(n)
