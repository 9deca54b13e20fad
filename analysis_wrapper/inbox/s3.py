"""The dispatch inbox under ``s3://bucket/prefix``: a move is a copy, then the removal of the original."""

from __future__ import annotations

import logging
from typing import Any

from analysis_wrapper.inbox.base import (
    REASON_SUFFIX,
    REGISTERED,
    REJECTED,
    Inbox,
    InboxFile,
    is_job_file_name,
    reason_text,
    unique_name,
)
from analysis_wrapper.job_bytes import DEFAULT_MAX_JOB_FILE_BYTES, BadJobFileError, too_large
from analysis_wrapper.s3_uri import S3Uri
from analysis_wrapper.safe_paths import fit_name

log = logging.getLogger(__name__)


class S3Inbox(Inbox):
    """``s3://bucket/prefix`` through a boto3 S3 client (``AWS_ENDPOINT_URL`` for local servers)."""

    local = False
    parallelism = 16

    def __init__(self, client: Any, uri: str, max_bytes: int = DEFAULT_MAX_JOB_FILE_BYTES) -> None:
        self.client = client
        self.root = S3Uri.from_setting(uri, "DISPATCH_INBOX")
        self.bucket, self.prefix, self.uri = self.root.bucket, self.root.key, str(self.root)
        self.listed = 0
        self.reads = 0
        self.rewritten = 0
        self.max_bytes = max_bytes
        self._etags: dict[str, str] = {}
        """The ETag of each file as read: its move copies only that version, and removes only that one."""

    def _key(self, *parts: str) -> str:
        return self.root.join(*parts).key

    def _uri(self, key: str) -> str:
        return str(S3Uri(self.bucket, key))

    def _key_of(self, uri: str) -> str:
        return S3Uri.parse(uri).key

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
            key = self._key(analysis, unique_name(file.name))
        return self._move(file, key)

    def reject(self, file: InboxFile, reason: str, who: str, content: bytes | None = None) -> str | None:
        key = self._key(REJECTED, fit_name(file.name))
        if self._exists(key):
            key = self._key(REJECTED, unique_name(file.name))
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
