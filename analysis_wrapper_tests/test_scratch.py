"""Scratch folders (issue 11, item 10): one known place per host, swept of the folders of killed processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from analysis_wrapper.ownership import this_host
from analysis_wrapper.scratch import (
    ROOT_NAME,
    Owner,
    make_scratch,
    me,
    remove_scratch,
    scratch_folder,
    scratch_root,
    sweep,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
MAKE_AND_WAIT = """
import sys, time
from pathlib import Path
from analysis_wrapper.scratch import make_scratch
path = make_scratch(Path(sys.argv[1]), "held-")
(path / "big.bin").write_bytes(b"x" * 1_000_000)
print(path, flush=True)
time.sleep(120)
"""


def holder(base: Path) -> tuple[subprocess.Popen[str], Path]:
    """A real process that made a scratch folder under ``base`` and keeps running."""
    proc = subprocess.Popen(
        [sys.executable, "-c", MAKE_AND_WAIT, str(base)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_a_scratch_folder_lives_under_its_owner_and_leaves_nothing_when_removed(tmp_path: Path) -> None:
    path = make_scratch(tmp_path, "job-")
    assert path.parent == tmp_path / ROOT_NAME / me().folder_name
    assert path.name.startswith("job-") and path.is_dir()
    assert Owner.parse(path.parent.name) == me()
    (path / "file.txt").write_text("x")
    remove_scratch(path)
    assert list(tmp_path.iterdir()) == []  # its owner folder and the root went with it


def test_a_scratch_folder_taken_with_a_block_goes_when_the_block_ends_however(tmp_path: Path) -> None:
    try:
        with scratch_folder(tmp_path, "job-") as path:
            (path / "file.txt").write_text("x")
            raise ValueError("the analysis failed")
    except ValueError:
        pass
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_the_first_scratch_of_a_process_sweeps_those_of_killed_processes_only(tmp_path: Path) -> None:
    killed, killed_path = holder(tmp_path)
    alive, alive_path = holder(tmp_path)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        root = scratch_root(tmp_path)
        hostname, _, boot = this_host().rpartition("/")
        elsewhere = root / f"{hostname}-other.{boot}.{killed.pid}.1"  # another host's (shared temp folder)
        reused = root / f"{hostname}.{boot}.{os.getpid()}.1"  # our pid, another start time: a reused pid
        unknown = root / "not-ours"
        for folder in (elsewhere, reused, unknown):
            folder.mkdir()
            (folder / "f").write_text("x")
        assert killed_path.is_dir()

        removed = sweep(tmp_path)

        assert sorted(removed) == sorted([killed_path.parent, reused])
        assert not killed_path.parent.exists() and not reused.exists()
        assert (alive_path / "big.bin").is_file()  # a live process's scratch is its own business
        assert elsewhere.is_dir() and unknown.is_dir()
    finally:
        alive.kill()
        alive.wait()
