"""Checks on everything that enters a gallery, shared by every backend: names, vectors,
people to enroll, settings (also when read back from a store someone may have edited).

Each check raises :class:`~siamface.errors.SiamfaceError` with a message that names the
value and what to do, before anything is written.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from siamface.decide.open_set import UNKNOWN
from siamface.errors import SiamfaceError
from siamface.gallery.records import NewPerson
from siamface.gallery.thumbnail import check_thumbnail
from siamface.model.validate import check_threshold
from siamface.names import check_person_name

AGGREGATIONS = ("mean", "max")
#: Bounds on a person's metadata: it is stored with them and returned with every match.
MAX_METADATA_BYTES = 64 * 1024
MAX_METADATA_DEPTH = 16
DEFAULT_AGGREGATION = "mean"


class ModelMismatchError(SiamfaceError):
    """Embeddings from a different model than the one the gallery was built with."""


def check_name(name: object) -> str:
    """The name to store (NFC), by the one rule of :mod:`siamface.names`; "unknown" is
    reserved for rejected probes."""
    name = check_person_name(name)
    if name.lower() == UNKNOWN:
        raise SiamfaceError(f"{name!r} is reserved for rejected probes; choose another name")
    return name


class MetadataTooLarge(SiamfaceError):
    """Metadata over the size or depth bound (the REST service answers 422)."""


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """Deepest ``[``/``{`` nesting of JSON text, counted without parsing (a parser recurses,
    and 100,000 opening brackets would exhaust Python's stack before any check ran). Strings
    are skipped by a regular expression, so a body of long base64 strings costs no Python
    loop per character."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_JSON_STRING.sub('""', text)):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_metadata(text: str | None, what: str = "metadata") -> dict:
    """A person's metadata from JSON text: an object, at most :data:`MAX_METADATA_BYTES`
    and :data:`MAX_METADATA_DEPTH` levels deep (the CLI's --metadata and REST's field)."""
    if not text:
        return {}
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_METADATA_BYTES:
        raise MetadataTooLarge(f"{what} is {size} bytes; at most {MAX_METADATA_BYTES} are kept")
    if json_depth(text) > MAX_METADATA_DEPTH:
        raise MetadataTooLarge(f"{what} is nested deeper than {MAX_METADATA_DEPTH} levels")
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise SiamfaceError(f"{what} is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise SiamfaceError(f'{what} must be a JSON object, e.g. {{"team": "ops"}}')
    return meta


def check_metadata(meta: object, name: str) -> dict:
    """Metadata given as Python objects (the API): a JSON-able dict within the same bounds."""
    if not isinstance(meta, dict):
        raise SiamfaceError(f"metadata of {name!r} must be a JSON object")
    stack: list[tuple[object, int]] = [(meta, 1)]
    while stack:  # iterative: a deep structure must not exhaust the stack here either
        obj, depth = stack.pop()
        if isinstance(obj, dict | list | tuple):
            if depth > MAX_METADATA_DEPTH:
                raise MetadataTooLarge(
                    f"metadata of {name!r} is nested deeper than {MAX_METADATA_DEPTH} levels"
                )
            items = obj.values() if isinstance(obj, dict) else obj
            stack.extend((v, depth + 1) for v in items)
    try:
        text = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise SiamfaceError(f"metadata of {name!r} is not JSON-serialisable: {err}") from err
    if len(text.encode()) > MAX_METADATA_BYTES:
        raise MetadataTooLarge(f"metadata of {name!r} is over {MAX_METADATA_BYTES} bytes")
    return dict(meta)


def check_choice(what: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise SiamfaceError(f"unknown {what} {value!r}; choose from {', '.join(choices)}")
    return str(value)


def check_top_k(top_k: object) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise SiamfaceError(f"top_k must be a positive integer, got {top_k!r}")
    return top_k


def unit_vectors(embeddings: np.ndarray, dim: int, what: str, where: str) -> np.ndarray:
    """(n, dim) finite, non-zero float32 rows scaled to unit length (no copy when they are)."""
    try:
        emb = np.asarray(embeddings, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise SiamfaceError(f"{what} embeddings are not a numeric array: {err}") from None
    if emb.ndim == 1:
        emb = emb[None, :]
    if emb.ndim != 2:
        raise SiamfaceError(f"{what} embeddings must be a (n, d) array, got shape {emb.shape}")
    if emb.shape[1] != dim:
        raise ModelMismatchError(
            f"{what} embeddings are {emb.shape[1]}-d but gallery {where} holds {dim}-d embeddings"
        )
    if not np.isfinite(emb).all():
        raise SiamfaceError(f"{what} embeddings contain NaN or infinite values")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if (norms < 1e-6).any():
        raise SiamfaceError(f"{what} embeddings contain an all-zero vector")
    if len(emb) and np.abs(norms - 1.0).max() < 1e-5:
        return emb  # already unit vectors: no copy (bulk imports hold millions)
    return (emb / norms).astype(np.float32)


def checked_person(p: NewPerson, dim: int, where: str) -> NewPerson:
    """A validated copy of ``p`` (unit vectors, string refs, JSON-able metadata, thumbnail)."""
    name = check_name(p.name)
    emb = unit_vectors(p.embeddings, dim, f"enrollment of {name!r}", where)
    if len(emb) == 0:
        raise SiamfaceError(f"no images to enroll for {name!r}")
    for what, seq in (("refs", p.refs), ("digests", p.digests)):
        if len(seq) not in (0, len(emb)):
            raise SiamfaceError(f"{name!r}: {len(seq)} {what} for {len(emb)} embeddings")
    metadata = check_metadata(p.metadata, name)
    refs = [None if r is None else str(r) for r in p.refs]
    digests = [None if d is None else str(d) for d in p.digests]
    thumb = check_thumbnail(p.thumbnail, name)
    return NewPerson(name, emb, refs, digests, metadata, thumb)


# -- settings as stored (a database or collection someone may have edited) -------------------
def _setting_error(where: str, key: str, value: object, expected: str, fix: str) -> SiamfaceError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return SiamfaceError(
        f"gallery {where} has an invalid setting {key!r} = {shown} (expected {expected}); {fix}"
    )


def checked_settings(meta: Mapping[str, object], where: str, index_kinds: Sequence[str]) -> dict:
    """Validate the settings read from a store. Identity fields (fingerprint, size, version)
    cannot be repaired in place (restore a backup): they raise here. A bad tunable one
    (threshold, aggregation, index) is recorded under ``"_invalid"`` with its message: the
    gallery still opens, so that ``siamface gallery set`` (which writes settings without
    reading them) can repair it, while every use of the settings raises that message
    (:func:`usable`)."""
    restore = "the gallery was edited or damaged: restore it from a backup"
    out = dict(meta)
    fp = meta.get("fingerprint")
    if not isinstance(fp, str) or not fp:
        raise _setting_error(where, "fingerprint", fp, "the model fingerprint string", restore)
    size = meta.get("embedding_size")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 65536:
        raise _setting_error(where, "embedding_size", size, "an integer in 1..65536", restore)
    version = meta.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise _setting_error(where, "version", version, "a non-negative integer", restore)
    src = meta.get("model_source")
    if src is not None and not isinstance(src, str):
        raise _setting_error(where, "model_source", src, "a path or null", restore)
    invalid: dict[str, str] = {}
    fix = f"fix it with 'siamface gallery set {where} --{{}}'"

    def bad(key: str, expected: str, option: str, default: object) -> None:
        err = _setting_error(where, key, meta.get(key), expected, fix.format(option))
        invalid[key], out[key] = str(err), default

    try:
        stored = meta.get("threshold")
        out["threshold"] = None if stored is None else check_threshold(stored)
    except SiamfaceError:
        bad(
            "threshold",
            "a cosine similarity in [-1, 1] or null",
            "threshold T' (or --no-threshold)",
            None,
        )
    out.setdefault("aggregation", DEFAULT_AGGREGATION)
    if out["aggregation"] not in AGGREGATIONS:
        bad("aggregation", " or ".join(AGGREGATIONS), "aggregation mean'", DEFAULT_AGGREGATION)
    out.setdefault("index_kind", "auto")
    if out["index_kind"] != "auto" and out["index_kind"] not in index_kinds:
        bad("index_kind", f"auto or one of {', '.join(index_kinds)}", "index auto'", "auto")
    params = meta.get("index_params") or {}
    ok_value = (int, float, str)
    if (
        not isinstance(params, dict)
        or not all(isinstance(v, ok_value) and not isinstance(v, bool) for v in params.values())
        or any(isinstance(v, float) and not math.isfinite(v) for v in params.values())
    ):
        bad("index_params", "an object of numbers", "index auto'", {})
    else:
        out["index_params"] = params
    out["version"] = version
    out["_invalid"] = invalid
    return out


def usable(settings: dict) -> dict:
    """``settings`` if every one is valid, else the clear error of the first bad one."""
    bad = settings.get("_invalid")
    if bad:
        raise SiamfaceError(next(iter(bad.values())))
    return settings
