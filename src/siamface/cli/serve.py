"""``siamface serve``: the REST service (FastAPI + uvicorn) for a model and a gallery."""

from __future__ import annotations

import argparse
import os

from siamface.cli._model_args import CARD_HELP, MODEL_HELP, positive_int
from siamface.errors import SiamfaceError
from siamface.serve.settings import (
    BATCHING_MODES,
    DEFAULT_DECODE_WAIT_S,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_PIXELS_IN_FLIGHT,
    DEFAULT_MAX_UPLOAD_MB,
)

EPILOG = """\
the web page (verify, identify, gallery, model card) is at http://HOST:PORT/
endpoints (interactive docs at http://HOST:PORT/docs):
  POST /verify             image1, image2           -> similarity, same, threshold
  POST /embed              image                    -> embedding
  POST /identify           image [?top_k=5]         -> identity or "unknown", matches
  GET  /gallery/people                              -> enrolled people
  POST /gallery/people     name, images[, append, metadata]   (needs X-API-Key)
  DELETE /gallery/people/NAME                                  (needs X-API-Key)
  GET  /model-card                                  -> model, threshold, report summary
  GET  /health                                      -> model, gallery, batching counters

Every error is JSON {"detail": ..., "code": ..., "field": ...} (see docs/ship.md).
Batching: "auto" groups concurrent requests into one model call on a GPU, where it pays, and
not on CPU, where it measured 0.82x the throughput of one request per call.

Gallery writes need an API key: set SIAMFACE_API_KEY (preferred: command lines are visible
to other users) or --api-key; without one, writes answer 403. The server listens on
127.0.0.1 unless --host says otherwise; put a TLS proxy in front before exposing it.

examples:
  siamface serve --model model.onnx
  siamface serve --model runs/pins --report eval/pins     # plots on the model card
  SIAMFACE_API_KEY=s3cret siamface serve --model runs/pins --gallery staff --port 8080
  curl -F image1=@a.jpg -F image2=@b.jpg http://127.0.0.1:8000/verify
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the REST service (verify, embed, identify, gallery)",
        description="Serve a model (checkpoint or .onnx) and optionally a gallery over HTTP.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--card", metavar="FILE", help=CARD_HELP)
    p.add_argument("--gallery", help="gallery folder (created empty for this model if missing)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free)")
    p.add_argument("--api-key", help="key for gallery writes (default: $SIAMFACE_API_KEY)")
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"largest request body in MB (default {DEFAULT_MAX_UPLOAD_MB:g})",
    )
    p.add_argument("--threshold", type=float, help="override the model's decision threshold")
    p.add_argument(
        "--report",
        metavar="DIR",
        help="a 'siamface evaluate' --out folder: its ROC/DET/score plots go on the model card",
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help=f"largest image accepted, in pixels (default {DEFAULT_MAX_PIXELS:,})",
    )
    p.add_argument(
        "--max-pixels-in-flight",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS_IN_FLIGHT,
        help="pixels decoded at once over all requests; more waits its turn, bounding memory "
        f"(default {DEFAULT_MAX_PIXELS_IN_FLIGHT:,})",
    )
    p.add_argument(
        "--decode-wait-s",
        type=float,
        default=DEFAULT_DECODE_WAIT_S,
        help="how long an upload may wait for its turn to decode before the answer is 503 "
        f"busy (default {DEFAULT_DECODE_WAIT_S:g})",
    )
    p.add_argument(
        "--batching",
        choices=BATCHING_MODES,
        default="auto",
        help="group concurrent requests into one model call: auto (default) = on for GPU "
        "models, off on CPU",
    )
    p.add_argument(
        "--max-batch", type=positive_int, default=32, help="most images per model call (32)"
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=2.0,
        help="with batching on: how long a lone request waits for others (default 2)",
    )
    p.add_argument(
        "--max-inflight",
        type=positive_int,
        default=2,
        help="with batching on: model calls running at once (default 2: the next batch starts "
        "while the last one's answers go out)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda ... for checkpoints (auto)")
    p.add_argument(
        "--watch",
        metavar="SOURCE",
        help="also watch a video file, folder, webcam index or rtsp/http stream and show it "
        "live with names on the page's Watch tab (needs --gallery; see siamface watch)",
    )
    p.add_argument(
        "--watch-detect-every",
        type=int,
        default=1,
        help="--watch: detect faces on every Kth frame, track in between (default 1)",
    )
    p.add_argument("--watch-max-side", type=int, help="--watch: downscale larger frames")
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import socket

    import uvicorn

    from siamface.serve import create_app  # lazy: --help speed

    if not 0 <= args.port <= 65535:
        raise SiamfaceError(f"--port must be between 0 and 65535, got {args.port}")
    api_key = args.api_key or os.environ.get("SIAMFACE_API_KEY") or None
    model = args.model
    if args.card:
        from siamface.embed.load import create_embedder  # lazy: --help speed

        model = create_embedder(args.model, device=args.device, card=args.card)
    app = create_app(
        model,
        args.gallery,
        api_key=api_key,
        max_upload_mb=args.max_upload_mb,
        threshold=args.threshold,
        batching=args.batching,
        report=args.report,
        max_pixels=args.max_pixels,
        max_pixels_in_flight=args.max_pixels_in_flight,
        decode_wait_s=args.decode_wait_s,
        max_batch=args.max_batch,
        max_wait_ms=args.batch_wait_ms,
        max_inflight=args.max_inflight,
        device=args.device,
        watch=args.watch,
        watch_options={"detect_every": args.watch_detect_every, "max_side": args.watch_max_side},
    )
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as err:
        sock.close()
        raise SiamfaceError(f"cannot listen on {args.host}:{args.port}: {err.strerror}") from err
    host, port = sock.getsockname()[:2]
    info = app.state.service.model_info()
    writes = "enabled" if api_key and args.gallery else "disabled (no API key or no gallery)"
    batching = app.state.service.batching
    print(
        f"siamface serve: {info['source']} ({info['backend']}, model {info['fingerprint']}) "
        f"on http://{host}:{port}  page: http://{host}:{port}/  docs: http://{host}:{port}/docs"
        f"  gallery writes {writes}; batching {batching}",
        flush=True,
    )
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=10)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
