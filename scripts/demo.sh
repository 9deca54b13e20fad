#!/usr/bin/env bash
# Set up, write the example NWB files and AIND job files, and run every example job on the embedded
# defaults (local results folder, SQLite record store), posting results; then run again: all done.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh runtime
.venv/bin/python examples/make_examples.py --out examples
export DRY_RUN="${DRY_RUN:-0}"
echo "== first run: every example job runs and is recorded"
.venv/bin/analysis-wrapper run examples/jobs
echo "== second run: nothing runs again"
.venv/bin/analysis-wrapper run examples/jobs
echo "== records"
.venv/bin/analysis-wrapper results
