"""Facts about the machine that sizing decisions need, in one place.

``os.cpu_count()`` reports every core of the host, also inside a container limited to fewer or
a process pinned with ``taskset``; sizing thread pools from it oversubscribes the cores we may
use, and PyTorch's OpenMP threads then spin against each other (measured here: several times
slower). The usable count comes from the scheduler's affinity mask instead.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
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


#: glibc's ``mallopt`` parameter numbers (malloc.h) and its defaults for them.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_DEFAULT = 128 * 1024


def _glibc():
    """The C library of this process if it is glibc (the only one whose ``mallopt`` we
    rely on), else None."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextlib.contextmanager
def heap_kept(enabled: bool = True) -> Iterator[bool]:
    """Keep freed memory inside the process while the block runs (glibc only); yields whether
    that is in effect.

    Why: glibc serves every allocation above a (dynamic, at most 32 MB) threshold with a fresh
    ``mmap`` and returns it on free. A CNN training step on the CPU allocates and frees the
    same large activation buffers every step, so each step faults hundreds of MB of zeroed
    pages back in: measured here at 224 px, batch 32 (tf_efficientnetv2_b0, 2 cores) about
    170k page faults and 0.7 s of kernel time per 3.4 s step. With large blocks taken from
    the heap and the heap never trimmed, steps reuse the same pages: 0 faults per step, ~15 %
    less wall time, the same peak memory (the buffers are the same size every step). On leaving
    the block glibc's default threshold values are set again (as fixed values: glibc's own
    raising of the mmap threshold stays off for the rest of the process) and the unused heap is
    returned to the system, so a notebook that trains and then does something else gets its
    memory back. Blocks do not nest: leaving an inner one restores the defaults.
    """
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    import ctypes

    big = ctypes.c_int(2**31 - 1)
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, big)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, big))
    try:
        yield ok
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(_GLIBC_DEFAULT))
        libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(_GLIBC_DEFAULT))
        libc.malloc_trim(ctypes.c_size_t(0))


@contextlib.contextmanager
def frozen_for_fork(enabled: bool = True) -> Iterator[None]:
    """Collect garbage, then keep every existing object away from the cyclic garbage collector
    while worker processes are forked (DataLoader workers start when their loader is iterated),
    and let them back afterwards.

    Why: a forked worker inherits the parent's garbage. When the worker's collector frees an
    object that owns native threads, such as an onnxruntime session left in a reference cycle
    by a model used earlier in the process, its destructor waits on a condition variable whose
    waiters were threads of the parent. Those threads do not exist in the child, so the worker
    and the command waiting for it hang for ever. This was seen in the test suite: an ONNX
    model used, then a PyTorch model embedding with workers. Collecting first frees such
    garbage in the parent, where its threads live. Freezing, the gc module's documented fork
    recipe, keeps the child's collector off everything it inherited, which also spares those
    pages copy-on-write. ``enabled=False`` (no workers to fork) does nothing.
    """
    if not enabled:
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
