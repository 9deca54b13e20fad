"""The README says what the code does: the transition table, and every private Dagster import."""

from __future__ import annotations

import re
from pathlib import Path

from analysis_wrapper.lifecycle import state_table

REPO_ROOT = Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text()


def test_readme_shows_the_lifecycle_state_table() -> None:
    assert state_table() in README


def test_every_private_dagster_import_is_listed_in_the_readme() -> None:
    private = README[README.index("### Private Dagster APIs") :]
    private = private[: private.index("\n## ")]
    found = []
    for path in sorted((REPO_ROOT / "analysis_wrapper").rglob("*.py")):
        for line in path.read_text().splitlines():
            match = re.search(r"(?:from|import) (dagster\._[\w.]+)", line)
            if match:
                found.append((path.relative_to(REPO_ROOT / "analysis_wrapper").as_posix(), match.group(1)))
    for module_path, name in found:
        assert module_path in private and name in private, f"{module_path} imports {name}: list it and why"
