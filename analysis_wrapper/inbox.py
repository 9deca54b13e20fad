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
"""

from __future__ import annotations

import abc
import datetime as dt
import os
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

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


def is_job_file_name(name: str) -> bool:
    """``*.json``, not hidden: a dispatcher writing ``.name.json.tmp`` and renaming is never half-read."""
    return name.endswith(".json") and not name.startswith(".")


def _unique_name(name: str) -> str:
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

    @abc.abstractmethod
    def list_files(self, folder: str, limit: int) -> list[InboxFile]:
        """Up to ``limit`` job files directly in ``folder`` (``""``: the top level), oldest first where
        the storage can tell (local folders; S3 lists by name)."""

    @abc.abstractmethod
    def read(self, file: InboxFile) -> bytes:
        """The file's content; :class:`FileNotFoundError` when another sensor took it meanwhile."""

    @abc.abstractmethod
    def registered_uri(self, file: InboxFile, analysis: str) -> str:
        """Where :meth:`accept` will put the file (recorded as the job's source)."""

    @abc.abstractmethod
    def accept(self, file: InboxFile, analysis: str, target: str) -> bool:
        """Move a registered job's file to ``target`` (from :meth:`registered_uri`); False if gone."""

    @abc.abstractmethod
    def route(self, file: InboxFile, analysis: str) -> bool:
        """Hand a top-level file to ``<inbox>/<analysis>/``; False if it was gone."""

    @abc.abstractmethod
    def reject(self, file: InboxFile, reason: str, who: str) -> str | None:
        """Move a bad file to ``rejected/`` with a reason file beside it; its new URI (None if gone)."""

    def base_folder(self, file: InboxFile) -> Path:
        """The folder relative input paths in a job are taken from."""
        return Path.cwd()


class LocalInbox(Inbox):
    """A local folder (created when missing)."""

    local = True

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()
        self.uri = str(self.root)
        self.listed = 0
        self.reads = 0

    def _folder(self, folder: str) -> Path:
        return self.root / folder if folder else self.root

    def list_files(self, folder: str, limit: int) -> list[InboxFile]:
        where = self._folder(folder)
        found: list[tuple[float, str]] = []
        try:
            with os.scandir(where) as entries:
                for item in entries:
                    self.listed += 1
                    if not is_job_file_name(item.name):
                        continue
                    try:
                        if item.is_file():
                            found.append((item.stat().st_mtime, item.name))
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
        return Path(file.uri).read_bytes()

    def base_folder(self, file: InboxFile) -> Path:
        return self._folder(file.folder)

    def _free_target(self, folder: Path, name: str) -> Path:
        target = folder / name
        return folder / _unique_name(name) if target.exists() else target

    def registered_uri(self, file: InboxFile, analysis: str) -> str:
        return str(self._free_target(self.root / REGISTERED / analysis, file.name))

    def _move(self, file: InboxFile, target: Path) -> bool:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # taken since we chose it: never overwrite
            target = self._free_target(target.parent, target.name)
        try:
            os.replace(file.uri, target)
        except FileNotFoundError:
            return False
        return True

    def accept(self, file: InboxFile, analysis: str, target: str) -> bool:
        return self._move(file, Path(target))

    def route(self, file: InboxFile, analysis: str) -> bool:
        return self._move(file, self._free_target(self.root / analysis, file.name))

    def reject(self, file: InboxFile, reason: str, who: str) -> str | None:
        folder = self.root / REJECTED
        folder.mkdir(parents=True, exist_ok=True)
        target = self._free_target(folder, file.name)
        while (folder / (target.name + REASON_SUFFIX)).exists():
            target = folder / _unique_name(file.name)
        # The reason first: a crash in between leaves a reason without its file, never a lost file.
        (folder / (target.name + REASON_SUFFIX)).write_text(reason_text(file, reason, who))
        if not self._move(file, target):
            (folder / (target.name + REASON_SUFFIX)).unlink(missing_ok=True)
            return None
        return str(target)


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

    def __init__(self, client: Any, uri: str) -> None:
        self.client = client
        self.bucket, self.prefix = split_inbox_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.listed = 0
        self.reads = 0

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
                    found.append(InboxFile(folder, name, self._uri(obj["Key"]), modified))
            if len(found) >= limit:
                break
        found.sort(key=lambda f: (f.modified, f.name))
        return found[:limit]

    def read(self, file: InboxFile) -> bytes:
        self.reads += 1
        try:
            return bytes(
                self.client.get_object(Bucket=self.bucket, Key=self._key_of(file.uri))["Body"].read()
            )
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(file.uri) from None

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.ClientError:
            return False
        return True

    def _move(self, file: InboxFile, key: str) -> bool:
        source = self._key_of(file.uri)
        try:
            self.client.copy_object(
                Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": source}
            )
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                return False
            raise
        self.client.delete_object(Bucket=self.bucket, Key=source)
        return True

    def registered_uri(self, file: InboxFile, analysis: str) -> str:
        # uuid names do not collide; a file dropped twice under one name replaces its registered copy
        # (its job is in the registry either way), which saves a request per file.
        return self._uri(self._key(REGISTERED, analysis, file.name))

    def accept(self, file: InboxFile, analysis: str, target: str) -> bool:
        return self._move(file, self._key_of(target))

    def route(self, file: InboxFile, analysis: str) -> bool:
        key = self._key(analysis, file.name)
        if self._exists(key):
            key = self._key(analysis, _unique_name(file.name))
        return self._move(file, key)

    def reject(self, file: InboxFile, reason: str, who: str) -> str | None:
        key = self._key(REJECTED, file.name)
        if self._exists(key):
            key = self._key(REJECTED, _unique_name(file.name))
        self.client.put_object(
            Bucket=self.bucket,
            Key=key + REASON_SUFFIX,
            Body=reason_text(file, reason, who).encode("utf-8"),
            ContentType="text/plain; charset=utf-8",
        )
        if not self._move(file, key):
            self.client.delete_object(Bucket=self.bucket, Key=key + REASON_SUFFIX)
            return None
        return self._uri(key)


def open_inbox(uri: str, s3_client_factory: Any = None) -> Inbox:
    """The inbox for ``DISPATCH_INBOX``: ``s3://…`` through ``s3_client_factory()``, else a local folder."""
    if uri.startswith("s3://"):
        if s3_client_factory is None:
            import boto3

            return S3Inbox(boto3.client("s3"), uri)
        return S3Inbox(s3_client_factory(), uri)
    return LocalInbox(Path(uri).expanduser())
