"""A real Milvus-protocol server for the tests: milvus-lite's gRPC server in a subprocess.

pymilvus talks to it exactly as to Milvus Standalone or Distributed. It is started once per
test session on 127.0.0.1 and a free port, with its data in a temporary folder, and stopped
at the end. ``--max-workers 1``: milvus-lite's engine is single-writer per collection (its
server module says so), so requests are served one at a time, as a Milvus shard orders its
writes; the clients still run concurrently.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MilvusServer:
    """``with MilvusServer() as srv: srv.uri`` -> ``http://127.0.0.1:PORT``."""

    def __init__(self, data_dir: Path | None = None, startup_s: float = 90.0) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="milvus-lite-"))
        self.startup_s = startup_s
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spec(self, collection: str) -> str:
        return f"milvus://127.0.0.1:{self.port}/{collection}"

    def start(self, port: int | None = None) -> MilvusServer:
        for _ in range(3):  # a free port can be taken between choosing and binding it
            self.port = port or free_port()
            cmd = [
                sys.executable,
                "-m",
                "milvus_lite",
                "server",
                "--data-dir",
                str(self.data_dir / "data"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--max-workers",
                "1",
            ]
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            if self._wait_ready():
                return self
            self.stop()
            if port:
                break
        raise RuntimeError(f"milvus-lite server did not start; log:\n{self.log.read_text()}")

    def _wait_ready(self) -> bool:
        from pymilvus import MilvusClient

        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                try:
                    c = MilvusClient(uri=self.uri, timeout=5)
                    c.list_collections()
                    c.close()
                    return True
                except Exception:  # not serving yet
                    pass
            time.sleep(0.2)
        return False

    def kill(self) -> None:
        """Stop at once (SIGKILL), keeping the data (to test unreachable servers)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.log.unlink(missing_ok=True)

    def __enter__(self) -> MilvusServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
