"""Scratch folders: where an analysis writes before its results are stored, and who cleans up after a
process that was killed.

A run removes its scratch folder (and the S3 input cache beside it) when the partition ends, whatever
the outcome; a process killed with SIGKILL cannot. So scratch folders live in one known place per host,
``<SCRATCH_ROOT or TMPDIR>/analysis-wrapper-scratch/``, in a folder per process named after its owner
(``<host name>.<boot id>.<pid>.<process start time>``), and the first scratch folder a process makes
sweeps the folders of owners that are gone: same host and boot, and no process with that pid and start
time (the start time tells a reused pid apart). Owners on other hosts (a shared temp folder) are left to
their own host. Empty owner folders and the root are removed, so nothing stays behind after a clean run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from analysis_wrapper.ownership import pid_alive, this_host
from analysis_wrapper.procfs import proc_stat

log = logging.getLogger(__name__)

ROOT_NAME = "analysis-wrapper-scratch"

_swept: set[tuple[int, Path]] = set()
_swept_lock = threading.Lock()


@dataclass(frozen=True)
class Owner:
    """The process a folder of scratch folders belongs to."""

    host: str  # this_host(): host name and boot id
    pid: int
    started: str  # the process's start time in clock ticks since boot ("0": unknown)

    @property
    def folder_name(self) -> str:
        hostname, _, boot = self.host.rpartition("/")
        return f"{hostname}.{boot}.{self.pid}.{self.started}"

    @classmethod
    def parse(cls, name: str) -> Owner | None:
        """The owner of a folder called ``name``; None for a name this module did not make."""
        parts = name.rsplit(".", 3)
        if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
            return None
        hostname, boot, pid, started = parts
        return cls(f"{hostname}/{boot}", int(pid), started)

    def gone(self) -> bool:
        """True when this owner certainly no longer runs (checked on its own host only)."""
        if self.host != this_host():
            return False
        if not pid_alive(self.pid):
            return True
        current = process_start(self.pid)
        return self.started != "0" and current != "0" and current != self.started


def process_start(pid: int) -> str:
    """The start time of ``pid`` (clock ticks since boot, /proc/<pid>/stat field 22); "0" if unknown."""
    stat = proc_stat(pid)
    return str(stat.start_ticks) if stat is not None else "0"


def me() -> Owner:
    return Owner(this_host(), os.getpid(), process_start(os.getpid()))


def scratch_root(base: Path | None = None) -> Path:
    """``<base or the temp folder>/analysis-wrapper-scratch``."""
    return Path(base if base is not None else tempfile.gettempdir()).absolute() / ROOT_NAME


def sweep(base: Path | None = None) -> list[Path]:
    """Remove the scratch of owners that are gone (this host only); returns the folders removed."""
    root = scratch_root(base)
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    removed = []
    for entry in entries:
        owner = Owner.parse(entry.name)
        if owner is None or not owner.gone():
            continue
        size = _size(entry)
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
            log.info(
                "removed the scratch folder %s (%.1f MB) of pid %d, which is gone",
                entry,
                size / 1e6,
                owner.pid,
            )
    _remove_if_empty(root)
    return removed


def make_scratch(base: Path | None, prefix: str) -> Path:
    """A new, empty scratch folder of this process under ``base`` (first sweeping dead owners' ones)."""
    with _swept_lock:
        key = (os.getpid(), scratch_root(base))
        first = key not in _swept
        _swept.add(key)
    if first:
        sweep(base)
    mine = scratch_root(base) / me().folder_name
    for _ in range(5):
        mine.mkdir(parents=True, exist_ok=True)
        try:
            return Path(tempfile.mkdtemp(prefix=prefix, dir=mine))
        except FileNotFoundError:
            continue  # another process removed the empty root between our mkdir and mkdtemp
    raise RuntimeError(f"cannot create a scratch folder in {mine}: it keeps disappearing")


@contextlib.contextmanager
def scratch_folder(base: Path | None, prefix: str) -> Iterator[Path]:
    """A new scratch folder (:func:`make_scratch`) for the block, removed when it ends, however it ends."""
    path = make_scratch(base, prefix)
    try:
        yield path
    finally:
        remove_scratch(path)


def remove_scratch(path: Path) -> None:
    """Remove a scratch folder, then its owner folder and the root if they are empty."""
    shutil.rmtree(path, ignore_errors=True)
    owner = path.parent
    if Owner.parse(owner.name) is not None and owner.parent.name == ROOT_NAME:
        _remove_if_empty(owner)
        _remove_if_empty(owner.parent)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (another run's scratch), or gone already
        folder.rmdir()


def _size(folder: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total
