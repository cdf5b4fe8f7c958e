"""Crash-safe file writing, shared by checkpoints, galleries, reports and exports.

Two promises to the user, kept in one place:

* **Refuse before the work, not after.** :func:`check_output_file` and :func:`check_output_dir`
  prove that an output can be written (the path is not a folder where a file goes or a file
  where a folder goes, the folder is writable, the disk is not full) by actually writing a
  probe there, before a command spends minutes embedding or training. A permission check
  alone would lie to root, on read-only mounts and on full disks.
* **Never half a file.** :func:`atomic_write` writes a temporary file next to the destination
  and renames it over the old one: readers see the old or the new file, a failure (full disk,
  Ctrl-C) keeps the previous file and leaves no temporary file behind, and the error says
  which file and why in one line (:class:`~siamface.errors.OutputError`).

Kept free of heavy imports (no torch) so that the inference-only install (an exported ONNX
model with onnxruntime) can write embeddings, decisions and gallery indexes too.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from siamface.errors import OutputError

_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is larger than this process may write (file size limit)",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "it is a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENAMETOOLONG: "the name is too long",
}


def describe_os_error(err: OSError) -> str:
    """A few words for a failed write: 'the disk is full', 'permission denied', ..."""
    return _REASONS.get(err.errno or -1) or err.strerror or str(err) or type(err).__name__


def output_error(path: Path, err: OSError, what: str = "") -> OutputError:
    """The one-line :class:`OutputError` for a failed write of ``path``."""
    label = f"{what} " if what else ""
    return OutputError(f"cannot write {label}{path}: {describe_os_error(err)}")


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: readers see old or new, never half.

    The temporary file lives in the destination folder so the rename stays on one filesystem.
    Any failure removes it and keeps the previous ``path`` untouched; a failed write (full
    disk, read-only folder, ...) raises :class:`OutputError` naming ``path``.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OutputError:
        raise
    except OSError as err:
        if isinstance(err, FileExistsError) and not path.parent.is_dir():
            err = NotADirectoryError(errno.ENOTDIR, "not a folder", str(path.parent))
        raise output_error(path, err) from err
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe(folder: Path, target: Path, what: str) -> None:
    """Write (and remove) one byte in ``folder``: the only check that tells the truth about
    permissions for root, read-only mounts and full disks alike."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".siamface-probe-", suffix=".tmp", dir=folder)
    except OSError as err:
        raise output_error(target, err, what) from err
    try:
        os.write(fd, b"\0")
        os.fsync(fd)
    except OSError as err:
        raise output_error(target, err, what) from err
    finally:
        os.close(fd)
        Path(probe).unlink(missing_ok=True)


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """Refuse, before any work, an output file that cannot be written: a folder at that path,
    a file where a parent folder should be, a read-only folder or a full disk. Creates
    nothing (missing parent folders are created later, by the write)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    base = _existing_ancestor(path.parent)
    if not base.is_dir():
        raise OutputError(f"cannot write {what} {path}: {base} is a file, not a folder")
    _probe(base, path, what)
    return path


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Refuse, before any work, an output folder that cannot be written: a file at that path
    or above it, a read-only folder or a full disk. Creates nothing."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder; give a folder path")
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise OutputError(f"cannot create {what} {path}: {base} is a file, not a folder")
    _probe(base, path, what)
    return path
