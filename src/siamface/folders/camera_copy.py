"""A camera-like copy of photo folders: what a distant, compressed camera makes of each photo.

Fitting a fusion for CCTV (``siamface fuse --data``), or measuring any pipeline on camera-like
faces, needs photos the way a camera delivers them: the *whole photo* at a low resolution and
encoded at that resolution, then detected and aligned by the model's own pipeline. That is
what this copy is, and why it is not a crop-level ``--condition`` (which degrades the aligned
face after a clean detection): here the detector and the landmarks see the degraded photo too,
as on a real camera, and every model (SFace's 112-px crop, dlib's 150-px chip) sees the same
pixels. It is the CCTV-like copy of issue 19 and of ``bench/train_quality.py``: each photo
shrunk ``shrink`` times (area average), JPEG-encoded at ``quality`` at that size, scaled back to
its size (bicubic). No randomness: the same photo always gives the same copy.

The copy keeps every file's relative path and name, so identity folders and LFW-format pairs
files still match it; the pixels are stored losslessly (PNG data, whatever the extension says:
image readers go by content), so the only loss is the camera's.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from siamface.errors import SiamfaceError
from siamface.folders.images import ImageLoadError, is_image_path, load_rgb, unsupported_reason


def camera_photo(img: Image.Image, shrink: float = 4.0, quality: int = 40) -> Image.Image:
    """``img`` as a camera ``shrink`` times farther away, with JPEG ``quality``, sees it."""
    small = img.resize(
        (max(1, int(img.width / shrink)), max(1, int(img.height / shrink))),
        Image.Resampling.BOX,
    )
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as coded:
        return coded.convert("RGB").resize(img.size, Image.Resampling.BICUBIC)


@dataclass
class CameraCopy:
    """What a copy wrote and what it could not read (each with the reason)."""

    source: Path
    out: Path
    shrink: float
    quality: int
    written: int = 0
    unreadable: list[dict] = field(default_factory=list)
    ignored: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "source": str(self.source),
            "out": str(self.out),
            "shrink": self.shrink,
            "jpeg_quality": self.quality,
            "written": self.written,
            "unreadable": self.unreadable,
            "ignored": self.ignored,
        }


def check_camera_args(shrink: float, quality: int) -> None:
    if not 1.0 <= shrink <= 32.0:
        raise SiamfaceError(f"--shrink must be between 1 and 32, got {shrink:g}")
    if not 1 <= quality <= 100:
        raise SiamfaceError(f"--jpeg must be a JPEG quality between 1 and 100, got {quality}")


def camera_copy(
    src: str | Path,
    dst: str | Path,
    shrink: float = 4.0,
    quality: int = 40,
    progress: bool = True,
) -> CameraCopy:
    """Copy every image under ``src`` to the same relative path under ``dst``, as a camera
    sees it (:func:`camera_photo`). ``dst`` must be new or empty and outside ``src``: a copy
    never overwrites photos. Unreadable images are listed and skipped, other files ignored."""
    check_camera_args(shrink, quality)
    src, dst = Path(src).expanduser().resolve(), Path(dst).expanduser().resolve()
    if not src.is_dir():
        raise SiamfaceError(f"{src} is not a folder")
    if dst == src or src in dst.parents:
        raise SiamfaceError(f"the copy {dst} must be outside the photos it copies ({src})")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise SiamfaceError(f"{dst} exists and is not an empty folder: choose a new folder")
    files = sorted(f for f in src.rglob("*") if f.is_file() and not f.name.startswith("."))
    rep = CameraCopy(src, dst, shrink, quality)
    if progress:
        from tqdm import tqdm  # noqa: PLC0415 - only with a progress bar

        files = tqdm(files, desc="camera copy", unit="img")
    for f in files:
        rel = f.relative_to(src)
        if not is_image_path(f):
            rep.ignored.append({"path": str(rel), "reason": unsupported_reason(f)})
            continue
        try:
            img = load_rgb(f)
        except ImageLoadError as err:
            rep.unreadable.append({"path": str(rel), "reason": str(err)})
            continue
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        camera_photo(img, shrink, quality).save(out, "PNG")
        rep.written += 1
    return rep
