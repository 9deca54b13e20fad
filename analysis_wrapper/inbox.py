"""The dispatch inbox the sensors watch: a local folder or ``s3://bucket/prefix``.

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
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from analysis_wrapper.job_bytes import (
    DEFAULT_MAX_JOB_FILE_BYTES,
    BadJobFileError,
    describe_mode,
    read_job_bytes,
    too_large,
)
from analysis_wrapper.safe_paths import fit_name

log = logging.getLogger(__name__)

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


def _unique_name(name: str) -> str:
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
        it (see :class:`LocalInbox`); nothing to do where a write replaces a whole object (S3)."""
        return None


class LocalInbox(Inbox):
    """A local folder (created when missing)."""

    local = True

    def __init__(self, root: Path | str, max_bytes: int = DEFAULT_MAX_JOB_FILE_BYTES) -> None:
        self.root = Path(root).absolute()
        self.uri = str(self.root)
        self.listed = 0
        self.reads = 0
        self.rewritten = 0
        self.max_bytes = max_bytes
        self._moved: list[tuple[InboxFile, Path, bytes]] = []

    def _folder(self, folder: str) -> Path:
        return self.root / folder if folder else self.root

    def _blocked_folder(self, folder: str) -> InboxFile | None:
        """An entry that is not a folder where the analysis folder ``folder`` belongs (a file named
        ``isi_violations``, a symlink loop): listed as a bad entry of the top level, so it is moved away."""
        where = self._folder(folder)
        if not folder or where.is_dir() or not os.path.lexists(where):
            return None
        info = where.lstat()
        self.listed += 1
        problem = (
            f"{describe_mode(info.st_mode)} named like the inbox folder of analysis {folder!r}, which must "
            f"be a folder: moved here so that {folder} job files can be dropped into {where}/"
        )
        return InboxFile("", folder, str(where), info.st_mtime, problem=problem)

    def list_files(self, folder: str, limit: int) -> list[InboxFile]:
        blocked = self._blocked_folder(folder)
        if blocked is not None:
            return [blocked]
        where = self._folder(folder)
        found: list[tuple[float, str]] = []
        try:
            with os.scandir(where) as entries:
                for item in entries:
                    self.listed += 1
                    if not is_job_file_name(item.name):
                        continue
                    try:
                        # lstat: a symlink loop or a FIFO is listed too, and refused when read.
                        found.append((item.stat(follow_symlinks=False).st_mtime, item.name))
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            if not folder:
                self.root.mkdir(parents=True, exist_ok=True)
            return []
        found.sort()
        return [InboxFile(folder, name, str(where / name), mtime) for mtime, name in found[:limit]]

    def read(self, file: InboxFile) -> bytes:
        self.reads += 1
        return read_job_bytes(file.uri, self.max_bytes)

    def base_folder(self, file: InboxFile) -> Path:
        return self._folder(file.folder)

    def _free_target(self, folder: Path, name: str) -> Path:
        target = folder / fit_name(name)
        return folder / _unique_name(name) if os.path.lexists(target) else target

    def _make_folder(self, folder: Path) -> None:
        """``folder`` (under the inbox) as a folder: whatever non-folder blocks it is moved aside."""
        for part in [*reversed(folder.relative_to(self.root).parents[:-1]), folder.relative_to(self.root)]:
            path = self.root / part
            if os.path.lexists(path) and not path.is_dir():
                aside = path.with_name(_unique_name(path.name) + ".in-the-way")
                os.replace(path, aside)
                log.warning("inbox: %s is not a folder but must be one: moved it to %s", path, aside)
        folder.mkdir(parents=True, exist_ok=True)

    def registered_uri(self, file: InboxFile, analysis: str) -> str:
        return str(self._free_target(self.root / REGISTERED / analysis, file.name))

    def _move(self, file: InboxFile, target: Path, content: bytes | None = None) -> Path | None:
        self._make_folder(target.parent)
        if os.path.lexists(target):  # taken since we chose it: never overwrite
            target = self._free_target(target.parent, target.name)
        try:
            os.replace(file.uri, target)
        except FileNotFoundError:
            return None
        if content is not None:
            self._keep_as_read(file, target, content)
            self._moved.append((file, target, content))
        return target

    def recheck(self) -> None:
        """A writer whose ``open(path, "w")`` had looked the file up before the move, but truncated it only
        after the check that followed the move (it was descheduled inside the call), writes into the moved
        file later: checked again here, after the whole tick's moves, the same way."""
        moved, self._moved = self._moved, []
        for file, target, content in moved:
            self._keep_as_read(file, target, content)

    def _keep_as_read(self, file: InboxFile, target: Path, content: bytes) -> None:
        """After the move: if ``target`` is not what was read (a writer rewrote the file in place between
        the read and the move), move it back to the inbox for the next tick and write what was read."""
        try:
            now: bytes | None = read_job_bytes(target, len(content))
        except (BadJobFileError, OSError):
            now = None
        if now == content:
            return
        back = self._free_target(Path(file.uri).parent, file.name)
        os.replace(target, back)
        partial = target.with_name(f".partial-{uuid.uuid4().hex}")
        partial.write_bytes(content)
        os.replace(partial, target)
        self.rewritten += 1
        log.warning(
            "inbox: %s changed while it was read: kept as read in %s, new content in %s",
            file.uri,
            target,
            back,
        )

    def accept(self, file: InboxFile, analysis: str, target: str, content: bytes | None = None) -> bool:
        return self._move(file, Path(target), content) is not None

    def route(self, file: InboxFile, analysis: str) -> bool:
        return self._move(file, self._free_target(self.root / analysis, file.name)) is not None

    def reject(self, file: InboxFile, reason: str, who: str, content: bytes | None = None) -> str | None:
        folder = self.root / REJECTED
        self._make_folder(folder)
        target = self._free_target(folder, file.name)
        while os.path.lexists(folder / (target.name + REASON_SUFFIX)):
            target = folder / _unique_name(file.name)
        reason_file = folder / (target.name + REASON_SUFFIX)
        # The reason first: a crash in between leaves a reason without its file, never a lost file.
        reason_file.write_text(reason_text(file, reason, who))
        moved = self._move(file, target, content)
        if moved is None:
            reason_file.unlink(missing_ok=True)
            return None
        if moved != target:  # its name was taken meanwhile: the reason follows the file
            os.replace(reason_file, folder / (moved.name + REASON_SUFFIX))
        return str(moved)


def split_inbox_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (bucket, ``some/prefix``)."""
    text = uri.removeprefix("s3://").strip("/")
    bucket, _, prefix = text.partition("/")
    if not bucket:
        raise ValueError(f"DISPATCH_INBOX {uri!r} names no bucket")
    return bucket, prefix.strip("/")


class S3Inbox(Inbox):
    """``s3://bucket/prefix`` through a boto3 S3 client (``AWS_ENDPOINT_URL`` for local servers)."""

    local = False
    parallelism = 16

    def __init__(self, client: Any, uri: str, max_bytes: int = DEFAULT_MAX_JOB_FILE_BYTES) -> None:
        self.client = client
        self.bucket, self.prefix = split_inbox_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.listed = 0
        self.reads = 0
        self.rewritten = 0
        self.max_bytes = max_bytes
        self._etags: dict[str, str] = {}
        """The ETag of each file as read: its move copies only that version, and removes only that one."""

    def _key(self, *parts: str) -> str:
        return str(PurePosixPath(*(p for p in (self.prefix, *parts) if p)))

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _key_of(self, uri: str) -> str:
        return uri.removeprefix(f"s3://{self.bucket}/")

    def list_files(self, folder: str, limit: int) -> list[InboxFile]:
        prefix = self._key(folder) + "/" if (self.prefix or folder) else ""
        found: list[InboxFile] = []
        paginator = self.client.get_paginator("list_objects_v2")
        # Delimiter "/": the objects under registered/, rejected/ and the analysis folders are not listed.
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/", PaginationConfig={"PageSize": 1000}
        )
        for page in pages:
            self.listed += len(page.get("Contents", [])) + len(page.get("CommonPrefixes", []))
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix) :]
                if is_job_file_name(name):
                    modified = obj["LastModified"].timestamp()
                    found.append(
                        InboxFile(folder, name, self._uri(obj["Key"]), modified, size=obj.get("Size"))
                    )
            if len(found) >= limit:
                break
        found.sort(key=lambda f: (f.modified, f.name))
        return found[:limit]

    def read(self, file: InboxFile) -> bytes:
        if file.size is not None and file.size > self.max_bytes:
            raise BadJobFileError(too_large(file.size, self.max_bytes))  # not even one GET
        self.reads += 1
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key_of(file.uri))
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(file.uri) from None
        body = response["Body"]
        try:
            data = bytes(body.read(self.max_bytes + 1))
        finally:
            body.close()
        if len(data) > self.max_bytes:
            raise BadJobFileError(too_large(int(response.get("ContentLength") or len(data)), self.max_bytes))
        if response.get("ETag"):
            self._etags[file.uri] = response["ETag"]
        return data

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.ClientError:
            return False
        return True

    def _move(self, file: InboxFile, key: str, content: bytes | None = None) -> bool:
        """Copy, then remove the original. With ``content`` (what was read) the copy is a PUT of exactly
        those bytes, and only the version that was read is removed (``IfMatch`` on its ETag): a version
        written meanwhile stays for the next tick. (``CopySourceIfMatch`` would do too, but moto and
        other S3 servers ignore it.)"""
        source = self._key_of(file.uri)
        etag = self._etags.pop(file.uri, None) if content is not None else None
        if content is not None:
            if not self._exists(source):
                return False
            self.client.put_object(Bucket=self.bucket, Key=key, Body=content)
        else:
            try:
                self.client.copy_object(
                    Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": source}
                )
            except self.client.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                    return False
                raise
        try:
            self.client.delete_object(Bucket=self.bucket, Key=source, **({"IfMatch": etag} if etag else {}))
        except self.client.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in {"PreconditionFailed", "412"}:
                self._rewritten(file, key)  # replaced since it was read: the new version stays
            elif code in {"NoSuchKey", "404"}:
                pass  # another sensor moved it meanwhile (its copy holds the same job)
            elif code in {"NotImplemented", "501"} and etag:  # a server without conditional deletes
                self.client.delete_object(Bucket=self.bucket, Key=source)
            else:
                raise
        return True

    def _rewritten(self, file: InboxFile, key: str) -> None:
        self.rewritten += 1
        log.warning("inbox: %s changed while it was read: kept as read in %s", file.uri, self._uri(key))

    def registered_uri(self, file: InboxFile, analysis: str) -> str:
        # uuid names do not collide; a file dropped twice under one name replaces its registered copy
        # (its job is in the registry either way), which saves a request per file.
        return self._uri(self._key(REGISTERED, analysis, fit_name(file.name)))

    def accept(self, file: InboxFile, analysis: str, target: str, content: bytes | None = None) -> bool:
        return self._move(file, self._key_of(target), content)

    def route(self, file: InboxFile, analysis: str) -> bool:
        key = self._key(analysis, fit_name(file.name))
        if self._exists(key):
            key = self._key(analysis, _unique_name(file.name))
        return self._move(file, key)

    def reject(self, file: InboxFile, reason: str, who: str, content: bytes | None = None) -> str | None:
        key = self._key(REJECTED, fit_name(file.name))
        if self._exists(key):
            key = self._key(REJECTED, _unique_name(file.name))
        self.client.put_object(
            Bucket=self.bucket,
            Key=key + REASON_SUFFIX,
            Body=reason_text(file, reason, who).encode("utf-8"),
            ContentType="text/plain; charset=utf-8",
        )
        if not self._move(file, key, content):
            self.client.delete_object(Bucket=self.bucket, Key=key + REASON_SUFFIX)
            return None
        return self._uri(key)


def open_inbox(uri: str, s3_client_factory: Any = None, max_bytes: int = DEFAULT_MAX_JOB_FILE_BYTES) -> Inbox:
    """The inbox for ``DISPATCH_INBOX``: ``s3://…`` through ``s3_client_factory()``, else a local folder.
    Files over ``max_bytes`` (``MAX_JOB_FILE_BYTES``) are rejected unread."""
    if uri.startswith("s3://"):
        if s3_client_factory is None:
            import boto3

            return S3Inbox(boto3.client("s3"), uri, max_bytes)
        return S3Inbox(s3_client_factory(), uri, max_bytes)
    return LocalInbox(Path(uri).expanduser(), max_bytes)
