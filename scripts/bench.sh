#!/usr/bin/env bash
# Run the benchmarks: set up .venv (dev tools), the comparison tools, then `python -m benchmarks.run`.
# Usage: bash scripts/bench.sh [--quick] [--only NAME,...] [--profile] [--output PATH] [--keep]
# Tools come from the environment when set: AWSCLI=/path/to/aws S5CMD=/path/to/s5cmd WEED=/path/to/weed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp=".venv/.installed-bench-$(cat benchmarks/requirements.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q -r benchmarks/requirements.txt
  touch "$stamp"
fi
if [ -z "${AWSCLI:-}" ]; then
  # awscli pins its own botocore, which conflicts with boto3's: it gets a venv of its own.
  awsvenv=benchmarks/.cache/venv-awscli
  awsstamp="$awsvenv/.installed-$(sha256sum benchmarks/requirements-awscli.txt | cut -c1-16)"
  if [ ! -f "$awsstamp" ]; then
    python="${PYTHON:-python3.11}"
    command -v "$python" >/dev/null 2>&1 || python=python3
    mkdir -p benchmarks/.cache
    [ -x "$awsvenv/bin/python" ] || "$python" -m venv "$awsvenv"
    if "$awsvenv/bin/pip" install -q -r benchmarks/requirements-awscli.txt; then
      touch "$awsstamp"
    else
      echo "warning: awscli could not be installed; its rows will say 'not installed'" >&2
    fi
  fi
  if [ -x "$awsvenv/bin/aws" ]; then
    export AWSCLI="$PWD/$awsvenv/bin/aws"
  fi
fi
exec .venv/bin/python -m benchmarks.run "$@"
