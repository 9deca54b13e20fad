"""A real ``dagster dev`` (daemon, webserver, code server) for the end-to-end tests, on the one launcher
(:class:`~analysis_wrapper_tests.servers.ServerProcess`): its own process group, so one SIGKILL reaches
daemon, webserver, code server and run workers, and nobody gets to clean up. The ``dagster_dev`` fixture
(``conftest.py``) gives one over a fresh DAGSTER_HOME with the shipped ``dagster_home/dagster.yaml``."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from analysis_wrapper_tests.environment import scrubbed_environ
from analysis_wrapper_tests.servers import ServerProcess, free_port, log_tail

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_INSTANCE_YAML = REPO_ROOT / "dagster_home" / "dagster.yaml"
PHASE_TIMEOUT_S = 100.0


class DagsterDev:
    """``dagster dev`` on 127.0.0.1 and a free port; ``env`` may change between starts."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: ServerProcess | None = None  # while started and not killed
        self.starts = 0

    def start(self) -> None:
        argv = [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml"]
        argv += ["-h", "127.0.0.1", "-p", str(free_port())]
        self.process = ServerProcess("dagster dev", argv, self.log_path, REPO_ROOT, self.env)
        self.process.starts = self.starts
        self.process.spawn()
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL to the whole process group: nobody gets to clean up."""
        if self.process is not None:
            self.process.kill()
            self.process = None

    def tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)


def dagster_dev_env(home: Path, inbox: Path, results: Path, code_repository: Path) -> dict[str, str]:
    """The environment of a ``dagster dev`` over ``home``: nothing of the caller's settings, sensors
    ticking every second."""
    return {
        **scrubbed_environ(),
        "DAGSTER_HOME": str(home),
        "DISPATCH_INBOX": str(inbox),
        "RESULTS_ROOT": str(results),
        "DRY_RUN": "0",
        "CODE_REPOSITORY": str(code_repository),
        "SENSOR_INTERVAL_S": "1",
        "RETRY_DELAY_S": "1",
        "SENSOR_AUDIT_AFTER_S": "2",
        "PYTHONUNBUFFERED": "1",
    }


def drop(files: list[Path], inbox: Path) -> None:
    """As a dispatcher should: write under a hidden name, then rename into place."""
    for path in files:
        hidden = inbox / f".{path.name}.tmp"
        shutil.copy(path, hidden)
        os.replace(hidden, inbox / path.name)


def wait_for(what: str, check: Callable[[], bool], dev: DagsterDev, timeout: float = PHASE_TIMEOUT_S) -> None:
    """Poll ``check`` (every 0.1 s) until true; fail with the log's tail if ``dagster dev`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dev.process is not None and not dev.process.alive:
            pytest.fail(
                f"dagster dev exited with {dev.process.returncode} while waiting for {what}:\n{dev.tail()}"
            )
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; dagster dev log:\n{dev.tail()}")
