"""``siamface gallery enroll|remove|list|set``: manage a face gallery for 1:N identification."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from siamface.cli._model_args import MODEL_HELP

EPILOG = """\
A gallery is a folder (SQLite database + vector index), or a collection on a Milvus server
(milvus://HOST:PORT/COLLECTION), tied to one model: enrollments and probes from any other
model are refused. The first 'enroll' creates it. 'migrate' copies a gallery between the two.

examples:
  siamface gallery enroll staff --model runs/pins people/            # people/<name>/<images>
  siamface gallery enroll staff --name "Ada Lovelace" ada1.jpg ada2.jpg
  siamface gallery enroll staff --name ada --append ada3.jpg         # more images of ada
  siamface gallery list staff
  siamface gallery remove staff ada
  siamface gallery set staff --threshold 0.45                        # open-set threshold
  siamface identify staff probe.jpg --top-k 5
  siamface gallery migrate staff milvus://db.example.org:19530/staff   # to a Milvus server
"""
GALLERY_HELP = "gallery folder, or milvus://HOST:PORT/COLLECTION"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gallery",
        help="enroll, remove and list people in a face gallery (1:N)",
        description="Manage a face gallery: a folder of enrolled people searched by "
        "'siamface identify'.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gs = p.add_subparsers(dest="gallery_command", metavar="ACTION")

    e = gs.add_parser(
        "enroll",
        help="add people from image folders or files (creates the gallery)",
        description="Enroll people. Without --name, each FOLDER is a folder of identity "
        "folders (FOLDER/<person>/<images>) or, if it holds images directly, one person named "
        "after it. With --name, all given images (and images in given folders) are that "
        "person. Any unreadable image (or, for aligned models, image without a face) aborts "
        "the whole enrollment unless --skip-bad; a name already enrolled is refused unless "
        "--append.",
    )
    e.add_argument("gallery", metavar="GALLERY", help=GALLERY_HELP + " (created if missing)")
    e.add_argument("inputs", nargs="+", metavar="DIR_OR_IMAGE")
    e.add_argument("--model", metavar="MODEL", help=MODEL_HELP + " (default: the gallery's)")
    e.add_argument("--name", help="enroll all given images as this one person")
    e.add_argument("--append", action="store_true", help="add images to people already enrolled")
    e.add_argument("--metadata", metavar="JSON", help="JSON object stored with each person")
    e.add_argument("--skip-bad", action="store_true", help="skip unusable images (listed)")
    e.add_argument("--threshold", type=float, help="open-set threshold for a new gallery")
    e.add_argument(
        "--aggregation",
        choices=["mean", "max"],
        help="new gallery: search mean templates (default) or every image",
    )
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--workers", type=int, help="image-decoding processes")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=run_enroll)

    r = gs.add_parser("remove", help="remove people by name")
    r.add_argument("gallery", metavar="GALLERY", help=GALLERY_HELP)
    r.add_argument("names", nargs="+", metavar="NAME")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=run_remove)

    ls = gs.add_parser("list", help="list enrolled people and the gallery's settings")
    ls.add_argument("gallery", metavar="GALLERY", help=GALLERY_HELP)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)

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

    m = gs.add_parser(
        "migrate",
        help="copy a gallery to another folder or backend (resumable, verified)",
        description="Copy everyone (exact embeddings, refs, metadata, thumbnails) from SRC to "
        "DST, creating DST with SRC's settings if needed. People already in DST are skipped, "
        "so an interrupted migration is finished by running it again. Verified at the end: "
        "same counts, and a sample of searches with identical best matches in both.",
    )
    m.add_argument("source", metavar="SRC", help=GALLERY_HELP)
    m.add_argument("destination", metavar="DST", help=GALLERY_HELP)
    m.add_argument("--batch", type=int, default=500, help="people per write (default 500)")
    m.add_argument("--sample", type=int, default=100, help="searches compared (default 100)")
    m.add_argument("--json", action="store_true")
    m.add_argument("--no-progress", action="store_true")
    m.set_defaults(func=run_migrate)
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
    p.set_defaults(func=lambda args: _no_action(p))


def _no_action(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def _kinds(backend: str) -> tuple[str, ...]:
    """Index kinds of a backend, from the backend class (imports no server client)."""
    from siamface.gallery.backends import backend_class

    return backend_class(backend).index_kinds


def _open(spec: str):
    from siamface.gallery import open_gallery

    return open_gallery(spec)


def load_gallery_model(gallery, model: str | None):
    """The model to embed images for ``gallery``: ``--model`` or the one it records."""
    from siamface.embed.load import create_embedder, model_available
    from siamface.errors import SiamfaceError

    if model is None:
        src = gallery.model_source
        if not model_available(src):
            raise SiamfaceError(
                f"give --model: the gallery's model ({src or 'not recorded'}) is not available"
            )
        model = src
    embedder = create_embedder(model)
    gallery.check_model(embedder.fingerprint, embedder.embedding_size)
    return embedder


def run_enroll(args: argparse.Namespace) -> int:
    from siamface.decide.threshold import Threshold
    from siamface.embed.load import create_embedder, model_reference
    from siamface.errors import SiamfaceError
    from siamface.gallery import Gallery
    from siamface.gallery.backends import backend_name
    from siamface.gallery.enroll import embed_plan, plan_enrollment
    from siamface.gallery.validation import parse_metadata

    metadata = parse_metadata(args.metadata, "--metadata")
    plan = plan_enrollment(args.inputs, args.name)  # input errors before anything is opened
    created = False
    builtin = backend_name(args.gallery) == "builtin"
    if builtin:  # a read-only or full place is refused before minutes of embedding
        from siamface.fileio import check_output_dir

        check_output_dir(args.gallery, "gallery")
    if Gallery.exists(args.gallery):
        if args.threshold is not None or args.aggregation:
            raise SiamfaceError(
                "--threshold/--aggregation only apply when creating a gallery; "
                "use 'siamface gallery set'"
            )
        gallery = Gallery.open(args.gallery)
        embedder = load_gallery_model(gallery, args.model)
    else:
        where = Path(args.gallery).expanduser() if builtin else args.gallery
        if (
            builtin
            and where.exists()
            and (not where.is_dir() or any(not f.name.startswith(".") for f in where.iterdir()))
        ):
            raise SiamfaceError(f"{where} is not a siamface gallery (no gallery.sqlite inside)")
        if not args.model:
            raise SiamfaceError(f"{where} does not exist yet: give --model to create it")
        embedder = create_embedder(args.model)
        threshold = args.threshold
        if threshold is None:
            threshold = Threshold.parse(embedder.threshold)
        gallery = None
    if gallery is not None and not args.append:
        taken = [n for n, _ in plan.groups if n in gallery]
        if taken:  # fail fast, before embedding anything
            raise SiamfaceError(
                f"already enrolled: {', '.join(taken[:5])}{' ...' if len(taken) > 5 else ''} "
                "(use --append to add images, or remove them first); nothing was enrolled"
            )
    embedded = embed_plan(
        embedder,
        plan,
        skip_bad=args.skip_bad,
        metadata=metadata,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not args.no_progress and not args.json,
    )
    if gallery is None:
        gallery = Gallery.create(
            args.gallery,
            fingerprint=embedder.fingerprint,
            embedding_size=embedder.embedding_size,
            threshold=threshold,
            model_source=model_reference(args.model),
            aggregation=args.aggregation or "mean",
        )
        created = True
    with gallery:
        dupes = gallery.duplicates_elsewhere(embedded.people)
        records = gallery.enroll_many(
            embedded.people, fingerprint=embedder.fingerprint, append=args.append
        )
        info = gallery.info()
    out = {
        "gallery": str(args.gallery),
        "created": created,
        "enrolled": [r.to_dict() for r in records],
        "skipped_images": [{"path": str(p), "reason": r} for p, r in embedded.skipped_images],
        "skipped_people": embedded.skipped_people,
        "ignored_files": [{"path": str(p), "reason": r} for p, r in plan.ignored],
        "duplicate_files": dupes,
        "people": info["people"],
        "images": info["images"],
    }
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    verb = "created gallery and enrolled" if created else "enrolled"
    n_img = sum(r.n_images for r in records)
    print(f"{verb} {len(records)} people ({n_img} images total for them) in {args.gallery}")
    for r in records[:20]:
        print(f"  {r.name}: {r.n_images} image(s)")
    if len(records) > 20:
        print(f"  ... and {len(records) - 20} more")
    for p, r in embedded.skipped_images:
        print(f"  skipped {p}: {r}", file=sys.stderr)
    for n in embedded.skipped_people:
        print(f"  skipped {n}: no usable image", file=sys.stderr)
    for p, r in plan.ignored:
        print(f"  ignored {p}: {r}", file=sys.stderr)
    for d in dupes:
        print(
            f"  warning: {d['path']} is byte-identical to an image of {d['other']!r}",
            file=sys.stderr,
        )
    print(f"gallery now holds {info['people']} people, {info['images']} images")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    with _open(args.gallery) as g:
        removed = g.remove(args.names)
        n = len(g)
    if args.json:
        print(json.dumps({"removed": removed, "people": n}))
    else:
        print(f"removed {', '.join(removed)}; {n} people remain")
    return 0


def run_list(args: argparse.Namespace) -> int:
    with _open(args.gallery) as g:
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


def run_set(args: argparse.Namespace) -> int:
    from siamface.errors import SiamfaceError

    if not (
        args.threshold is not None
        or args.no_threshold
        or args.aggregation
        or args.index
        or args.rebuild
    ):
        raise SiamfaceError("nothing to set: give --threshold, --aggregation, --index or --rebuild")
    with _open(args.gallery) as g:
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


def run_migrate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from siamface.gallery.migrate import migrate

    bar = tqdm(desc="migrating", unit="person", disable=args.no_progress or args.json)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        rep = migrate(args.source, args.destination, args.batch, args.sample, progress=progress)
    finally:
        bar.close()
    if args.json:
        print(json.dumps(rep.to_dict(), indent=1))
    else:
        src, dst = rep.counts["source"], rep.counts["destination"]
        print(
            f"{'created' if rep.created else 'updated'} {rep.destination}: copied "
            f"{rep.copied_people} people ({rep.copied_images} images), skipped "
            f"{rep.skipped_existing} already there; people/images {src[0]}/{src[1]} -> "
            f"{dst[0]}/{dst[1]}; sample of {rep.sample} searches: {rep.top1_identical} same best "
            f"match, {rep.topk_identical} same top 5, max score difference {rep.max_score_diff}"
        )
        for p in rep.problems:
            print(f"  problem: {p}", file=sys.stderr)
    if not rep.verified:
        from siamface.errors import SiamfaceError

        raise SiamfaceError(
            f"migration to {rep.destination} did not verify: {'; '.join(rep.problems)}"
        )
    return 0


def confirm(question: str, yes: bool) -> None:
    """Go on when ``--yes`` was given or a person at the terminal says yes; else refuse."""
    from siamface.errors import SiamfaceError

    if yes:
        return
    if not sys.stdin.isatty():
        raise SiamfaceError(f"{question}: add --yes to confirm (nothing was changed)")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise SiamfaceError("not confirmed; nothing was changed")


def _reembedder(gallery, model: str | None):
    """Path -> unit embedding with the gallery's model, or None when no model is available
    (damaged images are then dropped)."""
    from pathlib import Path

    from siamface.errors import SiamfaceError

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
    from siamface.gallery.backends import backend_name

    if backend_name(spec) != "milvus":
        return None
    from siamface.gallery.milvus import milvus_state

    state, detail = milvus_state(spec)
    return detail if state == "half-made" else None


def _check_half_made(args: argparse.Namespace, why: str) -> int:
    from siamface.gallery.milvus import drop_milvus_gallery

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


def run_drop(args: argparse.Namespace) -> int:
    from siamface.errors import SiamfaceError
    from siamface.gallery.backends import backend_name

    if backend_name(args.gallery) == "milvus":
        from siamface.gallery.milvus import drop_milvus_gallery, milvus_state

        state, detail = milvus_state(args.gallery)
        if state in ("absent", "foreign"):
            raise SiamfaceError(f"{args.gallery}: {detail or 'gallery not found'}; nothing dropped")
        what = "the leftovers of half-made gallery" if state == "half-made" else "gallery"
        if state == "complete":
            with _open(args.gallery) as g:
                n = len(g)
            what = f"gallery ({n} people)"
        confirm(f"drop {what} {args.gallery}", args.yes)
        dropped = drop_milvus_gallery(args.gallery, allow_complete=True)
    else:
        from siamface.gallery.builtin import drop_gallery_folder

        folder = Path(args.gallery).expanduser()
        with _open(args.gallery) as g:  # refuses folders that are not galleries
            n = len(g)
        confirm(f"delete gallery {folder} ({n} people)", args.yes)
        dropped = drop_gallery_folder(folder)
    if args.json:
        print(json.dumps({"gallery": args.gallery, "dropped": dropped}))
    else:
        print(f"dropped {args.gallery} ({', '.join(dropped)})")
    return 0


def run_check(args: argparse.Namespace) -> int:
    why = _half_made(args.gallery)
    if why is not None:
        return _check_half_made(args, why)
    with _open(args.gallery) as g:
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
