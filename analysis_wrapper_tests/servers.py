"""The one launcher of the tests' servers: SecantusDB, PostgreSQL, SeaweedFS, moto, ``dagster dev``.

A :class:`ServerProcess` runs one command in a process group of its own (so one signal reaches the server
and every child it forks), its output appended to a log file with a banner per start; ``start(probe)``
waits until ``probe()`` answers true and fails with the log's tail when the process exits first or the
timeout passes; ``stop()`` is SIGTERM then SIGKILL, ``kill()`` is SIGKILL (a crash). With ``host`` (see
:mod:`analysis_wrapper_tests.hosts`) the command runs on that simulated machine: in its network
namespace, under its host name. The servers' modules only add what is theirs: the command line, the
probe, how they are reached.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from signal import SIGCONT, SIGKILL, SIGTERM
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from analysis_wrapper_tests.hosts import Host

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


class ServerError(RuntimeError):
    """A test server did not start (it exited, or never answered its probe); the message holds its log."""


def free_port(address: str = LOOPBACK) -> int:
    """A port nobody listens on at ``address`` just now (the server may still lose it to a race)."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def free_port_pair(address: str = LOOPBACK, offset: int = 10000) -> int:
    """A free port ``p`` with ``p + offset`` free too (weed's admin worker dials admin port + 10000)."""
    for _ in range(200):
        port = free_port(address)
        if port + offset > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((address, port + offset))
            except OSError:
                continue
        return port
    raise ServerError("no free port pair found")


def log_tail(path: Path | None, lines: int = 40) -> str:
    """The last ``lines`` lines of a server's log, for failure messages."""
    if path is None:
        return "(no log: external server)"
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def live_group_members(pgid: int) -> list[str]:
    """The processes of group ``pgid`` that are not zombies (pid, state and command line, from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # state, ppid, pgrp, ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(f"{entry.name} ({fields[0]}): {cmdline[:200]}")
    return found


@dataclass
class ServerProcess:
    """One server process of the tests; see the module docstring."""

    name: str
    argv: Sequence[str]
    log_path: Path
    cwd: Path | None = None
    env: Mapping[str, str] | None = None
    host: Host | None = None
    user: str | None = None  # run as this account (root only: PostgreSQL refuses to run as root)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    starts: int = 0
    startup_s: float | None = None  # seconds from spawn to the first true probe (last start)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def spawn(self) -> ServerProcess:
        """Start the command (again, after a kill) without waiting for it."""
        if self.alive:
            raise ServerError(f"{self.name} is already running (pid {self.proc.pid})")  # type: ignore[union-attr]
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = list(self.argv) if self.host is None else self.host.wrap(self.argv)
        account: dict[str, Any] = {}  # as another user: its primary group, no supplementary groups
        if self.user is not None:
            account = {"user": self.user, "group": pwd.getpwnam(self.user).pw_gid, "extra_groups": []}
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts}: {shlex.join(self.argv)} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv,
                cwd=self.cwd,
                env=None if self.env is None else dict(self.env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **account,
            )
        return self

    def start(
        self,
        probe: Callable[[], bool] | None = None,
        timeout_s: float = START_TIMEOUT_S,
        every_s: float = 0.05,
    ) -> ServerProcess:
        """Spawn, then wait until ``probe()`` is true (an exception counts as "not yet")."""
        began = time.monotonic()
        self.spawn()
        if probe is not None:
            self.wait_ready(probe, began + timeout_s, every_s)
        self.startup_s = time.monotonic() - began
        return self

    def wait_ready(self, probe: Callable[[], bool], deadline: float, every_s: float = 0.05) -> None:
        """Poll ``probe`` until true; ServerError with the log's tail if the process ends or time runs out
        (the process is killed then)."""
        last_error: Exception | None = None
        while True:
            if not self.alive:
                raise ServerError(
                    f"{self.name} exited with code {self.returncode} before it was ready:\n"
                    f"{shlex.join(self.argv)}\n{self.tail()}"
                )
            try:
                if probe():
                    return
            except Exception as exc:  # not up yet: refused, 503 while starting, ...
                last_error = exc
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError(
                    f"{self.name} was not ready in time (last error: {last_error}):\n"
                    f"{shlex.join(self.argv)}\n{self.tail()}"
                )
            time.sleep(every_s)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the whole process group."""
        assert self.proc is not None and self.proc.poll() is None, f"{self.name} is not running"
        os.killpg(self.proc.pid, sig)

    def kill(self, require_group_gone: bool = False) -> None:
        """SIGKILL to the whole group (SIGCONT first: a frozen process dies only once continued); nobody
        cleans up. ``require_group_gone``: also wait (10 s at most) until no process of the group lives,
        AssertionError naming those that do."""
        if self.proc is None:
            return
        for sig in (SIGCONT, SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
        self.proc.wait(timeout=30)
        if require_group_gone:
            deadline = time.monotonic() + 10
            while (left := live_group_members(self.proc.pid)) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not left, f"SIGKILL to process group {self.proc.pid} left live processes: {left}"

    def stop(
        self, timeout_s: float = STOP_TIMEOUT_S, require_group_gone: bool = False, sig: int = SIGTERM
    ) -> None:
        """``sig`` to the group, wait ``timeout_s``, then SIGKILL to whatever of the group is left."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)  # type: ignore[union-attr]
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout_s)  # type: ignore[union-attr]
        self.kill(require_group_gone)
