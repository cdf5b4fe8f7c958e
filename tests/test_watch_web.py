"""The Watch tab in a real browser: ``siamface serve --watch CLIP`` (a real server process)
and Debian's chromium. The clip (tests/video_clips.py) has two enrolled people and one who is
not; the page must show the live MJPEG picture and name the enrolled people in its lists.
Screenshot: ``test-artifacts/web/watch.png``."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest
from conftest import SHARED_DATA
from test_watch import setup  # noqa: F401 - the clip, gallery and actors fixture
from video_clips import have_ffmpeg

pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from test_web_browser import CHROMEDRIVER, CHROMIUM, make_driver, quit_driver, shot  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not (SHARED_DATA / "celeba_wild").is_dir(), reason="no sample data"),
    pytest.mark.skipif(not have_ffmpeg(), reason="!!! ffmpeg missing: run scripts/video-deps.sh"),
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="!!! chromium/chromedriver missing: run scripts/browser-deps.sh",
    ),
]


def start_server(setup, tmp_path) -> tuple[subprocess.Popen, str]:  # noqa: F811
    cmd = [sys.executable, "-m", "siamface", "serve", "--model", "sface",
           "--gallery", str(setup["gallery"]), "--port", "0", "--log-level", "warning",
           "--watch", str(setup["clip"])]  # fmt: skip
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - a file, not a pipe nobody reads
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline()
    assert " on http://127.0.0.1:" in line, line + (tmp_path / "server.log").read_text()
    return proc, line.split(" on ")[1].split()[0]


def test_watch_tab_shows_live_names(setup, tmp_path):  # noqa: F811
    proc, url = start_server(setup, tmp_path)
    driver = make_driver("en-US")
    try:
        # the MJPEG stream: multipart parts with JPEG frames of the clip's size
        with httpx.stream("GET", f"{url}/watch/stream", timeout=20) as r:
            assert r.headers["content-type"].startswith("multipart/x-mixed-replace")
            head = b""
            for chunk in r.iter_bytes():
                head += chunk
                if len(head) > 4096:
                    break
        assert head.startswith(b"--siamfaceframe\r\nContent-Type: image/jpeg")
        driver.get(f"{url}/#watch")
        enrolled = [a.person for a in setup["actors"] if a.enrolled]
        unenrolled = setup["actors"][2].person
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            people = driver.find_element(By.ID, "watch-people").text
            width = driver.execute_script(
                "return document.getElementById('watch-img').naturalWidth"
            )
            ended = "ended" in driver.find_element(By.ID, "watch-state").text
            if all(p in people for p in enrolled) and width and ended:
                break
            time.sleep(0.5)
        path = shot(driver, "watch")
        assert all(p in people for p in enrolled), people
        assert unenrolled not in people
        assert width == 480
        events = driver.find_element(By.ID, "watch-events").text
        assert events.count(" left: seen ") >= 4, events  # A, C, and B twice
        assert path.is_file()
        status = httpx.get(f"{url}/watch/events").json()
        assert status["error"] is None and status["frames"] > 0
    finally:
        quit_driver(driver)
        proc.terminate()
        proc.wait(timeout=30)
