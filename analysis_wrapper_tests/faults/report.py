"""Counts the fault suite reports (bad inputs tried / handled, crashes injected / recovered, ...).

Each test section calls :func:`record`; one JSON file per section lands in ``$FAULT_REPORT_DIR``
(default ``analysis_wrapper_tests/faults/.report/``, git-ignored), so whoever prints the suite's table
reads those files and never has to re-run a test to know its numbers.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path(__file__).resolve().parent / ".report"


def report_dir() -> Path:
    return Path(os.environ.get("FAULT_REPORT_DIR") or DEFAULT_DIR)


def record(section: str, **counts: Any) -> Path:
    """Write ``counts`` (JSON values) as ``<section>.json``, replacing that section's last report."""
    folder = report_dir()
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", section) or "section"
    path = folder / f"{name}.json"
    partial = folder / f".{name}.{os.getpid()}.tmp"
    partial.write_text(json.dumps({"section": section, **counts}, indent=2, sort_keys=True) + "\n")
    partial.replace(path)
    return path
