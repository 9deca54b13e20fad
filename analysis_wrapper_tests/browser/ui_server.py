"""A ``dagster dev`` with materialized example jobs, for the browser tests (and for screenshots).

:func:`prepare_instance` writes the example NWB files and job files, copies the shipped instance
config into a fresh ``DAGSTER_HOME`` and records every example job with ``analysis-wrapper run``
(posting: ``DRY_RUN=0``); :class:`UiServer` runs ``dagster dev`` on it, on 127.0.0.1 and a free port,
in its own process group, and stops it with the group.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from analysis_wrapper_tests.environment import scrubbed_environ

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ui_env(root: Path, code_repository: Path) -> dict[str, str]:
    """Settings for everything under ``root``: instance, results, inbox; sensors tick every second."""
    env = scrubbed_environ()
    env.update(
        DAGSTER_HOME=str(root / "home"),
        RESULTS_ROOT=str(root / "results"),
        DRY_RUN_ROOT=str(root / "dry_run"),
        DISPATCH_INBOX=str(root / "inbox"),
        CODE_REPOSITORY=str(code_repository),
        SENSOR_INTERVAL_S="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def prepare_instance(root: Path, code_repository: Path, n_jobs: int = 3) -> dict[str, str]:
    """A DAGSTER_HOME under ``root`` holding ``n_jobs`` recorded example jobs; the environment to use."""
    from analysis_wrapper_tests.harness import load_examples_module

    env = ui_env(root, code_repository)
    home = Path(env["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    (root / "inbox").mkdir(exist_ok=True)
    jobs = load_examples_module().write_examples(root / "examples", n_jobs=n_jobs, seed=3)
    done = subprocess.run(
        [str(BIN / "analysis-wrapper"), "run", *map(str, jobs)],
        cwd=root,
        env={**env, "DRY_RUN": "0"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return env


class UiServer:
    """``dagster dev`` (webserver, daemon, code server) in its own process group."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90) -> None:
        self.launch()
        self.wait(timeout_s)

    def launch(self) -> None:
        """Start ``dagster dev`` without waiting for it (:meth:`wait`)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "dagster"),
                    "dev",
                    "-w",
                    "workspace.yaml",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                ],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait(self, timeout_s: float = 90) -> None:
        """Until the webserver answers (``dagster dev`` failing or silent for ``timeout_s``: an error)."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.proc.returncode}:\n{self.tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/server_info", timeout=2) as answer,
            ):
                if answer.status == 200:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"dagster dev did not answer on {self.url} in {timeout_s:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)
        self.proc = None

    def tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
