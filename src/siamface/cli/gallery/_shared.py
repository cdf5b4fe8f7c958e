"""What the ``siamface gallery`` subcommands (and ``identify``, ``verify``, ``watch``) share:
the GALLERY argument's help, opening a spec, the gallery's model, confirmation."""

from __future__ import annotations

import sys

from siamface.errors import SiamfaceError

GALLERY_HELP = "gallery folder, or milvus://HOST:PORT/COLLECTION"


def open_spec(spec: str):
    """The gallery at ``spec``, opened only when a subcommand runs (not for ``--help``)."""
    from siamface.gallery import open_gallery  # lazy: --help speed

    return open_gallery(spec)


def load_gallery_model(gallery, model: str | None):
    """The model to embed images for ``gallery``: ``--model`` or the one it records."""
    from siamface.embed.load import create_embedder, model_available  # lazy: --help speed

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


def confirm(question: str, yes: bool) -> None:
    """Go on when ``--yes`` was given or a person at the terminal says yes; else refuse."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise SiamfaceError(f"{question}: add --yes to confirm (nothing was changed)")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise SiamfaceError("not confirmed; nothing was changed")
