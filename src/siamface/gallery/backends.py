"""The gallery backends by name, and :func:`open_gallery`, which picks one from a spec.

A spec is a folder path (``builtin``) or a URL: ``milvus://HOST:PORT/COLLECTION`` (also
``http://`` and ``https://``, as pymilvus writes Milvus addresses) for ``milvus``. Adding a
backend is a subclass of :class:`~siamface.gallery.gallery.Gallery` with a ``handles(spec)``
class method, registered lazily here; ``--help`` texts and validation read :data:`BACKENDS`.
"""

from __future__ import annotations

import os

from siamface.errors import SiamfaceError
from siamface.gallery.gallery import Gallery
from siamface.registry import Registry

#: The gallery backends by name; each class is imported when chosen (pymilvus is an
#: optional extra).
BACKENDS: Registry[type[Gallery]] = Registry("gallery backend")
BACKENDS.register_lazy(
    "builtin", "siamface.gallery.builtin:BuiltinGallery", help="SQLite + faiss in a folder"
)
BACKENDS.register_lazy(
    "milvus",
    "siamface.gallery.milvus.backend:MilvusGallery",
    help="a Milvus collection (pymilvus)",
    schemes=("milvus", "http", "https"),
)
#: URL schemes and the backend they mean (a backend's ``schemes`` fact)
SCHEMES: dict[str, str] = {s: e.name for e in BACKENDS for s in e.facts.get("schemes", ())}
SPEC_HELP = (
    "a gallery folder (built-in SQLite + faiss), or a Milvus collection as "
    "milvus://HOST:PORT/COLLECTION (or http(s)://HOST:PORT/COLLECTION)"
)


def backend_class(name: str) -> type[Gallery]:
    """The :class:`Gallery` subclass registered as ``name`` (its module imported now)."""
    if name not in BACKENDS:
        raise SiamfaceError(
            f"unknown gallery backend {name!r}; choose from {', '.join(BACKENDS.names())}"
        )
    return BACKENDS.get(name).builder


def backend_name(spec: object) -> str:
    """Which backend a spec means (no connection is made)."""
    if isinstance(spec, Gallery):
        return spec.backend
    if isinstance(spec, os.PathLike):
        return "builtin"
    if not isinstance(spec, str) or not spec.strip():
        raise SiamfaceError(f"a gallery is a folder path or a URL ({SPEC_HELP}); got {spec!r}")
    scheme, sep, _ = spec.partition("://")
    if not sep:
        return "builtin"
    if scheme.lower() not in SCHEMES:
        raise SiamfaceError(
            f"unknown gallery URL scheme {scheme + '://'!r} in {spec!r}; use {SPEC_HELP}"
        )
    return SCHEMES[scheme.lower()]


def backend_for(spec: object) -> type[Gallery]:
    return backend_class(backend_name(spec))


def open_gallery(spec: object, *, create: dict | None = None) -> Gallery:
    """Open the gallery at ``spec`` (a folder path or a Milvus URL).

    With ``create`` (the keyword arguments of :meth:`Gallery.create`: fingerprint,
    embedding_size, threshold, model_source, aggregation...), a missing gallery is created
    empty; an existing one is checked against ``create['fingerprint']`` and
    ``create['embedding_size']`` (ModelMismatchError if it belongs to another model).
    """
    if create is None:
        return Gallery.open(spec)
    if not Gallery.exists(spec):
        return Gallery.create(spec, **create)
    g = Gallery.open(spec)
    try:
        g.check_model(create["fingerprint"], create.get("embedding_size"))
    except BaseException:
        g.close()
        raise
    return g
