#!/usr/bin/env bash
# Set up (idempotent) and run the checks CI runs: lint, format check, layers, the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/browser-deps.sh
bash scripts/video-deps.sh
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
# The layer order of the data flow (folders -> faces -> tensors -> model -> embed -> scores ->
# decide -> apps), declared in pyproject.toml [tool.importlinter].
.venv/bin/lint-imports
.venv/bin/python -m pytest -q "$@"
