"""Load: 1,000 trivial jobs through the inbox sensor and the Dagster daemon, with the shipped instance config.

A fresh ``DAGSTER_HOME`` holds the shipped ``dagster_home/dagster.yaml`` (queued runs, two at a time, the
per-analysis limit, run monitoring); ``dagster-daemon run`` on the repository's ``workspace.yaml`` serves
the shipped definitions plus the counting analysis (``ANALYSIS_MODULES``), whose every computation is
logged. 1,000 job files are dropped into the inbox at once. Everything must be recorded exactly once:
1,000 records, 1,000 distinct fingerprints, one computation per fingerprint, every job ``done``, the inbox
empty. Wall time (daemon start to last record) and peak memory (the sum of the resident set sizes of the
daemon's process group: daemon, code server, run workers; sampled every 0.25 s) are printed and reported.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from analysis_wrapper.store.base import JobState
from analysis_wrapper.store.sqlite import SqliteStore
from analysis_wrapper_tests.counting_analysis import NAME, read_log
from analysis_wrapper_tests.environment import scrubbed_environ
from analysis_wrapper_tests.faults import report
from analysis_wrapper_tests.harness import write_job

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_INSTANCE_YAML = REPO_ROOT / "dagster_home" / "dagster.yaml"
N_JOBS = int(os.environ.get("FAULT_LOAD_JOBS", "1000"))
"""1,000 (the issue's figure); ``FAULT_LOAD_JOBS`` makes a smaller run for trying the test out."""
TIMEOUT_S = 480.0
"""From the daemon's start to the last record (see the README's Performance section for measured times)."""


def group_rss_bytes(pgid: int) -> int:
    """The summed resident set size of every process in process group ``pgid`` (from /proc)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # fields after the name: state, ppid, pgrp, ...
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
    return total


class PeakMemory(threading.Thread):
    """Samples :func:`group_rss_bytes` until stopped; keeps the peak."""

    def __init__(self, pgid: int, every_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pgid, self.every_s, self.peak = pgid, every_s, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, group_rss_bytes(self.pgid))
            self._stop_event.wait(self.every_s)

    def stop(self) -> int:
        self._stop_event.set()
        self.join(timeout=5)
        return self.peak


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.timeout(660)
def test_a_thousand_jobs_through_the_sensor_and_the_daemon_each_done_exactly_once(
    tmp_path: Path, clean_repo: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(SHIPPED_INSTANCE_YAML, home / "dagster.yaml")
    inbox, staged, inputs = tmp_path / "inbox", tmp_path / "staged", tmp_path / "inputs"
    inbox.mkdir()
    inputs.mkdir()
    for i in range(N_JOBS):
        source = inputs / f"input_{i:04d}.txt"
        source.write_text(f"load input {i}\n")
        write_job(staged, [source], analysis=NAME, sleep_s=0.0)
    log = tmp_path / "computations.log"
    env = scrubbed_environ()
    env.update(
        DAGSTER_HOME=str(home),
        DISPATCH_INBOX=str(inbox),
        RESULTS_ROOT=str(tmp_path / "results"),
        DRY_RUN_ROOT=str(tmp_path / "dry_run"),
        DRY_RUN="0",
        CODE_REPOSITORY=str(clean_repo),
        ANALYSIS_MODULES="analysis_wrapper_tests.counting_analysis",
        COUNTING_LOG=str(log),
        SENSOR_INTERVAL_S="5",
        SENSOR_START_STOPPED="0",
        INBOX_SETTLE_S="0",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    # The dispatcher's way: each file written under a hidden name, then renamed into the inbox.
    for path in staged.glob("*.json"):
        hidden = inbox / f".{path.name}.tmp"
        shutil.copy(path, hidden)
        os.replace(hidden, inbox / path.name)

    daemon_log = tmp_path / "daemon.log"
    began = time.monotonic()
    with daemon_log.open("wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    memory = PeakMemory(proc.pid)
    memory.start()
    store = SqliteStore(home / "analysis_records.sqlite")
    try:
        count = 0
        deadline = began + TIMEOUT_S
        while time.monotonic() < deadline:
            assert proc.poll() is None, daemon_log.read_text(errors="replace")[-4000:]
            with contextlib.suppress(Exception):  # the store file appears with the first tick
                count = len(store.existing_fingerprints(NAME, [e.fingerprint for e in store.list_jobs(NAME)]))
            if count >= N_JOBS:
                break
            time.sleep(1.0)
        wall_s = time.monotonic() - began
        if count == N_JOBS:
            time.sleep(2.0)  # the last run reports its end; nothing more may be computed meanwhile
    finally:
        peak = memory.stop()
        stop_group(proc)
    if count < N_JOBS:  # reported all the same: the table shows how far it got
        report.record(
            "load",
            jobs=N_JOBS,
            done_once=count,
            wall_s=round(wall_s, 1),
            peak_rss_mb=round(peak / 2**20),
            timed_out=True,
        )
        print(f"load: only {count} of {N_JOBS} recorded in {wall_s:.0f} s; peak RSS {peak / 2**20:.0f} MB")
    assert count == N_JOBS, (
        f"{count} of {N_JOBS} recorded in {wall_s:.0f} s\n" + daemon_log.read_text(errors="replace")[-4000:]
    )

    entries = store.list_jobs(NAME)
    records = store.find_records(NAME, include_superseded=True)
    computations = Counter(fp for fp, _pid, _token in read_log(log))
    fingerprints = Counter(r["analysis_wrapper"]["fingerprint"] for r in records)
    done_once = sum(1 for fp, n in fingerprints.items() if n == 1 and computations[fp] == 1)
    report.record(
        "load",
        jobs=N_JOBS,
        done_once=done_once,
        wall_s=round(wall_s, 1),
        jobs_per_s=round(N_JOBS / wall_s, 2),
        peak_rss_mb=round(peak / 2**20),
    )
    print(
        f"load: {N_JOBS} jobs, {done_once} done exactly once, {wall_s:.1f} s from daemon start to the last "
        f"record ({N_JOBS / wall_s:.1f} jobs/s), peak RSS of the daemon's process group {peak / 2**20:.0f} MB"
    )
    store.close()
    assert len(entries) == N_JOBS
    assert Counter(e.state for e in entries) == {JobState.DONE: N_JOBS}
    assert len(records) == N_JOBS and len(fingerprints) == N_JOBS
    assert {e.fingerprint for e in entries} == set(fingerprints)
    assert sum(computations.values()) == N_JOBS and set(computations) == set(fingerprints)
    assert done_once == N_JOBS
    assert not [p for p in inbox.iterdir() if p.suffix == ".json"], "job files left in the inbox"
    assert peak > 0
