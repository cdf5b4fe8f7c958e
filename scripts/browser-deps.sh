#!/usr/bin/env bash
# Install what the browser tests (tests/test_web_browser.py) need: Debian's chromium and
# chromium-driver, plus a small Japanese font so screenshots of the Japanese page are legible.
# Idempotent (nothing to do when they are there). Never fails the test run: without them the
# browser tests skip and say why, loudly.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "browser tests: installing chromium, chromium-driver (apt-get)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q chromium chromium-driver fonts-ipafont-gothic >/tmp/siamface-apt.log 2>&1; then
    apt-get update -q >>/tmp/siamface-apt.log 2>&1
    apt-get install -y -q chromium chromium-driver fonts-ipafont-gothic >>/tmp/siamface-apt.log 2>&1
  fi
fi
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "!!! browser tests will be SKIPPED: chromium/chromium-driver are not installed and could" >&2
  echo "!!! not be installed here (need root + apt-get; see /tmp/siamface-apt.log)." >&2
  echo "!!! Install them with: apt-get install -y chromium chromium-driver" >&2
fi
exit 0
