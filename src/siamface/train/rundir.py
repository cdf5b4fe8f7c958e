"""The run directory: what a run writes where, and what a resume reads back.

``run.json`` (config + data folders + version) and ``config.yaml`` are written once when a run
starts; ``--resume`` reads ``run.json`` to rebuild the same run. Every write is atomic, so a
kill at any moment leaves the previous version of a file, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from siamface.errors import SiamfaceError
from siamface.fileio import atomic_write

RUN_META = "run.json"
LOCK_FILE = ".lock"


class OutputError(SiamfaceError):
    """A run file could not be written (disk full, read-only folder, ...)."""


def write_failed(path: Path, err: OSError, what: str = "") -> OutputError:
    """The message for a failed atomic write: what failed, why, and that the old file stands."""
    why = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        why += " (disk or quota full, or file size limit)"
    kept = f"; the previous {path.name} is intact" if path.exists() else ""
    return OutputError(f"cannot write {what or path.name} to {path}: {why}{kept}")


@contextlib.contextmanager
def writing(path: Path, what: str = "") -> Iterator[None]:
    """Turn a failed write of ``path`` into one clear :class:`OutputError`."""
    from safetensors import SafetensorError

    try:
        yield
    except OSError as err:
        raise write_failed(Path(path), err, what) from err
    except SafetensorError as err:  # safetensors reports I/O errors as its own type
        raise write_failed(Path(path), OSError(str(err)), what) from err


class RunDir:
    """Paths and small JSON/YAML files of one training run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    def create(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"run directory {self.path} is an existing file; pick another --out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(
                f"cannot create run directory {self.path}: {err.strerror or err}"
            ) from err
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise OutputError(f"run directory {self.path} is not writable")

    def atomic(self, name: str, write: Callable[[Path], object], what: str = "") -> None:
        """Write ``name`` atomically; a failure names the file and leaves the old one."""
        with writing(self.path / name, what):
            atomic_write(self.path / name, write)

    def write_json(self, name: str, obj: Any) -> None:
        self.atomic(name, lambda p: p.write_text(json.dumps(obj, indent=1, ensure_ascii=False)))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the run directory while training in it.

        Two processes training into one directory (a second ``--resume`` of a running job)
        would overwrite each other's checkpoints and state. ``flock`` locks are released by
        the kernel when the holder dies, so a ``kill -9`` never leaves a stale lock behind.
        """
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking, as before
            yield
            return
        path = self.path / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise write_failed(path, err, "the run lock") from err
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another"
                raise SiamfaceError(
                    f"{self.path} is in use: process {holder} is training in it. Wait for it "
                    "to finish (or stop it) before resuming; two runs in one directory would "
                    "overwrite each other's checkpoints"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def write_meta(self, config: dict[str, Any], data_dirs: list[str], version: str) -> None:
        """Record what a resume needs to rebuild this run."""
        self.write_json(RUN_META, {"config": config, "data": data_dirs, "siamface": version})
        self.atomic("config.yaml", lambda p: p.write_text(yaml.safe_dump(config, sort_keys=False)))

    def read_meta(self) -> dict[str, Any]:
        meta_path = self.path / RUN_META
        if not meta_path.is_file():
            raise SiamfaceError(f"{self.path} is not a siamface run directory (no {RUN_META})")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise SiamfaceError(f"cannot read {meta_path}: {err}") from err
        if not isinstance(meta, dict) or not {"config", "data"} <= set(meta):
            raise SiamfaceError(f"{meta_path} is damaged: expected 'config' and 'data' entries")
        return meta
