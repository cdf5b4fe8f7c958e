"""``siamface gallery drop``: delete a whole gallery, or a half-made Milvus one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from siamface.cli.gallery._shared import GALLERY_HELP, confirm, open_spec
from siamface.errors import SiamfaceError
from siamface.gallery.milvus.half_made import drop_milvus_gallery, milvus_state


def add_parser(gs: argparse._SubParsersAction) -> None:
    """Add this action's parser to ``siamface gallery`` (called in --help order)."""
    d = gs.add_parser(
        "drop",
        help="delete a whole gallery (or the leftovers of an interrupted creation)",
        description="Delete a gallery: a Milvus gallery's collections, or a gallery folder's "
        "files. Also removes a half-made Milvus gallery (its creation was interrupted), which "
        "otherwise blocks the name. Asks first; --yes to confirm without asking. Never "
        "deletes collections or folders siamface did not make.",
    )
    d.add_argument("gallery", metavar="GALLERY", help=GALLERY_HELP)
    d.add_argument("--yes", action="store_true", help="drop without asking")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=run_drop)


def run_drop(args: argparse.Namespace) -> int:
    from siamface.gallery.backends import backend_name  # lazy: --help speed

    if backend_name(args.gallery) == "milvus":
        state, detail = milvus_state(args.gallery)
        if state in ("absent", "foreign"):
            raise SiamfaceError(f"{args.gallery}: {detail or 'gallery not found'}; nothing dropped")
        what = "the leftovers of half-made gallery" if state == "half-made" else "gallery"
        if state == "complete":
            with open_spec(args.gallery) as g:
                n = len(g)
            what = f"gallery ({n} people)"
        confirm(f"drop {what} {args.gallery}", args.yes)
        dropped = drop_milvus_gallery(args.gallery, allow_complete=True)
    else:
        from siamface.gallery.builtin import drop_gallery_folder  # lazy: --help speed

        folder = Path(args.gallery).expanduser()
        with open_spec(args.gallery) as g:  # refuses folders that are not galleries
            n = len(g)
        confirm(f"delete gallery {folder} ({n} people)", args.yes)
        dropped = drop_gallery_folder(folder)
    if args.json:
        print(json.dumps({"gallery": args.gallery, "dropped": dropped}))
    else:
        print(f"dropped {args.gallery} ({', '.join(dropped)})")
    return 0
