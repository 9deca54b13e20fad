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
  # analysis-pipeline-utils: the AIND dispatcher's own model (to write job files exactly as it does) and the
  # capsule's record functions (tests of capsule modules and their records). Its clients (Code Ocean, AIND's
  # DocumentDB API) are installed so its modules import as a capsule's run_capsule.py imports them; its
  # fsspec[s3] (s3fs) is left out: not needed here, and it makes pip backtrack for minutes.
  "$venv/bin/pip" install -q codeocean==0.15.0 aind-data-access-api==1.10.0
  "$venv/bin/pip" install -q --no-deps analysis-pipeline-utils==0.2.8
else
  "$venv/bin/pip" install -q -e .
fi
touch "$stamp"
