"""The one reader of ``/proc/<pid>/stat`` (see proc(5)): a process's state (a zombie still answers
``kill(pid, 0)``), its process group, and its start time (which tells a reused pid apart). The command
name in parentheses may hold spaces and parentheses itself, so the line is split at its last ``)``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProcStat:
    pid: int
    comm: str
    state: str  # R, S, D, ...; Z a zombie, X/x dead
    ppid: int
    pgrp: int
    start_ticks: int  # field 22: clock ticks since boot

    @property
    def exited(self) -> bool:
        """Ended or killed, though maybe not yet waited for by its parent."""
        return self.state in ("Z", "X", "x")


def parse_stat(text: str) -> ProcStat | None:
    """A ``/proc/<pid>/stat`` line parsed; None when it is not one."""
    head, paren, tail = text.rpartition(")")
    pid, _, comm = head.partition(" (")
    fields = tail.split()
    if not paren or not pid.strip().isdigit() or len(fields) < 20:
        return None
    try:
        return ProcStat(int(pid), comm, fields[0], int(fields[1]), int(fields[2]), int(fields[19]))
    except ValueError:
        return None


def proc_stat(pid: int) -> ProcStat | None:
    """``pid``'s stat on this host; None when it is gone or there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return parse_stat(handle.read())
    except OSError:
        return None
