"""Reaching a Milvus server: the gallery URL, the client, and which failures are worth retrying.

Every entry point (open, create, state, drop) connects the same way, and the backend's retry
policy reads pymilvus' errors the same way, so both live here.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any
from urllib.parse import urlsplit

from siamface.errors import SiamfaceError

DEFAULT_PORT = 19530
TOKEN_ENV = "SIAMFACE_MILVUS_TOKEN"
#: pauses between retries of a call that failed with a transient error (~16 s in all: a
#: restarting Milvus proxy, a leader election)
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)
COLLECTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")


def parse_spec(spec: str) -> tuple[str, str]:
    """``milvus://HOST:PORT/COLLECTION`` -> (pymilvus URI, collection)."""
    parts = urlsplit(spec)
    scheme = "https" if parts.scheme.lower() == "https" else "http"
    collection = parts.path.strip("/")
    if not parts.hostname or not collection:
        raise SiamfaceError(f"a Milvus gallery is milvus://HOST:PORT/COLLECTION, got {spec!r}")
    if not COLLECTION_NAME.match(collection):
        raise SiamfaceError(
            f"invalid Milvus collection name {collection!r}: letters, digits and underscores, "
            "starting with a letter or underscore"
        )
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise SiamfaceError(f"invalid port in {spec!r}") from None
    return f"{scheme}://{parts.hostname}:{port}", collection


def is_transient(err: BaseException) -> bool:
    """A failure that may pass by itself (server restarting, overloaded): worth a retry."""
    text = str(err).lower()
    code = getattr(err, "code", None)
    name = getattr(code, "name", "") if code is not None and not isinstance(code, int) else ""
    return (
        name in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")
        or "unavailable" in text
        or "fail connecting" in text
        or "deadline exceeded" in text
        or "connection refused" in text
        or "rate limit" in text
    )


def is_not_loaded(err: BaseException) -> bool:
    """The collection was released (by someone, or by a server restart): load it again."""
    text = str(err).lower()
    return "released" in text or "not loaded" in text or "call load()" in text


def connect(spec: object) -> tuple[str, Any, str]:
    """(spec, a pymilvus client, collection) for a gallery URL; a server that does not
    answer yet is tried three times (it may be starting), then reported in one line."""
    if not isinstance(spec, str):
        raise SiamfaceError(f"a Milvus gallery is a URL string, got {spec!r}")
    uri, collection = parse_spec(spec)
    # gRPC's C core logs keepalive renegotiations ("too_many_pings") on stderr
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        from pymilvus import MilvusClient  # lazy: pymilvus is an optional extra
    except ImportError:
        raise SiamfaceError(
            "Milvus galleries need pymilvus: pip install 'siamface[milvus]'"
        ) from None
    if not os.environ.get("SIAMFACE_MILVUS_DEBUG"):
        # pymilvus logs every failed RPC with a traceback; siamface reports (and
        # retries) them itself, in one line
        logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    token = os.environ.get(TOKEN_ENV, "")
    last: BaseException | None = None
    for delay in (*RETRY_DELAYS[:2], None):
        try:
            return spec, MilvusClient(uri=uri, token=token, timeout=10), collection
        except Exception as err:  # pymilvus raises MilvusException, grpc errors, ...
            last = err
            if not is_transient(err) or delay is None:
                break
            time.sleep(delay)
    raise SiamfaceError(
        f"cannot reach the Milvus server at {uri} for gallery {spec} ({short_error(last)}); "
        "is it running and reachable from here?"
    ) from None


def short_error(err: BaseException | None) -> str:
    """pymilvus' message for ``err`` on one line (its errors span many)."""
    text = getattr(err, "message", None) or str(err)
    text = " ".join(str(text).split())
    return text[:300]
