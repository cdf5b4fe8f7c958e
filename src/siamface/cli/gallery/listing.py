"""``siamface gallery list``: the enrolled people and the gallery's settings."""

from __future__ import annotations

import argparse
import json

from siamface.cli.gallery._shared import GALLERY_HELP, open_spec


def add_parser(gs: argparse._SubParsersAction) -> None:
    """Add this action's parser to ``siamface gallery`` (called in --help order)."""
    ls = gs.add_parser("list", help="list enrolled people and the gallery's settings")
    ls.add_argument("gallery", metavar="GALLERY", help=GALLERY_HELP)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> int:
    with open_spec(args.gallery) as g:
        info = g.info()
        people = g.people()
    if args.json:
        print(json.dumps({"gallery": info, "people": [p.to_dict() for p in people]}, indent=1))
        return 0
    thr = info["threshold"]
    print(
        f"{info['path']}: {info['people']} people, {info['images']} images; model "
        f"{info['fingerprint']} ({info['embedding_size']}-d); threshold "
        f"{'none (closed-set)' if thr is None else f'{thr:.4f}'}; aggregation "
        f"{info['aggregation']}; index {info['index']['kind'] or 'not built yet'}"
    )
    width = max((len(p.name) for p in people), default=4)
    for p in people:
        meta = f"  {json.dumps(p.metadata)}" if p.metadata else ""
        print(f"  {p.name:<{width}}  {p.n_images:>4} image(s){meta}")
    return 0
