"""A ``dagster dev`` with materialized example jobs, for the browser tests (and for screenshots).

:func:`prepare_instance` writes the example NWB files and job files, copies the shipped instance
config into a fresh ``DAGSTER_HOME`` and records every example job with ``analysis-wrapper run``
(posting: ``DRY_RUN=0``); :class:`UiServer` runs ``dagster dev`` on it, on 127.0.0.1 and a free port,
in its own process group, and stops it with the group.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from analysis_wrapper_tests.environment import scrubbed_environ
from analysis_wrapper_tests.servers import ServerProcess, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


BACKFILL_PARTITIONS_PER_RUN = 4
"""Small, so the browser's backfill of a few partitions still takes more than one run (ranges)."""


def ui_env(root: Path, code_repository: Path) -> dict[str, str]:
    """Settings for everything under ``root``: instance, results, inbox; sensors tick every second;
    posting (``DRY_RUN=0``: a backfill from the UI records its new partitions)."""
    env = scrubbed_environ()
    env.update(
        DAGSTER_HOME=str(root / "home"),
        DRY_RUN="0",
        BACKFILL_PARTITIONS_PER_RUN=str(BACKFILL_PARTITIONS_PER_RUN),
        RESULTS_ROOT=str(root / "results"),
        DRY_RUN_ROOT=str(root / "dry_run"),
        DISPATCH_INBOX=str(root / "inbox"),
        CODE_REPOSITORY=str(code_repository),
        SENSOR_INTERVAL_S="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def prepare_instance(root: Path, code_repository: Path, n_jobs: int = 3) -> dict[str, str]:
    """A DAGSTER_HOME under ``root`` holding ``n_jobs`` recorded example jobs and their summary, made
    the demo's way; the environment to use."""
    from analysis_wrapper_tests.harness import load_examples_module

    env = ui_env(root, code_repository)
    home = Path(env["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    (root / "inbox").mkdir(exist_ok=True)
    jobs = load_examples_module().write_examples(root / "examples", n_jobs=n_jobs, seed=3)
    assert {path.parent for path in jobs} == {root / "examples" / "jobs"}
    done = subprocess.run(
        [str(BIN / "analysis-wrapper"), "run", "--summary", "examples/jobs"],  # as scripts/demo.sh
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return env


class UiServer:
    """``dagster dev`` (webserver, daemon, code server) in its own process group (the one launcher)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)]
        self.process = ServerProcess("dagster dev", argv, log_path, cwd=REPO_ROOT, env=env)

    def start(self, timeout_s: float = 90) -> None:
        self.launch()
        self.wait(timeout_s)

    def launch(self) -> None:
        """Start ``dagster dev`` without waiting for it (:meth:`wait`)."""
        self.process.spawn()

    def wait(self, timeout_s: float = 90) -> None:
        """Until the webserver answers (``dagster dev`` failing or silent for ``timeout_s``: ServerError)."""
        self.process.wait_ready(self._answers, time.monotonic() + timeout_s, every_s=0.5)

    def _answers(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/server_info", timeout=2) as answer:
            return bool(answer.status == 200)

    def stop(self) -> None:
        self.process.stop(20)

    def tail(self, lines: int = 60) -> str:
        return self.process.tail(lines)
