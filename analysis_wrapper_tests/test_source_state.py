"""The analysis's own source in the code state (issue 19, item 5): an analysis module left untracked
or changed makes the code dirty, and every record carries the digest of the analysis's source files.

The analyses here live in git work trees made in ``tmp_path`` (a team's repository), served through
``ANALYSIS_MODULES`` with their folder on the import path, and run through the real CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from analysis_wrapper.analysis_source import AnalysisSource
from analysis_wrapper.cli import main
from analysis_wrapper.provenance import code_state
from analysis_wrapper.resources.record_store import close_all_stores
from analysis_wrapper_tests.environment import scrub_settings
from analysis_wrapper_tests.harness import write_job
from analysis_wrapper_tests.sample_analyses import size_analysis_source

MODULE = "team_echo_analysis"
ANALYSIS_TEXT = size_analysis_source("team_echo")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.org",
}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **GIT_ENV},
    )
    return done.stdout.strip()


def team_repo(root: Path, files: dict[str, str], commit: list[str]) -> Path:
    """A git work tree at ``root`` holding ``files``, of which those in ``commit`` are committed."""
    root.mkdir(parents=True)
    git(root, "init", "-q")
    (root / "README.md").write_text("a team's analyses\n")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git(root, "add", "README.md", *commit)
    git(root, "commit", "-q", "-m", "first")
    return root


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working folder for the CLI serving ``team_echo`` from ``tmp_path/team`` (not yet made);
    no CODE_REPOSITORY, so the code state is the analysis's own work tree."""
    work, team = tmp_path / "work", tmp_path / "team"
    work.mkdir()
    monkeypatch.chdir(work)
    scrub_settings(monkeypatch)
    monkeypatch.setenv("DRY_RUN", "0")
    monkeypatch.setenv("ANALYSIS_MODULES", MODULE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(team), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(team))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    yield team
    sys.modules.pop(MODULE, None)
    close_all_stores()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    close_all_stores()
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def records(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    code, out = cli(capsys, "results", "--json")
    assert code == 0, out
    return [r["analysis_wrapper"] for r in json.loads(out)]


def a_job(work: Path, name: str) -> Path:
    data = work / f"{name}.bin"
    data.write_bytes(b"x" * 10)
    return write_job(work / "jobs" / name, [data], analysis="team_echo")


def test_a_clean_committed_module_records_its_commit_and_digest(
    served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    team_repo(served, {f"{MODULE}.py": ANALYSIS_TEXT}, commit=[f"{MODULE}.py"])
    code, out = cli(capsys, "run", str(a_job(Path.cwd(), "a")))
    assert code == 0 and "1 done" in out, out
    (record,) = records(capsys)
    assert record["git_dirty"] is False and record["code_state_source"] == "git"
    assert record["git_commit"] == git(served, "rev-parse", "HEAD")
    assert record["source_digest"] == AnalysisSource(served / f"{MODULE}.py").digest()
    assert len(record["source_digest"]) == 64 and int(record["source_digest"], 16) >= 0


def test_an_untracked_module_is_refused_then_recorded_dirty_with_allow_dirty(
    served: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    team_repo(served, {f"{MODULE}.py": ANALYSIS_TEXT}, commit=[])  # the case: never added
    job = a_job(Path.cwd(), "a")
    code, out = cli(capsys, "run", str(job))
    assert code == 2 and "uncommitted changes" in out and "ALLOW_DIRTY=1" in out, out
    assert not (Path.cwd() / "analysis_results").exists()
    monkeypatch.setenv("ALLOW_DIRTY", "1")
    code, out = cli(capsys, "run", str(job))
    assert code == 0 and "1 done" in out, out
    (record,) = records(capsys)
    assert record["git_dirty"] is True
    assert record["source_digest"] == AnalysisSource(served / f"{MODULE}.py").digest()


def test_a_modified_module_is_dirty_and_its_record_has_another_digest(
    served: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    team_repo(served, {f"{MODULE}.py": ANALYSIS_TEXT}, commit=[f"{MODULE}.py"])
    code, out = cli(capsys, "run", str(a_job(Path.cwd(), "a")))
    assert code == 0 and "1 done" in out, out
    (served / f"{MODULE}.py").write_text(ANALYSIS_TEXT + "\n# tuned, not committed\n")
    job = a_job(Path.cwd(), "b")
    code, out = cli(capsys, "run", str(job))
    assert code == 2 and "uncommitted changes" in out, out
    monkeypatch.setenv("ALLOW_DIRTY", "1")
    code, out = cli(capsys, "run", str(job))
    assert code == 0 and "1 done" in out, out
    clean, dirty = sorted(records(capsys), key=lambda r: r["git_dirty"])
    assert (clean["git_dirty"], dirty["git_dirty"]) == (False, True)
    assert clean["git_commit"] == dirty["git_commit"]  # the same commit ...
    assert clean["source_digest"] != dirty["source_digest"]  # ... but visibly not the same code


# ---- code_state directly: a team's package, a wheel, a CODE_REPOSITORY elsewhere ----------------


class _Module:
    """An analysis imported from a file under ``root`` as module ``name``, forgotten afterwards."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path, name: str) -> None:
        monkeypatch.syspath_prepend(str(root))
        for loaded in [
            m for m in sys.modules if m == name.split(".")[0] or m.startswith(name.split(".")[0] + ".")
        ]:
            monkeypatch.delitem(sys.modules, loaded)
        self.analysis = __import__(name, fromlist=["analysis"]).analysis


def test_an_untracked_helper_in_the_analysis_package_makes_it_dirty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {
        "teampkg/__init__.py": "",
        "teampkg/analyses/__init__.py": "",
        "teampkg/analyses/echo.py": ANALYSIS_TEXT,
    }
    repo = team_repo(tmp_path / "repo", files, commit=list(files))
    analysis = _Module(monkeypatch, repo, "teampkg.analyses.echo").analysis
    assert AnalysisSource.of(analysis) == AnalysisSource(repo / "teampkg")
    clean = code_state(None, None, analysis)
    assert (clean.source, clean.dirty, clean.commit) == ("git", False, git(repo, "rev-parse", "HEAD"))
    (repo / "unrelated.txt").write_text("untracked files elsewhere in the tree do not count")
    assert not code_state(None, None, analysis).dirty
    (repo / "teampkg" / "helpers.py").write_text("X = 1\n")
    dirty = code_state(None, None, analysis)
    assert dirty.dirty and dirty.source_digest != clean.source_digest
    (repo / "teampkg" / "helpers.py").unlink()
    (repo / "teampkg" / "__pycache__").mkdir(exist_ok=True)
    (repo / "teampkg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    again = code_state(None, None, analysis)
    assert not again.dirty and again.source_digest == clean.source_digest  # caches are not source


def test_a_module_outside_any_work_tree_is_not_dirty_and_still_has_a_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_repo: Path
) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "wheel_echo.py").write_text(ANALYSIS_TEXT)
    analysis = _Module(monkeypatch, tmp_path / "site", "wheel_echo").analysis
    state = code_state(None, None, analysis)
    assert (state.commit, state.dirty, state.source) == (None, False, "unknown")
    assert state.source_digest == AnalysisSource(tmp_path / "site" / "wheel_echo.py").digest()
    assert code_state(None, "abc1234", analysis).commit == "abc1234"
    # CODE_REPOSITORY names another tree: that tree's state, the digest of the code that ran.
    elsewhere = code_state(clean_repo, None, analysis)
    assert (elsewhere.source, elsewhere.dirty) == ("git", False)
    assert elsewhere.source_digest == state.source_digest


def test_a_package_a_work_tree_ignores_is_outside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package installed into a virtual environment inside a work tree (git-ignored) is not that
    tree's code: not dirty, no commit."""
    repo = team_repo(tmp_path / "repo", {".gitignore": ".venv/\n"}, commit=[".gitignore"])
    site = repo / ".venv" / "site-packages"
    (site / "installed_pkg").mkdir(parents=True)
    (site / "installed_pkg" / "__init__.py").write_text("")
    (site / "installed_pkg" / "echo.py").write_text(ANALYSIS_TEXT)
    analysis = _Module(monkeypatch, site, "installed_pkg.echo").analysis
    state = code_state(None, None, analysis)
    assert (state.commit, state.dirty, state.source) == (None, False, "unknown")
