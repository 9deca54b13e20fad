"""The fault suite's table: every section's counts (``report.record``), printed at the end of the session.

The report folder is emptied when a session's tests are collected, so the table shows only what this
session ran (a section that did not run shows "not run", never an old figure).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from analysis_wrapper_tests.faults.report import report_dir

# (section, what is counted, the count keys shown as "a / b", the keys that must be 0)
ROWS: list[tuple[str, str, tuple[str, ...], tuple[str, ...]]] = [
    ("bad_input", "bad inputs tried / handled", ("tried", "handled"), ()),
    ("crashes", "crashes injected / jobs recovered", ("injected", "recovered"), ()),
    ("outages", "outages / jobs recovered", ("injected", "recovered"), ()),
    (
        "races",
        "race trials / duplicates / inconsistent records",
        ("trials", "duplicates", "inconsistent"),
        ("duplicates", "inconsistent"),
    ),
    ("secrets", "files searched / secrets leaked", ("searched", "leaked"), ("leaked",)),
    ("load", "load jobs / done exactly once", ("jobs", "done_once"), ()),
]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Empty the report folder before any test runs (a hook that also runs when this conftest is
    found during collection, as it is when the whole test tree is run)."""
    folder = report_dir()
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)


def read_reports(folder: Path) -> dict[str, dict[str, Any]]:
    """Every section's counts, by section name."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        found[str(data.get("section", path.stem))] = data
    return found


def table(reports: dict[str, dict[str, Any]]) -> list[str]:
    """The fault suite's table as Markdown lines (the README carries it)."""
    lines = ["| fault class | counted | figures | must be 0 |", "| --- | --- | --- | --- |"]
    known = set()
    for section, label, keys, zero in ROWS:
        known.add(section)
        data = reports.get(section)
        if data is None:
            lines.append(f"| {section} | {label} | not run | |")
            continue
        figures = " / ".join(str(data.get(k, "?")) for k in keys)
        extra = {k: v for k, v in data.items() if k not in {*keys, "section"}}
        if extra:
            figures += " (" + ", ".join(f"{k} {v}" for k, v in sorted(extra.items())) + ")"
        check = ", ".join(f"{k} {'ok' if data.get(k) == 0 else 'NOT 0'}" for k in zero)
        lines.append(f"| {section} | {label} | {figures} | {check} |")
    for section, data in sorted(reports.items()):
        if section not in known:
            figures = ", ".join(f"{k} {v}" for k, v in sorted(data.items()) if k != "section")
            lines.append(f"| {section} | | {figures} | |")
    return lines


def pytest_terminal_summary(terminalreporter: Any) -> None:
    reports = read_reports(report_dir())
    if not reports:
        return
    terminalreporter.section("fault suite")
    for line in table(reports):
        terminalreporter.write_line(line)
