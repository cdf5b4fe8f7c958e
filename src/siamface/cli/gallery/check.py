"""``siamface gallery check``: find (and with --repair fix) damaged records and half-made
Milvus galleries."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from siamface.cli.gallery._shared import GALLERY_HELP, confirm, load_gallery_model, open_spec
from siamface.errors import SiamfaceError


def add_parser(gs: argparse._SubParsersAction) -> None:
    """Add this action's parser to ``siamface gallery`` (called in --help order)."""
    c = gs.add_parser(
        "check",
        help="check every stored vector; --repair fixes damaged records",
        description="Check that every stored embedding and template is a finite unit vector "
        "of the gallery's size, and name the person of each damaged record (a disk error, a "
        "sync tool or a hand edit can damage a database). With --repair: re-embed a damaged "
        "image from its stored file when the file and the model are available, else drop it; "
        "recompute templates; remove a person left with no image; rebuild the index. For a "
        "Milvus gallery, also finds (and with --repair drops) a half-made collection. Exit "
        "code 1 when problems remain.",
    )
    c.add_argument("gallery", metavar="GALLERY", help=GALLERY_HELP)
    c.add_argument("--repair", action="store_true", help="fix what is found (asks first)")
    c.add_argument("--yes", action="store_true", help="repair without asking")
    c.add_argument("--model", help="model to re-embed with (default: the gallery's)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=run_check)


def _reembedder(gallery, model: str | None):
    """Path -> unit embedding with the gallery's model, or None when no model is available
    (damaged images are then dropped)."""
    try:
        embedder = load_gallery_model(gallery, model)
    except SiamfaceError as err:
        print(f"  cannot re-embed ({err}); damaged images will be dropped", file=sys.stderr)
        return None

    def reembed(ref: str):
        if not Path(ref).is_file():
            return None
        emb, errors = embedder.embed_paths([Path(ref)], progress=False)
        return None if errors or len(emb) != 1 else emb[0]

    return reembed


def _half_made(spec: str) -> str | None:
    """Why ``spec`` is a half-made Milvus gallery, or None (a folder, or not half-made)."""
    from siamface.gallery.backends import backend_name  # lazy: --help speed

    if backend_name(spec) != "milvus":
        return None
    from siamface.gallery.milvus.half_made import milvus_state  # lazy: --help speed

    state, detail = milvus_state(spec)
    return detail if state == "half-made" else None


def _check_half_made(args: argparse.Namespace, why: str) -> int:
    from siamface.gallery.milvus.half_made import drop_milvus_gallery  # lazy: --help speed

    problem = {"person": None, "kind": "gallery", "problem": f"half-made: {why}"}
    dropped: list[str] = []
    if args.repair:
        confirm(f"drop the leftovers of half-made gallery {args.gallery}", args.yes)
        dropped = drop_milvus_gallery(args.gallery, allow_complete=False)
    left = [] if dropped else [problem]
    if args.json:
        print(
            json.dumps(
                {
                    "gallery": args.gallery,
                    "problems": [problem],
                    "repaired": [{"action": f"dropped {c}"} for c in dropped],
                    "remaining": left,
                },
                indent=1,
            )
        )
    elif dropped:
        print(f"{args.gallery}: half-made gallery removed ({', '.join(dropped)}); enroll again")
    else:
        print(
            f"{args.gallery}: half-made gallery ({why}); run 'siamface gallery check "
            f"{args.gallery} --repair' or 'siamface gallery drop {args.gallery}'"
        )
    return 1 if left else 0


def run_check(args: argparse.Namespace) -> int:
    why = _half_made(args.gallery)
    if why is not None:
        return _check_half_made(args, why)
    with open_spec(args.gallery) as g:
        problems = g.check()
        done: list[dict] = []
        if problems and args.repair:
            confirm(f"repair {len(problems)} damaged record(s) in {args.gallery}", args.yes)
            needs_model = any(p["kind"] == "image" and p.get("ref") for p in problems)
            reembed = _reembedder(g, args.model) if needs_model else None
            done = g.repair(problems, reembed)
        left = g.check() if done else problems
    if args.json:
        print(
            json.dumps(
                {
                    "gallery": str(args.gallery),
                    "problems": problems,
                    "repaired": done,
                    "remaining": left,
                },
                indent=1,
            )
        )
    else:
        for p in problems:
            what = p["kind"] if p["kind"] != "image" else f"image {p['id']}"
            print(f"  damaged: {p['person']!r} {what}: {p['problem']}")
        for d in done:
            print(f"  repaired: {d['person']!r}: {d['action']}")
        if not left:
            state = "repaired" if done else "all records are sound"
            print(f"{args.gallery}: {state}")
        else:
            print(
                f"{args.gallery}: {len(left)} damaged record(s); run "
                f"'siamface gallery check {args.gallery} --repair'"
            )
    return 1 if left else 0
