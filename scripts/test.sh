#!/usr/bin/env bash
# Set up the dev environment, then lint, type-check and run every test. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check analysis_wrapper analysis_wrapper_tests examples benchmarks
.venv/bin/ruff format --check analysis_wrapper analysis_wrapper_tests examples benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest --durations=25 "$@"
