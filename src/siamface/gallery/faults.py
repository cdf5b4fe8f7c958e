"""Crash-test hook: stop a gallery write at a named point, by exception or by SIGKILL.

Tests set ``SIAMFACE_GALLERY_FAULT=<point>[:kill|:raise]`` to stop exactly there and then
check that nothing half-written is visible (see tests/test_gallery_crash.py). Unset, it costs
one environment lookup per write.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "SIAMFACE_GALLERY_FAULT"


def fault_point(name: str) -> None:
    """Die (``kill``, the default) or raise (``raise``) here if the environment says so."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, how = spec.rpartition(":")
    if point != name:
        return
    if how == "raise":
        raise RuntimeError(f"injected fault at {name}")
    os.kill(os.getpid(), signal.SIGKILL)
