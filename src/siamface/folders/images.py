"""Decode any image a user is likely to have into 8-bit RGB, or say why it cannot be read.

Real identity folders contain phone photos with EXIF rotation, grayscale scans, PNGs with
alpha, palette GIF-likes, 16-bit TIFF/PNG, PGM files, and the occasional truncated download or
stray ``.txt``. Training must skip those and list them, not crash an hour in.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

#: File suffixes we try to decode when scanning folders (case-insensitive).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".pbm", ".pnm", ".tif", ".tiff", ".webp"}
)

#: Images whose shorter side is below this many pixels hold no usable face (a 1x1 "photo"
#: would otherwise be upscaled, trained on and enrolled as a face); they are skipped and listed.
MIN_IMAGE_SIDE = 16

# Refuse decompression bombs loudly rather than eating all memory, but allow large photos.
Image.MAX_IMAGE_PIXELS = 200_000_000
# Never silently accept half an image: truncated files must be reported.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageLoadError(Exception):
    """An image could not be decoded; ``str(err)`` says why in a few words."""


def is_image_path(path: Path) -> bool:
    """True when the suffix looks like an image we can decode (content is checked later)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def unsupported_reason(path: Path) -> str:
    """Why a file found while scanning is not used, in the words every command reports."""
    suffix = path.suffix.lower()
    kind = f"unsupported file type {suffix!r}" if suffix else "no file type suffix"
    return f"{kind} (images: {', '.join(sorted(IMAGE_SUFFIXES))})"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, scaling 16/32-bit data instead of clipping it."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr = ((arr - lo) * scale).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparent pixels on mid-grey: black or white would be a strong cue.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Open ``path`` as an upright 8-bit RGB image.

    EXIF orientation is applied (phones store portraits sideways). Raises
    :class:`ImageLoadError` for missing, empty, non-image, truncated or corrupt files.
    """
    p = Path(path)
    try:
        if p.stat().st_size == 0:
            raise ImageLoadError("empty file")
    except FileNotFoundError as err:
        if p.is_symlink():
            raise ImageLoadError(f"broken symbolic link (target {os.readlink(p)} missing)") from err
        raise ImageLoadError("file not found") from err
    except OSError as err:  # permission denied, a symlink loop, an I/O error...
        raise ImageLoadError(f"cannot open ({err.strerror or err})") from err
    return _decode(p)


def decode_rgb(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """:func:`load_rgb` for bytes already in memory (HTTP uploads): same checks, same errors.

    ``max_pixels`` lets a server refuse a huge image before decoding it: a small compressed
    upload can expand to gigabytes of pixels.
    """
    if not data:
        raise ImageLoadError("empty file")
    return _decode(io.BytesIO(data), max_pixels)


def _decode(source: Path | io.BytesIO, max_pixels: int | None = None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(source) as img:
                if max_pixels and img.width * img.height > max_pixels:
                    raise ImageLoadError(
                        f"image too large ({img.width}x{img.height} pixels, limit {max_pixels})"
                    )
                if img.width < MIN_IMAGE_SIDE or img.height < MIN_IMAGE_SIDE:
                    raise ImageLoadError(
                        f"image too small ({img.width}x{img.height} pixels; a face needs at "
                        f"least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE})"
                    )
                img.load()
                # Copy only when something changes: a 64-megapixel photo is 192 MB per copy.
                if img.getexif().get(0x0112, 1) not in (0, 1):
                    img = ImageOps.exif_transpose(img)
                return img if img.mode == "RGB" else _to_rgb(img)
    except UnidentifiedImageError as err:
        raise ImageLoadError("not a recognised image format") from err
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"image too large to decode safely ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:
        # PIL reports truncation and corrupt streams as OSError / SyntaxError.
        raise ImageLoadError(f"corrupt or truncated image ({err})") from err


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of the file bytes: the one content key of an image file (byte-identical images
    across a dataset, the face cache's key, distillation targets, gallery duplicates)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resize_uint8(img: Image.Image, size: int) -> np.ndarray:
    """Squash-resize a face crop to ``size``x``size`` and return HWC uint8.

    Face crops are close to square; squashing (as the article does) keeps the whole face,
    where a centre crop could cut the chin or forehead off.
    """
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)
