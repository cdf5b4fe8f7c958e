"""``siamface gallery remove``: remove people by name."""

from __future__ import annotations

import argparse
import json

from siamface.cli.gallery._shared import GALLERY_HELP, open_spec


def add_parser(gs: argparse._SubParsersAction) -> None:
    """Add this action's parser to ``siamface gallery`` (called in --help order)."""
    r = gs.add_parser("remove", help="remove people by name")
    r.add_argument("gallery", metavar="GALLERY", help=GALLERY_HELP)
    r.add_argument("names", nargs="+", metavar="NAME")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=run_remove)


def run_remove(args: argparse.Namespace) -> int:
    with open_spec(args.gallery) as g:
        removed = g.remove(args.names)
        n = len(g)
    if args.json:
        print(json.dumps({"removed": removed, "people": n}))
    else:
        print(f"removed {', '.join(removed)}; {n} people remain")
    return 0
