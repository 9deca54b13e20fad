"""What every dispatch inbox is: its layout, the files in it and the moves a sensor makes.

Layout (the same on disk and in S3)::

    <inbox>/*.json                   new jobs, each going to the analysis its job names
                                     (``analysis_code.parameters.analysis_name``)
    <inbox>/<analysis>/*.json        new jobs for that analysis
    <inbox>/registered/<analysis>/   files whose job is registered (moved here by the sensor)
    <inbox>/rejected/                files that cannot be used, each with ``<name>.reason.txt``

A file leaves the places new jobs are dropped in as soon as a sensor has dealt with it: its job is
registered (file moved to ``registered/``), or the file is rejected (moved to ``rejected/``), or it is
handed to another analysis's folder. So listing the drop folders costs what is *new*, whatever the
inbox has seen before, for any file names in any order (the AIND dispatcher names files by uuid4):
no high-water mark on modification times, which ``mv``/``cp -p`` preserve and S3 cannot list by.
Nothing is ever deleted: on S3 a move is a copy, then the removal of the original.

Whatever sits in the inbox, a tick goes on (see README, *Bad input*): an entry that can never be a job
(too large, a directory, a FIFO, a symlink loop, a file where an analysis folder belongs) goes to
``rejected/`` with its reason, unread; long names are shortened on the way (:func:`fit_name`), so the
reason file always fits; and a file rewritten between its read and its move is detected (content on
disk, ETag on S3): the copy kept under ``registered/``/``rejected/`` is exactly what was read, and the
newer content stays in the inbox for the next tick.
"""

from __future__ import annotations

import abc
import datetime as dt
import uuid
from dataclasses import dataclass
from pathlib import Path

from analysis_wrapper.job_bytes import DEFAULT_MAX_JOB_FILE_BYTES
from analysis_wrapper.safe_paths import fit_name

REGISTERED = "registered"
REJECTED = "rejected"
RESERVED_FOLDERS = frozenset({REGISTERED, REJECTED})
REASON_SUFFIX = ".reason.txt"


@dataclass(frozen=True)
class InboxFile:
    """One job file waiting in the inbox."""

    folder: str
    """``""`` for the top level of the inbox, else the analysis subfolder it was dropped in."""
    name: str
    uri: str
    modified: float
    """Modification (local) or upload (S3) time, seconds since the epoch."""
    size: int | None = None
    """Size in bytes as listed (S3); None where the read checks it (local)."""
    problem: str | None = None
    """Why this entry can never be a job, known from the listing alone (rejected unread)."""


def is_job_file_name(name: str) -> bool:
    """``*.json``, not hidden: a dispatcher writing ``.name.json.tmp`` and renaming is never half-read."""
    return name.endswith(".json") and not name.startswith(".")


def unique_name(name: str) -> str:
    name = fit_name(name)
    stem, dot, suffix = name.rpartition(".")
    stamp = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    return f"{stem}.{stamp}.{suffix}" if dot else f"{name}.{stamp}"


def reason_text(file: InboxFile, reason: str, who: str) -> str:
    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return f"{reason}\n\nfile: {file.uri}\nrejected: {when} by {who}\n"


class Inbox(abc.ABC):
    """Where job files arrive. ``listed`` counts the entries listings returned and ``reads`` the files
    read, for tests and benchmarks: both follow what is new, not what the inbox has seen."""

    uri: str
    local: bool
    parallelism: int = 1
    listed: int = 0
    reads: int = 0
    rewritten: int = 0
    """Files found rewritten between their read and their move (kept as read; the new content waits)."""
    max_bytes: int = DEFAULT_MAX_JOB_FILE_BYTES

    @abc.abstractmethod
    def list_files(self, folder: str, limit: int) -> list[InboxFile]:
        """Up to ``limit`` job files directly in ``folder`` (``""``: the top level), oldest first where
        the storage can tell (local folders; S3 lists by name)."""

    @abc.abstractmethod
    def read(self, file: InboxFile) -> bytes:
        """The file's content (at most :attr:`max_bytes`); :class:`FileNotFoundError` when another sensor
        took it meanwhile, :class:`~analysis_wrapper.job_bytes.BadJobFileError` when it can never be a job."""

    @abc.abstractmethod
    def registered_uri(self, file: InboxFile, analysis: str) -> str:
        """Where :meth:`accept` will put the file (recorded as the job's source)."""

    @abc.abstractmethod
    def accept(self, file: InboxFile, analysis: str, target: str, content: bytes | None = None) -> bool:
        """Move a registered job's file to ``target`` (from :meth:`registered_uri`); False if gone.
        With ``content`` (what was read and registered), ``target`` ends up holding exactly that even
        when the file was rewritten meanwhile; the rewritten file stays in the inbox."""

    @abc.abstractmethod
    def route(self, file: InboxFile, analysis: str) -> bool:
        """Hand a top-level file to ``<inbox>/<analysis>/``; False if it was gone."""

    @abc.abstractmethod
    def reject(self, file: InboxFile, reason: str, who: str, content: bytes | None = None) -> str | None:
        """Move a bad file to ``rejected/`` with a reason file beside it; its new URI (None if gone).
        ``content`` as for :meth:`accept`."""

    def base_folder(self, file: InboxFile) -> Path:
        """The folder relative input paths in a job are taken from."""
        return Path.cwd()

    def recheck(self) -> None:
        """At the end of a tick's moves: check once more that every file moved with ``content`` still holds
        it (see :class:`~analysis_wrapper.inbox.local.LocalInbox`); nothing to do where a write replaces
        a whole object (S3)."""
        return None
