"""An analysis's own source files: which they are, their digest, and whether git has them committed.

A record's ``git_commit`` names the code that ran only if the analysis's own files are in that commit,
unchanged. A work tree's tracked changes say nothing about an analysis module nobody added to git, so
the analysis's files are checked on their own, untracked ones included (:meth:`AnalysisSource.changed_in`),
and every record carries a digest of their bytes (:meth:`AnalysisSource.digest`): two records computed
from different uncommitted code differ visibly even when they name the same commit.

The source is the module the analysis's run function is defined in: the module file for an analysis
shipped inside ``analysis_wrapper`` or a module of its own (``my_analysis.py``), the whole top-level
package folder for a module inside a team's package (its helpers are part of the analysis too).
"""

from __future__ import annotations

import hashlib
import importlib
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from analysis_wrapper.analysis import Analysis

_NOT_SOURCE_SUFFIXES = (".pyc", ".pyo")
_NOT_SOURCE_FOLDER = "__pycache__"


def _is_source(relative: str) -> bool:
    """Bytecode caches are written by running the code, so they are not part of it."""
    return _NOT_SOURCE_FOLDER not in relative.split("/") and not relative.endswith(_NOT_SOURCE_SUFFIXES)


def git(folder: Path, *args: str) -> str | None:
    """``git -C folder args``: its output, or None when git fails or is missing."""
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=15, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@dataclass(frozen=True)
class AnalysisSource:
    """The files an analysis's code consists of: one ``root``, a module file or a package folder."""

    root: Path

    @classmethod
    def of(cls, analysis: Analysis[Any, Any]) -> AnalysisSource | None:
        """The source of ``analysis``'s run function (its ``Params`` model's, for a callable with no
        module); None for code that has no file (defined interactively)."""
        name = getattr(analysis.run, "__module__", None) or analysis.params.__module__
        module = importlib.import_module(name)
        file = getattr(module, "__file__", None)
        if not file:
            return None
        path = Path(file).resolve()
        if name == "__main__" or name.startswith("analysis_wrapper.") or "." not in name:
            return cls(path.parent if hasattr(module, "__path__") else path)
        # team.analyses.foo (team/analyses/foo.py) -> team/; a package module's file is its __init__.py.
        depth = name.count(".") + (1 if hasattr(module, "__path__") else 0)
        return cls(path.parents[depth - 1])

    @property
    def folder(self) -> Path:
        """The folder holding the source: where to look for its git work tree."""
        return self.root if self.root.is_dir() else self.root.parent

    def files(self) -> list[tuple[str, Path]]:
        """Each source file with its name relative to the root's parent, sorted by that name."""
        found = [self.root] if self.root.is_file() else [p for p in self.root.rglob("*") if p.is_file()]
        named = ((p.relative_to(self.root.parent).as_posix(), p) for p in found)
        return sorted((name, path) for name, path in named if _is_source(name))

    def digest(self) -> str:
        """Hex sha256 over the sorted relative names and bytes of :meth:`files`."""
        total = hashlib.sha256()
        for name, path in self.files():
            data = path.read_bytes()
            total.update(f"{name}\0{len(data)}\0".encode())
            total.update(data)
        return total.hexdigest()

    def ignored_in(self, top: Path) -> bool:
        """Whether the work tree ``top`` ignores the source (a package installed into a virtual
        environment inside a work tree): then that tree does not hold it."""
        return git(top, "check-ignore", "-q", "--", str(self.root)) is not None

    def changed_in(self, top: Path) -> bool:
        """Whether the work tree ``top`` has the source untracked or changed. A source outside ``top``
        (a ``CODE_REPOSITORY`` that names another tree) is not that tree's to judge: False."""
        if not self.root.is_relative_to(Path(top).resolve()):
            return False
        status = git(top, "status", "--porcelain", "--untracked-files=all", "--", str(self.root))
        return any(_is_source(line[3:].strip('"')) for line in (status or "").splitlines())
