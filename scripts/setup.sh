#!/usr/bin/env bash
# Create .venv (if needed) and install siamface with its test tools. Idempotent and offline-safe
# once the packages are in pip's cache. Needs only Python >= 3.11 and the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch/torchvision come from the registry's default build (runs on CPU; uses CUDA when present).
.venv/bin/python -m pip install -q -e ".[dev]"
