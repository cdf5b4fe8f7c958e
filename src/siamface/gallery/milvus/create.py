"""Creating a Milvus gallery so that an interruption is always recognisable.

The meta collection comes first, with a ``creating`` journal row; the ``format`` row is
written last. Whatever happens in between, the collections are either a gallery or a
half-made one (:mod:`siamface.gallery.milvus.half_made`), never mistaken for a gallery.
"""

from __future__ import annotations

import time
from typing import Any

from siamface.errors import SiamfaceError
from siamface.gallery.faults import fault_point
from siamface.gallery.milvus.half_made import half_made, half_made_message
from siamface.gallery.milvus.layout import (
    CREATING,
    FORMAT,
    FORMAT_VERSION,
    collection_names,
    index_params,
    schemas,
)
from siamface.gallery.milvus.rows import meta_row


def create_collections(client: Any, spec: str, collection: str, settings: dict) -> None:
    """Create the gallery ``collection`` with ``settings``; refuses a name already taken
    (by a gallery, a half-made one, or collections siamface did not make)."""
    existing = set(client.list_collections())
    ours = collection_names(collection)
    if ours[2] in existing and client.query(ours[2], ids=["format"], output_fields=["key"]):
        raise SiamfaceError(f"{spec} already holds a gallery")
    half = half_made(client, collection, existing)
    if half is not None:
        raise SiamfaceError(half_made_message(spec, half))
    if collection in existing or ours[1] in existing:
        raise SiamfaceError(
            f"Milvus collection {collection!r} at {spec} exists and is not a siamface "
            "gallery; choose another collection name"
        )
    vec, people, meta = schemas(int(settings["embedding_size"]))
    kind, params = settings["index_kind"], settings["index_params"]
    # The meta collection first, with a journal row: from here on, an interrupted
    # creation is recognised as half-made (see the module docstring).
    for c, schema, index in (
        (ours[2], meta, index_params(client, "flat", {}, "dummy")),
        (ours[0], vec, index_params(client, kind, params, "vector")),
        (ours[1], people, index_params(client, "flat", {}, "dummy")),
    ):
        client.create_collection(c, schema=schema, index_params=index, consistency_level="Strong")
        if c == ours[2]:
            client.upsert(ours[2], [meta_row(CREATING, {"started": time.time()})])
        fault_point("create:collection")
    base = {"format_version": FORMAT_VERSION, "version": 0, "created": time.time()}
    rows = [meta_row(k, v) for k, v in {**base, **settings}.items()]
    client.upsert(ours[2], rows)
    fault_point("create:before-marker")
    # written last: a gallery whose creation was interrupted never looks like one
    client.upsert(ours[2], [meta_row("format", FORMAT)])
    client.delete(ours[2], ids=[CREATING])
