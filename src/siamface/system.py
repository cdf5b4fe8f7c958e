"""Facts about the machine that sizing decisions need, in one place.

``os.cpu_count()`` reports every core of the host, also inside a container limited to fewer or
a process pinned with ``taskset``; sizing thread pools from it oversubscribes the cores we may
use, and PyTorch's OpenMP threads then spin against each other (measured here: several times
slower). The usable count comes from the scheduler's affinity mask instead.
"""

from __future__ import annotations

import os
from pathlib import Path


def usable_cpus() -> int:
    """Number of CPUs this process may run on (affinity-aware, at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def loader_workers() -> int:
    """Data-loader worker processes that leave the cores to the model: none on one core,
    one on up to four, more on bigger machines."""
    n = usable_cpus()
    if n == 1:
        return 0
    return 1 if n <= 4 else min(6, n - 2)


def cache_root() -> Path:
    """Where siamface keeps derived data that is costly to recompute (aligned faces, teacher
    embeddings, the scan index): ``$SIAMFACE_CACHE``, else ``$XDG_CACHE_HOME/siamface``, else
    ``~/.cache/siamface``. Everything there can be deleted at any time."""
    root = os.environ.get("SIAMFACE_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "siamface"


def cache_dir(kind: str) -> Path:
    """The cache folder for one kind of derived data (see :func:`cache_root`)."""
    return cache_root() / kind
