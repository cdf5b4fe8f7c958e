"""``siamface embed``: a folder of face images -> one ``.npz`` of embeddings.

The file holds ``paths`` (relative to DIR, '/'-separated), ``identities`` (the first folder
under DIR, '' for files directly in it), ``embeddings`` (N x D float32 unit vectors), and the
model's ``fingerprint`` so vectors of different models are never mixed. Unreadable images are
skipped and listed in ``skipped`` / ``skipped_reasons``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from siamface.cli._model_args import add_embed_args, add_model_args, open_model_arg
from siamface.errors import SiamfaceError
from siamface.fileio import atomic_write, check_output_file
from siamface.folders.images import is_image_path, unsupported_reason


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="embed every image under a folder into an .npz file",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  siamface embed --model runs/pins --data faces/ --out faces.npz\n"
        "  python -c \"import numpy as np; z = np.load('faces.npz'); "
        "print(z['paths'][:3], z['embeddings'].shape)\"",
    )
    add_model_args(p)
    p.add_argument("--data", required=True, metavar="DIR", help="folder of images (recursive)")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="output file")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    add_embed_args(p)
    p.set_defaults(func=run)


def list_images(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(image files under ``root``, [(file or folder, why it is not used)]).

    Recursive and sorted; hidden files and folders are skipped. Files with another suffix
    (``.gif``, ``.txt``) and folders without any image are returned as unused, so they are
    reported, not silently dropped; broken symbolic links count as images so that reading
    them reports them too.
    """

    if not root.is_dir():
        raise SiamfaceError(f"data folder not found: {root}")
    files: list[Path] = []
    unused: list[tuple[Path, str]] = []
    folders_with_images: set[Path] = set()
    folders: list[Path] = []
    for f in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in f.relative_to(root).parts):
            continue
        if f.is_dir():
            folders.append(f)
        elif not (f.is_file() or f.is_symlink()):
            unused.append((f, "not a regular file"))
        elif is_image_path(f):
            files.append(f)
            folders_with_images.update(f.relative_to(root).parents)
        else:
            unused.append((f, unsupported_reason(f)))
    for d in folders:
        if d.relative_to(root) not in folders_with_images:
            unused.append((d, "folder without image files"))
    if not files:
        raise SiamfaceError(f"no image files under {root}")
    return files, unused


def run(args: argparse.Namespace) -> int:
    import numpy as np

    root = Path(args.data).expanduser()
    out = Path(args.out).expanduser()
    if out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")
    files, unused = list_images(root)
    check_output_file(out, "embeddings file")
    model = open_model_arg(args)
    emb, errors = model.embed_paths(
        files, batch_size=args.batch_size, workers=args.workers, progress=not args.no_progress
    )
    rel = [f.relative_to(root).as_posix() for f in files]
    kept = [i for i in range(len(files)) if i not in errors]
    skipped = [(rel[i], r) for i, r in errors.items()]
    skipped += [(p.relative_to(root).as_posix(), r) for p, r in unused]
    ids = [rel[i].split("/")[0] if "/" in rel[i] else "" for i in kept]
    if not kept:
        first = next(iter(errors.items()))
        raise SiamfaceError(
            f"none of the {len(files)} images under {root} could be read "
            f"(e.g. {rel[first[0]]}: {first[1]})"
        )

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.savez(
                f,
                paths=np.array([rel[i] for i in kept], dtype=str),
                identities=np.array(ids, dtype=str),
                embeddings=emb.astype(np.float32),
                fingerprint=np.array(model.fingerprint),
                model=np.array(str(model.source)),
                root=np.array(str(root.resolve())),
                skipped=np.array([name for name, _ in skipped], dtype=str),
                skipped_reasons=np.array([why for _, why in skipped], dtype=str),
            )

    atomic_write(out, write)
    summary = {
        "out": str(out),
        "images": len(kept),
        "embedding_size": int(model.embedding_size),
        "fingerprint": model.fingerprint,
        "skipped": [{"path": name, "reason": why} for name, why in skipped],
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{len(kept)} embeddings ({model.embedding_size}-d) written to {out}")
        for s in summary["skipped"]:
            print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)
    return 0
