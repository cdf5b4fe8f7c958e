"""Memory under hostile uploads: 16 concurrent 36-megapixel PNGs (about 105 KB each, 108 MB
each once decoded) sent to a real ``siamface serve`` process. Unbounded, they took the server
from 0.8 to 5 GB and it stayed there; with the pixel budget they are decoded a few at a time,
all are answered, the peak stays bounded and the memory goes back down afterwards."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

MB = 2**20


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process in bytes (Linux)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


@pytest.fixture(scope="module")
def onnx_path(tiny_checkpoint, tmp_path_factory):
    from siamface.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("limits") / "tiny.onnx"
    export_onnx(tiny_checkpoint, out, exporter="torchscript")
    return out


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_sixteen_huge_pngs_at_once_keep_memory_bounded(onnx_path):
    buf = io.BytesIO()
    Image.new("RGB", (6000, 6000), (120, 130, 140)).save(buf, "PNG")
    bomb = buf.getvalue()
    assert len(bomb) < 200_000  # small on the wire, 108 MB decoded

    # generous patience: 16 decodes one after another take 15-35 s on a busy 2-core machine
    cmd = [sys.executable, "-m", "siamface.cli.main", "serve", "--model", str(onnx_path),
           "--port", "0", "--log-level", "warning", "--decode-wait-s", "300"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert " on http://" in line, line + proc.stderr.read()
        url = line.split(" on ")[1].split()[0]
        small = io.BytesIO()
        Image.new("RGB", (120, 120), (1, 2, 3)).save(small, "PNG")
        for _ in range(100):  # up, and warmed up with a normal request
            try:
                r = httpx.post(f"{url}/embed", files={"image": ("s.png", small.getvalue())})
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert r.status_code == 200
        before = proc_status(proc.pid)["VmRSS"]

        async def burst():
            async with httpx.AsyncClient(base_url=url, timeout=120) as ac:
                return await asyncio.gather(
                    *(ac.post("/embed", files={"image": (f"{i}.png", bomb)}) for i in range(16))
                )

        t0 = time.perf_counter()
        responses = asyncio.run(burst())
        seconds = time.perf_counter() - t0
        mem = proc_status(proc.pid)
        limits = httpx.get(f"{url}/health").json()["limits"]
        peak_growth = (mem["VmHWM"] - before) / MB
        after_growth = (mem["VmRSS"] - before) / MB
        print(
            f"16 x 36 MP PNG in {seconds:.1f} s: RSS before {before / MB:.0f} MB, peak "
            f"+{peak_growth:.0f} MB, after +{after_growth:.0f} MB; budget {limits}"
        )
        assert [r.status_code for r in responses] == [200] * 16
        assert limits["peak_pixels_in_flight"] <= limits["max_pixels_in_flight"]
        assert limits["pixels_in_flight"] == 0
        # 16 decoded at once would be 16 x 108 MB = 1.7 GB of pixels alone
        assert peak_growth < 900, f"peak grew by {peak_growth:.0f} MB"
        assert after_growth < 250, f"memory stayed {after_growth:.0f} MB above idle"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
