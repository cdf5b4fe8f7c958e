"""``siamface gallery set``: change the threshold, aggregation or index kind."""

from __future__ import annotations

import argparse
import json

from siamface.cli.gallery._shared import GALLERY_HELP, open_spec
from siamface.errors import SiamfaceError


def add_parser(gs: argparse._SubParsersAction) -> None:
    """Add this action's parser to ``siamface gallery`` (called in --help order)."""
    s = gs.add_parser("set", help="change the threshold, aggregation or index kind")
    s.add_argument("gallery", metavar="GALLERY", help=GALLERY_HELP)
    t = s.add_mutually_exclusive_group()
    t.add_argument("--threshold", type=float, help="open-set threshold (cosine similarity)")
    t.add_argument("--no-threshold", action="store_true", help="closed-set: never 'unknown'")
    s.add_argument("--aggregation", choices=["mean", "max"])
    s.add_argument(
        "--index",
        metavar="KIND",
        help="auto, or a kind of the gallery's backend (built-in: "
        f"{', '.join(_kinds('builtin'))}; Milvus: {', '.join(_kinds('milvus'))})",
    )
    s.add_argument("--rebuild", action="store_true", help="rebuild the index from the database")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_set)


def _kinds(backend: str) -> tuple[str, ...]:
    """Index kinds of a backend, from the backend class (imports no server client)."""
    from siamface.gallery.backends import backend_class  # lazy: --help speed

    return backend_class(backend).index_kinds


def run_set(args: argparse.Namespace) -> int:
    if not (
        args.threshold is not None
        or args.no_threshold
        or args.aggregation
        or args.index
        or args.rebuild
    ):
        raise SiamfaceError("nothing to set: give --threshold, --aggregation, --index or --rebuild")
    with open_spec(args.gallery) as g:
        if args.threshold is not None or args.no_threshold:
            g.set_threshold(None if args.no_threshold else args.threshold)
        if args.aggregation:
            g.set_aggregation(args.aggregation)
        if args.index:
            g.set_index_kind(args.index)
        if args.rebuild:
            g.rebuild_index()
        info = g.info()
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print(
            f"{info['path']}: threshold {info['threshold']}, aggregation {info['aggregation']}, "
            f"index {info['index_kind']} ({info['index']['kind']})"
        )
    return 0
