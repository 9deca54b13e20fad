#!/usr/bin/env bash
# Create ./.venv with everything the project needs, from nothing but Python 3.11.
# Usage: bash scripts/setup.sh [runtime|dev]   (idempotent: re-installs only when pyproject.toml changed)
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:-runtime}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
venv=.venv
stamp="$venv/.installed-$kind-$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ "$kind" = dev ]; then
  "$venv/bin/pip" install -q -e '.[dev]'
  # The AIND dispatcher's own model, to write job files exactly as it does (tests only). Its declared
  # dependencies (Code Ocean client, s3fs) are not needed for that module and make pip backtrack for minutes.
  "$venv/bin/pip" install -q --no-deps analysis-pipeline-utils==0.2.8
else
  "$venv/bin/pip" install -q -e .
fi
touch "$stamp"
