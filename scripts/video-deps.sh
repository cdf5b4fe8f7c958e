#!/usr/bin/env bash
# Install what the video tests (tests/test_watch.py) need: Debian's ffmpeg (builds the test
# clips, serves them over HTTP) and GStreamer's RTSP server with its Python bindings (a real
# rtsp:// server, run by Debian's python3). Idempotent. Never fails the test run: without them
# the video tests skip and say why, loudly.
set -uo pipefail
PKGS="ffmpeg gir1.2-gst-rtsp-server-1.0 python3-gst-1.0 python3-gi gstreamer1.0-plugins-good gstreamer1.0-plugins-bad"
have_all() {
  command -v ffmpeg >/dev/null 2>&1 && [ -x /usr/bin/python3 ] && /usr/bin/python3 -c \
    "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer" \
    >/dev/null 2>&1
}
if have_all; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "video tests: installing $PKGS (apt-get)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086
  if ! apt-get install -y -q $PKGS >/tmp/siamface-apt-video.log 2>&1; then
    apt-get update -q >>/tmp/siamface-apt-video.log 2>&1
    # shellcheck disable=SC2086
    apt-get install -y -q $PKGS >>/tmp/siamface-apt-video.log 2>&1
  fi
fi
if ! have_all; then
  echo "!!! video tests will be (partly) SKIPPED: ffmpeg and/or GStreamer's RTSP server are not" >&2
  echo "!!! installed and could not be installed here (need root + apt-get; see" >&2
  echo "!!! /tmp/siamface-apt-video.log). Install them with: apt-get install -y $PKGS" >&2
fi
exit 0
