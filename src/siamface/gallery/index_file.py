"""The index file beside a gallery's database: a magic line, a JSON header (version, model,
kind, parameters) and the index's bytes, written atomically so a reader never sees a mix."""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

from siamface.errors import SiamfaceError
from siamface.fileio import atomic_write
from siamface.gallery.index import INDEX_KINDS, VectorIndex

_MAGIC = b"SIAMFACE-GALLERY-INDEX\n"


def write_index_file(path: Path, index: VectorIndex, header: dict) -> None:
    """Save ``index`` with ``header`` (version, model, ...) as one file, atomically: a reader
    sees the previous complete file or the new one, never a mix."""

    head = dict(header, kind=index.kind, dim=index.dim, params=index.params)
    head["trained_on"], head["ntotal"] = index.trained_on, index.ntotal
    raw_head = json.dumps(head).encode()
    chunks = index.chunks()

    def write(tmp: Path) -> None:
        os.chmod(tmp, 0o644)  # as readable as the database beside it
        with open(tmp, "wb") as f:
            f.write(_MAGIC + struct.pack("<Q", len(raw_head)) + raw_head)
            for c in chunks:
                f.write(c)

    atomic_write(path, write)


def read_index_header(path: Path) -> dict | None:
    """The header of an index file, or None if it is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            return _read_head(f)
    except (OSError, ValueError):
        return None


def read_index_file(path: Path) -> tuple[dict, VectorIndex]:
    """Load an index file; raises ValueError/OSError if it is damaged (callers rebuild)."""
    with open(path, "rb") as f:
        head = _read_head(f)
        data = bytearray(os.fstat(f.fileno()).st_size - f.tell())  # writable, read once
        if f.readinto(data) != len(data):
            raise ValueError("index file is truncated")
    kind = head.get("kind")
    if not isinstance(kind, str) or kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}")
    try:
        cls = INDEX_KINDS.get(kind).builder
        dim, params = int(head["dim"]), head.get("params", {})
        trained_on, ntotal = int(head.get("trained_on", 0)), int(head.get("ntotal", -1))
        if not isinstance(params, dict) or dim < 1:
            raise TypeError("bad dim or params")
        index = cls.from_bytes(dim, dict(params), data)
    except ImportError as err:
        raise ValueError(f"cannot load a {kind!r} index: {err}") from err
    except (KeyError, TypeError, ValueError, OverflowError) as err:  # hand-edited header
        raise ValueError(f"damaged index header: {err}") from err
    except (RuntimeError, struct.error, SiamfaceError) as err:  # faiss: RuntimeError
        raise ValueError(f"damaged index data: {err}") from err
    index.trained_on = trained_on
    if index.ntotal != ntotal:
        raise ValueError("index size does not match its header")
    return head, index


def _read_head(f: io.BufferedReader) -> dict:
    if f.read(len(_MAGIC)) != _MAGIC:
        raise ValueError("not a siamface gallery index")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > 1 << 20:
        raise ValueError("index header too large")
    head = json.loads(f.read(n))  # UnicodeDecodeError and JSONDecodeError are ValueErrors
    if not isinstance(head, dict):
        raise ValueError(f"index header is a JSON {type(head).__name__}, not an object")
    return head
