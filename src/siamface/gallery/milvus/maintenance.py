"""Scans behind ``gallery check`` and ``vacuum`` of a Milvus gallery, over rows read in pages.

Both read the whole vectors collection once; they are pure over the rows (and, for vacuum,
the owners' rows) so that the backend only pages and deletes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from siamface.gallery.milvus.layout import READ_IDS
from siamface.gallery.milvus.rows import batches_of, person_id
from siamface.gallery.vectors import vector_problems

#: the vector fields :func:`damaged_vectors` reads
CHECK_FIELDS = ["id", "person", "unit", "ref", "vector"]
#: the vector fields :func:`uncommitted` reads
OWNER_FIELDS = ["id", "person", "batch"]


def damaged_vectors(rows: Iterable[dict], dim: int) -> list[dict]:
    """Every row whose vector is not a finite unit vector of ``dim``, with its person."""
    found: list[dict] = []
    page: list[dict] = []

    def flush() -> None:
        blobs = [np.asarray(r["vector"], dtype="<f4").tobytes() for r in page]
        for k, why in vector_problems(blobs, dim).items():
            r = page[k]
            kind = "image" if r["unit"] in ("image", "both") else "template"
            found.append(
                {
                    "person": r["person"],
                    "person_id": person_id(r["person"]),
                    "kind": kind,
                    "id": r["id"],
                    "ref": r["ref"] or None,
                    "problem": why,
                }
            )
        page.clear()

    for row in rows:
        page.append(row)
        if len(page) >= READ_IDS:
            flush()
    flush()
    return found


def uncommitted(rows: Iterable[dict], owners: Callable[[list[str]], dict]) -> list[str]:
    """Ids of the vector rows whose batch their owner's row does not list (left by writers
    that died before their commit, or by removals cut short). ``owners(names)`` reads the
    person rows (name, batches) of those names."""
    dead: list[str] = []
    pending: list[dict] = []

    def settle() -> None:
        found = owners([r["person"] for r in pending])
        live = {n: {t for t, _ in batches_of(o)} for n, o in found.items()}
        dead.extend(r["id"] for r in pending if r["batch"] not in live.get(r["person"], ()))
        pending.clear()

    for r in rows:
        pending.append(r)
        if len(pending) >= READ_IDS:
            settle()
    settle()
    return dead
