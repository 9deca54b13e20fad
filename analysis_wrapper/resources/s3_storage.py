"""Result folders in S3 (or any S3-compatible server): ``s3://bucket/prefix/<fingerprint>/``.

``ANALYSIS_BUCKET`` is ``bucket[/prefix]`` as in the capsule. The result files go up in the wrapper's
fixed order: result files, then ``outputs.json``, then ``metadata.nd.json``, so a folder with a record
is complete. The result files go through one boto3 transfer manager (awscli's split: 8 MiB threshold
and parts, 10 requests at a time, never more than the client's connection pool), large files as
multipart uploads whose parts run alongside the small files.

What boto3 and S3 verify: every PutObject and UploadPart carries the CRC32 of its bytes
(``ChecksumAlgorithm="CRC32"``, botocore's default too), which S3 checks on receipt, refusing the request
(``BadDigest``) if the bytes differ; a multipart upload is completed with each part's CRC32, which S3
checks against the parts it holds; a failed upload aborts its own multipart upload. What is checked
here, because boto3 cannot know it: that each file is what its size says before it goes up (a ``/proc``
file says 0 bytes and holds more) and did not change while it went up, and, before ``outputs.json``
and ``metadata.nd.json`` are written, that the folder holds every file with its size (one listing: a
server that stored something else, or another writer that cleared the folder meanwhile). Any failure
raises before the record is written, so the IO manager writes no record.

Unfinished multipart uploads are never left to pile up: before a folder is (re)written every
unfinished upload under its prefix is aborted (those of a run killed mid-upload; only the fingerprint's
claimant writes there). A server that stops answering fails the request within the client's timeouts
(:mod:`~analysis_wrapper.resources.s3_client`) with an
:class:`~analysis_wrapper.resources.s3_client.S3EndpointError` naming the endpoint and the object.
"""

from __future__ import annotations

import contextlib
import copy
import os
import queue
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from s3transfer.subscribers import BaseSubscriber

from analysis_wrapper.resources.results_storage import (
    OUTPUTS_FILE,
    RECORD_FILE,
    ResultsStorage,
    ResultsStorageError,
    StoredFile,
    json_bytes,
    result_files,
)
from analysis_wrapper.resources.s3_client import BoundedS3Resource, s3_answering
from analysis_wrapper.s3_uri import S3Uri

MB = 1024 * 1024
# awscli's split (8 MiB threshold and parts, 10 requests at a time), for uploads, downloads and copies.
# "classic": boto3's own manager (with awscrt installed, boto3's default may pick the CRT one, which
# ignores these settings).
DEFAULT_TRANSFER = TransferConfig(
    multipart_threshold=8 * MB,
    multipart_chunksize=8 * MB,
    max_concurrency=10,
    preferred_transfer_client="classic",
)
# Whatever AWS_REQUEST_CHECKSUM_CALCULATION says: S3 checks each request's bytes against this.
CHECKSUM = {"ChecksumAlgorithm": "CRC32"}


class _Finished(BaseSubscriber):  # type: ignore[misc]
    """Puts each transfer in ``done`` as it ends, so the first failure is seen at once."""

    def __init__(self, done: queue.Queue[tuple[Any, Path, str, os.stat_result]], path: Path, key: str):
        self.done, self.path, self.key = done, path, key
        self.stat = path.stat()

    def on_done(self, future: Any, **kwargs: Any) -> None:
        self.done.put((future, self.path, self.key, self.stat))


def _check_size(path: Path, stat: os.stat_result) -> None:
    """``path`` ends where its size says (a ``/proc`` file says 0 bytes and holds more)."""
    with path.open("rb") as handle:
        handle.seek(stat.st_size)
        if handle.read(1):
            raise ResultsStorageError(
                f"{path}: found more bytes where its size says {stat.st_size} "
                f"(it changed while being uploaded, or is not a regular file)"
            )


class S3ResultsStorage(ResultsStorage):
    """``s3://bucket/prefix/<fingerprint>/`` folders through a boto3 S3 client."""

    def __init__(
        self, client: Any, bucket: str, prefix: str = "", transfer: TransferConfig = DEFAULT_TRANSFER
    ) -> None:
        self.client = client
        self.root = S3Uri(bucket, prefix.strip("/"))
        self.bucket, self.prefix = self.root.bucket, self.root.key
        self.transfer = transfer

    @classmethod
    def from_bucket_setting(cls, setting: str, client: Any | None = None) -> S3ResultsStorage:
        root = S3Uri.from_setting(setting, "ANALYSIS_BUCKET")
        # boto3 reads AWS_ENDPOINT_URL and the credentials from the environment itself; without a
        # configured client the waits are still bounded (the S3_* defaults).
        return cls(client or BoundedS3Resource().get_client(), root.bucket, root.key)

    def _key(self, fingerprint: str, name: str = "") -> str:
        return self.root.join(fingerprint, name).key + ("" if name else "/")

    def uri(self, fingerprint: str) -> str:
        return str(self.root.join(fingerprint))

    def _answering(self, doing: str, key: str) -> Any:
        """Requests ``doing`` something to ``key``; a server that does not answer raises
        :class:`S3EndpointError` naming the endpoint and ``s3://bucket/key``."""
        return s3_answering(self.client, f"{doing} {S3Uri(self.bucket, key)}")

    def _objects(self, key_prefix: str) -> list[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        found: list[dict[str, Any]] = []
        with self._answering("listing", key_prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=key_prefix):
                found.extend(page.get("Contents", []))
        return found

    def unfinished_uploads(self, key_prefix: str) -> list[dict[str, Any]]:
        """The multipart uploads begun and neither completed nor aborted under ``key_prefix``."""
        paginator = self.client.get_paginator("list_multipart_uploads")
        found: list[dict[str, Any]] = []
        with self._answering("listing unfinished uploads under", key_prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=key_prefix):
                found.extend(u for u in page.get("Uploads", []) if u["Key"].startswith(key_prefix))
        return found

    def abort_unfinished(self, key_prefix: str) -> int:
        """Abort every unfinished multipart upload under ``key_prefix`` (left by a run killed
        mid-upload: S3 keeps, and bills, their parts until aborted); returns how many."""
        uploads = self.unfinished_uploads(key_prefix)
        for upload in uploads:
            # NoSuchUpload: completed or aborted meanwhile.
            with (
                self._answering("aborting an unfinished upload of", upload["Key"]),
                contextlib.suppress(self.client.exceptions.NoSuchUpload),
            ):
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
        return len(uploads)

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            with self._answering("deleting", batch[0]["Key"]):
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            if response.get("Errors"):
                first = response["Errors"][0]
                raise ResultsStorageError(
                    f"cannot delete {S3Uri(self.bucket, first['Key'])}: {first['Message']}"
                )

    def put_result(
        self, fingerprint: str, source: Path, outputs: Mapping[str, Any], record: Mapping[str, Any]
    ) -> list[StoredFile]:
        files = result_files(source)
        folder = self._key(fingerprint)
        # A folder without a record (a run that died, or one being replaced under force) is cleared first,
        # so no stale file survives next to the new ones, nor an unfinished upload of a killed run.
        self.abort_unfinished(folder)
        leftovers = [o["Key"] for o in self._objects(folder)]
        if leftovers:
            self._delete(leftovers)
        stored = self._upload_files(source, files, folder)
        self._check_complete(folder, stored)
        for name, data in ((OUTPUTS_FILE, json_bytes(outputs)), (RECORD_FILE, json_bytes(record))):
            with self._answering("uploading", folder + name):
                self.client.put_object(Bucket=self.bucket, Key=folder + name, Body=data, **CHECKSUM)
            stored.append(StoredFile(name, len(data)))
        return stored

    def max_concurrency(self) -> int:
        """Requests in flight: the transfer config's, but never more than the client's connection pool
        (more threads than pooled connections would open and drop a connection per request)."""
        pool = getattr(getattr(self.client, "meta", None), "config", None)
        connections = getattr(pool, "max_pool_connections", None) or self.transfer.max_concurrency
        return max(1, min(self.transfer.max_concurrency, int(connections)))

    def _upload_files(self, source: Path, files: list[Path], folder: str) -> list[StoredFile]:
        """Upload ``files`` through one transfer manager, the largest first (their parts are the
        longest tasks). On the first failure the manager cancels what has not started, lets requests
        in flight finish and aborts its multipart uploads; the error is raised."""
        config = copy.copy(self.transfer)
        config.max_concurrency = self.max_concurrency()
        done: queue.Queue[tuple[Any, Path, str, os.stat_result]] = queue.Queue()
        uploads = [_Finished(done, path, folder + path.relative_to(source).as_posix()) for path in files]
        for upload in uploads:
            _check_size(upload.path, upload.stat)
        with create_transfer_manager(self.client, config) as manager:
            for upload in sorted(uploads, key=lambda u: -u.stat.st_size):
                manager.upload(str(upload.path), self.bucket, upload.key, CHECKSUM.copy(), [upload])
            for _ in uploads:
                future, path, key, stat = done.get()
                with self._answering("uploading", key):
                    future.result()
                now = path.stat()
                if (now.st_size, now.st_mtime_ns) != (stat.st_size, stat.st_mtime_ns):
                    raise ResultsStorageError(f"{path} changed while being uploaded")
        return [StoredFile(u.key[len(folder) :], u.stat.st_size) for u in uploads]

    def _check_complete(self, folder: str, stored: list[StoredFile]) -> None:
        """The folder holds every file with its size (checked before the record is written)."""
        listed = {o["Key"][len(folder) :]: int(o["Size"]) for o in self._objects(folder)}
        for item in stored:
            got = listed.get(item.name)
            if got != item.size:
                found = "missing" if got is None else f"stored {got} bytes"
                raise ResultsStorageError(
                    f"{S3Uri(self.bucket, folder + item.name)}: {found}, expected {item.size} bytes"
                )

    def read_bytes(self, fingerprint: str, name: str) -> bytes:
        key = self._key(fingerprint, name)
        try:
            with self._answering("reading", key):
                return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except self.client.exceptions.NoSuchKey:
            raise ResultsStorageError(f"{S3Uri(self.bucket, key)} does not exist") from None

    def list_files(self, fingerprint: str) -> list[StoredFile]:
        folder = self._key(fingerprint)
        return [StoredFile(o["Key"][len(folder) :], int(o["Size"])) for o in self._objects(folder)]

    def move_aside(self, fingerprint: str, suffix: str) -> str | None:
        folder = self._key(fingerprint)
        objects = self._objects(folder)
        if not objects:
            return None
        target = self._key(f"{fingerprint}{suffix}")
        for obj in objects:
            with self._answering("copying", obj["Key"]):
                self.client.copy(
                    {"Bucket": self.bucket, "Key": obj["Key"]},
                    self.bucket,
                    target + obj["Key"][len(folder) :],
                    Config=self.transfer,
                )
        self._delete([o["Key"] for o in objects])
        return self.uri(f"{fingerprint}{suffix}")
