"""A small JPEG of each enrolled person's first face, as the model saw it.

Why store one: a person's name alone is not enough to check an identification by eye (the
service's UI shows it next to a match; an operator confirms "yes, that is Ada"). The face is
the model's own crop (aligned, resized), so it also shows what the model was given. It is
kept small (longest side :data:`THUMBNAIL_SIDE` px, at most :data:`MAX_THUMBNAIL_BYTES`) so
that a million people cost a few GB at most and a gallery row never grows unbounded.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from siamface.errors import SiamfaceError

#: Largest thumbnail a gallery accepts (bytes of JPEG).
MAX_THUMBNAIL_BYTES = 32 * 1024
#: Longest side of the thumbnails siamface makes.
THUMBNAIL_SIDE = 112
_JPEG_MAGIC = b"\xff\xd8\xff"


def make_thumbnail(face: np.ndarray | Image.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """An HWC uint8 face (``Embedder.face_array``) or image -> JPEG bytes, longest side at
    most ``side``, lowering the quality until it fits :data:`MAX_THUMBNAIL_BYTES`."""
    img = face if isinstance(face, Image.Image) else Image.fromarray(np.asarray(face, np.uint8))
    img = img.convert("RGB")
    if max(img.size) > side:
        img.thumbnail((side, side), Image.Resampling.LANCZOS)
    for quality in (85, 70, 50, 30):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality, optimize=True)
        if buf.tell() <= MAX_THUMBNAIL_BYTES:
            return buf.getvalue()
    raise SiamfaceError(f"cannot fit a {img.size} thumbnail in {MAX_THUMBNAIL_BYTES} bytes")


def check_thumbnail(data: object, who: str) -> bytes | None:
    """Validate a thumbnail given for ``who``: None, or JPEG bytes within the size limit."""
    if data is None:
        return None
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SiamfaceError(f"thumbnail of {who!r} must be JPEG bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_THUMBNAIL_BYTES:
        raise SiamfaceError(
            f"thumbnail of {who!r} is {len(data)} bytes; at most {MAX_THUMBNAIL_BYTES} are "
            f"stored (make it with siamface.gallery.thumbnail.make_thumbnail: longest side "
            f"{THUMBNAIL_SIDE} px)"
        )
    if not data.startswith(_JPEG_MAGIC):
        raise SiamfaceError(f"thumbnail of {who!r} is not a JPEG image")
    return data
