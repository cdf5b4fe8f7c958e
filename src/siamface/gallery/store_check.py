"""The full scan behind ``siamface gallery check`` for a built-in gallery's database.

Reads never use a damaged vector (the store refuses it by its person's name), but a person
must be able to find *every* damaged record at once and repair them, without a search
stumbling over them one by one: this scans images, templates and people in pages and
reports each problem with whose it is. Repair itself is the gallery's (it re-embeds).
"""

from __future__ import annotations

from siamface.gallery.store import Store
from siamface.gallery.vectors import vector_problems


def check_vectors(store: Store, dim: int, chunk: int = 16384) -> list[dict]:
    """Every damaged stored vector: image embeddings and person templates, each with its
    person's name and why (``gallery check``)."""
    found: list[dict] = []
    queries = (
        (
            "image",
            "SELECT i.id, i.embedding, p.id, p.name, i.ref FROM images i "
            "JOIN people p ON p.id = i.person_id WHERE i.id > ? ORDER BY i.id LIMIT ?",
        ),
        (
            "template",
            "SELECT p.id, p.template, p.id, p.name, NULL FROM people p "
            "WHERE p.template IS NOT NULL AND p.id > ? ORDER BY p.id LIMIT ?",
        ),
    )
    for kind, sql in queries:
        last = -1
        while rows := store.conn.execute(sql, (last, chunk)).fetchall():
            for k, why in vector_problems([r[1] for r in rows], dim).items():
                vid, _, pid, name, ref = rows[k]
                found.append(
                    {
                        "person": name,
                        "person_id": pid,
                        "kind": kind,
                        "id": vid,
                        "ref": ref,
                        "problem": why,
                    }
                )
            last = int(rows[-1][0])
    people_without = store.conn.execute(
        "SELECT p.id, p.name FROM people p WHERE NOT EXISTS "
        "(SELECT 1 FROM images i WHERE i.person_id = p.id)"
    ).fetchall()
    for pid, name in people_without:
        found.append(
            {
                "person": name,
                "person_id": pid,
                "kind": "person",
                "id": pid,
                "ref": None,
                "problem": "no images",
            }
        )
    return found
