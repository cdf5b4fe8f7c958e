"""The three collections of a Milvus gallery: names, fields, sizes and index parameters.

What each collection holds and why is in :mod:`siamface.gallery.milvus`; this is its shape
as Milvus needs it spelt out (``VARCHAR`` lengths in bytes, a dummy vector where Milvus
requires one), and the index and search parameters of each index kind.
"""

from __future__ import annotations

from typing import Any

from siamface.names import MAX_NAME

FORMAT = "siamface.gallery.milvus"
FORMAT_VERSION = 1
#: Milvus index types a gallery can use (``set_index_kind``); ``auto`` = flat (exact).
INDEX_TYPES = {"flat": "FLAT", "hnsw": "HNSW", "ivf_flat": "IVF_FLAT"}
DEFAULT_PARAMS = {"hnsw": {"M": 16, "efConstruction": 200}, "ivf_flat": {"nlist": 1024}}
VARCHAR = 65535
NAME_BYTES = 4 * MAX_NAME  # UTF-8
REF_BYTES = 4096
WRITE_ROWS = 2000  # rows per upsert call: ~4 MB at 512-d, far below gRPC's limits
READ_IDS = 1000  # primary keys per get/query call
FLUSH_ROWS = 10_000  # a write this large is flushed (sealed) at once
MAX_LIMIT = 16384  # Milvus' largest top-k
#: Journal row of a creation in progress (deleted when the ``format`` row is written).
CREATING = "creating"
#: Fields that make a collection recognisably siamface's (see ``half_made``).
VECTOR_FIELDS = {"id", "person", "batch", "unit", "ref", "digest", "vector"}
PEOPLE_FIELDS = {"name", "pid", "n_images", "created", "batches", "template", "metadata"}


def collection_names(collection: str) -> tuple[str, str, str]:
    """(vectors, people, meta) collections of the gallery ``collection``."""
    return collection, f"{collection}__people", f"{collection}__meta"


def schemas(dim: int) -> tuple[Any, Any, Any]:
    """Schemas of the (vectors, people, meta) collections for ``dim``-d embeddings."""
    from pymilvus import DataType, MilvusClient  # lazy: pymilvus is an optional extra

    vec = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    vec.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    vec.add_field("person", DataType.VARCHAR, max_length=NAME_BYTES)
    vec.add_field("batch", DataType.VARCHAR, max_length=32)
    vec.add_field("unit", DataType.VARCHAR, max_length=8)
    vec.add_field("ref", DataType.VARCHAR, max_length=REF_BYTES)
    vec.add_field("digest", DataType.VARCHAR, max_length=128)
    vec.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    people = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    people.add_field("name", DataType.VARCHAR, is_primary=True, max_length=NAME_BYTES)
    people.add_field("pid", DataType.INT64)
    people.add_field("n_images", DataType.INT64)
    people.add_field("created", DataType.DOUBLE)
    people.add_field("batches", DataType.VARCHAR, max_length=VARCHAR)
    people.add_field("template", DataType.VARCHAR, max_length=32)
    people.add_field("metadata", DataType.VARCHAR, max_length=VARCHAR)
    people.add_field("thumbnail", DataType.VARCHAR, max_length=VARCHAR)
    people.add_field("dummy", DataType.FLOAT_VECTOR, dim=2)
    meta = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    meta.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
    meta.add_field("value", DataType.VARCHAR, max_length=VARCHAR)
    meta.add_field("dummy", DataType.FLOAT_VECTOR, dim=2)
    return vec, people, meta


def index_params(client: Any, kind: str, params: dict, field: str) -> Any:
    """The server-side index of ``kind`` on ``field`` (search-time keys left out)."""
    kind = "flat" if kind == "auto" else kind
    params = {**DEFAULT_PARAMS.get(kind, {}), **params}
    ip = client.prepare_index_params()
    ip.add_index(
        field_name=field,
        index_type=INDEX_TYPES[kind],
        metric_type="IP",
        params={k: v for k, v in params.items() if k not in ("ef", "nprobe")},
    )
    return ip


def search_params(kind: str, params: dict, top_k: int) -> dict:
    """Search parameters for an index of ``kind``: HNSW's ``ef`` grows with ``top_k``."""
    out: dict = {"metric_type": "IP"}
    if kind == "hnsw":
        out["params"] = {"ef": max(int(params.get("ef", 128)), 4 * top_k)}
    elif kind == "ivf_flat":
        out["params"] = {"nprobe": int(params.get("nprobe", 32))}
    return out
