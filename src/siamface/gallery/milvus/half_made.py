"""Half-made Milvus galleries: recognising an interrupted creation, and dropping galleries.

A creation cut short leaves collections that are not a gallery yet but block the name; they
must never be opened as one, and must be removable without ever touching a collection
siamface did not make. ``siamface gallery drop`` and ``check --repair`` use this.
"""

from __future__ import annotations

import contextlib
from typing import Any

from siamface.errors import SiamfaceError
from siamface.gallery.milvus.connection import connect, short_error
from siamface.gallery.milvus.layout import CREATING, PEOPLE_FIELDS, VECTOR_FIELDS


def field_names(client: Any, collection: str) -> set[str]:
    """The field names of ``collection`` (empty when unreadable)."""
    try:
        return {f["name"] for f in client.describe_collection(collection)["fields"]}
    except Exception:  # noqa: BLE001 - an unreadable description: not ours to judge
        return set()


def half_made(client: Any, collection: str, names: set[str]) -> str | None:
    """Why the collections named ``collection*`` are a half-made siamface gallery, or None
    (complete, absent, or made by something else)."""
    meta = f"{collection}__meta"
    if meta in names:
        rows = client.query(meta, ids=["format", CREATING], output_fields=["key", "value"])
        keys = {r["key"] for r in rows}
        if "format" in keys:
            return None
        return "its creation was interrupted (no 'format' record)"
    parts = []
    if collection in names and field_names(client, collection) >= VECTOR_FIELDS:
        parts.append(collection)
    people = f"{collection}__people"
    if people in names and field_names(client, people) >= PEOPLE_FIELDS:
        parts.append(people)
    if parts:
        return f"its creation was interrupted ({' and '.join(parts)} without {meta})"
    return None


def half_made_message(spec: str, why: str) -> str:
    """The one-line refusal for a half-made gallery, naming the ways out."""
    return (
        f"{spec} is a half-made gallery: {why}; remove the leftovers with "
        f"'siamface gallery drop {spec}' (or 'siamface gallery check {spec} --repair'), "
        "then enroll again"
    )


def milvus_state(spec: str) -> tuple[str, str | None]:
    """(``"complete"``, ``"half-made"``, ``"foreign"`` or ``"absent"``, detail) of the
    collections behind ``spec``, read without opening them as a gallery."""
    spec, client, collection = connect(spec)
    try:
        names = set(client.list_collections())
        half = half_made(client, collection, names)
        if half is not None:
            return "half-made", half
        if f"{collection}__meta" in names:
            return "complete", None
        if collection in names or f"{collection}__people" in names:
            return "foreign", f"collection {collection!r} was not made by siamface"
        return "absent", None
    finally:
        with contextlib.suppress(Exception):
            client.close()


def drop_milvus_gallery(spec: str, allow_complete: bool) -> list[str]:
    """Drop a gallery's collections (a half-made one, or a complete one when
    ``allow_complete``); never a collection siamface did not make. Returns what was dropped."""
    state, detail = milvus_state(spec)
    if state == "absent":
        raise SiamfaceError(f"gallery not found: {spec}; nothing dropped")
    if state == "foreign":
        raise SiamfaceError(f"{spec}: {detail}; nothing dropped")
    if state == "complete" and not allow_complete:
        raise SiamfaceError(f"{spec} is a complete gallery; nothing dropped")
    spec, client, collection = connect(spec)
    try:
        names = set(client.list_collections())
        dropped = []
        for c in (collection, f"{collection}__people", f"{collection}__meta"):  # meta last
            if c in names:
                client.drop_collection(c)
                dropped.append(c)
        return dropped
    except Exception as err:  # noqa: BLE001 - pymilvus raises many types
        raise SiamfaceError(f"cannot drop Milvus gallery {spec}: {short_error(err)}") from None
    finally:
        with contextlib.suppress(Exception):
            client.close()
