"""Rows of a Milvus gallery, to and from Python: keys, batch tokens, records, ranked hits.

The consistency rules of :mod:`siamface.gallery.milvus` are spelt out in these rows (a
vector counts only when its owner's row lists its batch token), so building and reading
them is kept together and free of server calls.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Callable

import numpy as np

from siamface.decide.open_set import Candidate
from siamface.errors import SiamfaceError
from siamface.gallery.milvus.half_made import half_made_message
from siamface.gallery.milvus.layout import FORMAT, FORMAT_VERSION, REF_BYTES
from siamface.gallery.records import NewPerson, PersonRecord
from siamface.gallery.vectors import mean_template


def quote(s: str) -> str:
    """A Milvus filter string literal (names may hold quotes and backslashes)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def person_id(name: str) -> int:
    """A stable 63-bit id for a name (the primary key is the name itself)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1


def batch_token(p: NewPerson) -> str:
    """Same person, same images -> same token (and so the same primary keys): retrying an
    enrollment overwrites its own leftovers instead of duplicating them."""
    h = hashlib.sha256(p.name.encode() + b"\0")
    digests = list(p.digests) or [None] * len(p.embeddings)
    for d, e in zip(digests, p.embeddings, strict=True):
        h.update(d.encode() if d else hashlib.sha256(np.asarray(e, "<f4").tobytes()).digest())
    return h.hexdigest()[:24]


def person_rows(
    p: NewPerson, prev: dict | None, now: float, vectors_of: Callable[[dict], np.ndarray]
) -> tuple[list[dict], dict] | None:
    """The vector rows of one enrollment and the person row that commits them, or None when
    these very images are committed already (a retried enrollment). ``prev`` is the
    person's current row (appending: the template is recomputed from ``vectors_of(prev)``
    and the new images; the metadata is merged and the creation time kept)."""
    token = batch_token(p)
    batches = batches_of(prev) if prev else []
    if token in dict(batches):  # the same images again: already committed
        return None
    all_emb = p.embeddings
    if prev:
        all_emb = np.concatenate([vectors_of(prev), p.embeddings])
    tmpl = all_emb[0] if len(all_emb) == 1 else mean_template(all_emb)
    refs = list(p.refs) or [None] * len(p.embeddings)
    digests = list(p.digests) or [None] * len(p.embeddings)
    # a first enrollment of one image is its own template: one row for both
    # units (searches filter on unit != "image" / != "person")
    single = len(all_emb) == 1
    vec_rows = []
    for j, (e, r, d) in enumerate(zip(p.embeddings, refs, digests, strict=True)):
        kind = "both" if single else "image"
        vec_rows.append(vec_row(f"{token}:{j}", p.name, token, kind, e, r, d))
    if not single:
        vec_rows.append(vec_row(f"{token}:t", p.name, token, "person", tmpl, None, None))
    thumb = base64.b64encode(p.thumbnail).decode() if p.thumbnail else ""
    meta = {**json_obj(prev["metadata"]), **p.metadata} if prev else p.metadata
    commit = {
        "name": p.name,
        "pid": person_id(p.name),
        "n_images": len(all_emb),
        "created": float(prev["created"]) if prev else now,
        "batches": json.dumps([*batches, [token, len(p.embeddings)]]),
        "template": token,
        "metadata": json.dumps(meta),
        "thumbnail": thumb,
        "dummy": [0.0, 0.0],
    }
    return vec_rows, commit


def meta_row(key: str, value: object) -> dict:
    """A row of the meta collection (values are JSON)."""
    return {"key": key, "value": json.dumps(value), "dummy": [0.0, 0.0]}


def vec_row(
    rid: str, name: str, token: str, unit: str, v: np.ndarray, ref: str | None, digest: str | None
) -> dict:
    """A row of the vectors collection."""
    ref = (ref or "")[: REF_BYTES // 4]  # provenance only: a very long path is cut
    return {
        "id": rid,
        "person": name,
        "batch": token,
        "unit": unit,
        "ref": ref,
        "digest": digest or "",
        "vector": np.asarray(v, np.float32).tolist(),
    }


def batches_of(row: dict) -> list[tuple[str, int]]:
    """The committed batches a person row lists: [(token, n_images)]."""
    try:
        return [(str(t), int(n)) for t, n in json.loads(row["batches"])]
    except (TypeError, ValueError, KeyError):
        return []


def image_ids(row: dict) -> list[str]:
    """Primary keys of a person's committed image vectors."""
    return [f"{t}:{j}" for t, n in batches_of(row) for j in range(n)]


def json_obj(text: object) -> dict:
    """A stored JSON object; a hand-edited, unreadable one is still listable."""
    try:
        v = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return {"_unreadable": str(text)[:200]}
    return v if isinstance(v, dict) else {"_unreadable": str(text)[:200]}


def to_record(r: dict) -> PersonRecord:
    """The :class:`PersonRecord` of a person row."""
    return PersonRecord(
        int(r["pid"]),
        r["name"],
        int(r["n_images"]),
        json_obj(r["metadata"]),
        float(r["created"]),
    )


def rank_hits(hits: list[dict], owners: dict, unit: str, top_k: int) -> list[Candidate]:
    """Committed hits only (see the module docstring), best score per person."""
    best: dict[str, float] = {}
    live: dict[str, set[str]] = {}
    for h in hits:
        name, token = h["entity"]["person"], h["entity"]["batch"]
        o = owners.get(name)
        if o is None:  # removed, or never committed
            continue
        if name not in live:
            live[name] = {o["template"]} if unit == "person" else {t for t, _ in batches_of(o)}
        if token in live[name] and h["distance"] > best.get(name, -math.inf):
            best[name] = float(h["distance"])
    ranked = sorted(best.items(), key=lambda t: (-t[1], t[0]))[:top_k]
    return [
        Candidate(int(owners[n]["pid"]), n, s, json_obj(owners[n]["metadata"])) for n, s in ranked
    ]


def settings_of(rows: list[dict], location: str) -> dict:
    """The settings in the meta rows of the gallery at ``location``, refusing a half-made
    gallery or one written by a newer siamface. An unreadable tunable setting is kept as
    text (reported, and repairable with ``gallery set``, when used)."""
    meta = {}
    for r in rows:
        try:
            meta[r["key"]] = json.loads(r["value"])
        except (TypeError, ValueError):
            if r["key"] in ("threshold", "aggregation", "index_kind", "index_params"):
                meta[r["key"]] = r["value"]  # reported (and repairable) when used
                continue
            raise SiamfaceError(
                f"gallery {location} has an unreadable setting {r['key']!r} "
                f"= {r['value']!r} (not JSON); restore it or fix it with 'siamface gallery set'"
            ) from None
    if meta.get("format") != FORMAT:
        raise SiamfaceError(half_made_message(location, "no 'format' record: creation interrupted"))
    fv = meta.get("format_version", 0)
    if not isinstance(fv, int) or fv > FORMAT_VERSION:
        raise SiamfaceError(f"{location} was written by a newer siamface (format {fv!r}); upgrade")
    return meta
