"""Result folders in S3 (or any S3-compatible server), and the per-run cache for S3 inputs.

``ANALYSIS_BUCKET`` is ``bucket[/prefix]`` as in the capsule; a result folder is
``s3://bucket/prefix/<fingerprint>/``. The result files go up in the wrapper's fixed order: result files,
then ``outputs.json``, then ``metadata.nd.json``. The result files share one thread pool as big as the
client's connection pool: small files are single PUTs, large ones multipart uploads whose parts run
alongside the small files (awscli's split: 8 MiB threshold and parts, 10 requests at a time).

Every object is verified as it goes up, reading each file once (no second read, no HEAD per object):
each request carries the CRC32 of the bytes it sends (S3's flexible checksums, as boto3 and awscli send
by default), which S3 checks on receipt and reports back; the reported CRC32 must be ours (for a
multipart upload: each part's, then the CRC32 of the part CRC32s with ``-<parts>``). From a server
without flexible checksums, which reports none, the ETag must be the MD5 of what we sent (for a
multipart upload: each part's, then the MD5 of the part MD5s with ``-<parts>``). A file whose size or
modification time changes while it is read fails too. Any mismatch raises :class:`ResultsStorageError`
before ``outputs.json`` and ``metadata.nd.json`` are written, so the IO manager writes no record.

Unfinished multipart uploads are never left to pile up: a failed upload aborts its own, and before a
folder is (re)written every unfinished upload under its prefix is aborted (those of a run killed
mid-upload; only the fingerprint's claimant writes there). A server that stops answering fails the
request within the client's timeouts (:mod:`~analysis_wrapper.resources.s3_client`) with an
:class:`~analysis_wrapper.resources.s3_client.S3EndpointError` naming the endpoint and the object.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import shutil
import threading
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from dagster_aws.s3 import S3Resource
from s3transfer.utils import ChunksizeAdjuster

from analysis_wrapper.resources.results_storage import (
    OUTPUTS_FILE,
    RECORD_FILE,
    ResultsStorage,
    ResultsStorageError,
    StoredFile,
    json_bytes,
    result_files,
)
from analysis_wrapper.resources.s3_client import BoundedS3Resource, S3EndpointError, s3_answering
from analysis_wrapper.safe_paths import contained_path

MB = 1024 * 1024
# Uploads split files like awscli (8 MiB threshold and parts, 10 requests at a time); each request's bytes
# are held in memory, so an upload holds at most max_concurrency x max(threshold, part size). Downloads
# and copies use boto3's transfer manager with the same settings. "classic": boto3's own manager (with
# awscrt installed, boto3's default may pick the CRT one, which ignores these settings).
DEFAULT_TRANSFER = TransferConfig(
    multipart_threshold=8 * MB,
    multipart_chunksize=8 * MB,
    max_concurrency=10,
    preferred_transfer_client="classic",
)


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def cached_client(resource: S3Resource) -> Any:
    """One boto3 S3 client per resource configuration and process.

    Building a client reads botocore's service models from disk (about 0.2 s); doing that once per run
    would double the cost of a small job. boto3 clients are thread-safe, so sharing one is fine.
    """
    key = resource.model_dump_json()
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = resource.get_client()
            _clients[key] = client
        return client


def split_bucket(setting: str) -> tuple[str, str]:
    """``bucket/some/prefix`` (or ``s3://bucket/some/prefix``) -> (bucket, ``some/prefix``)."""
    text = setting.removeprefix("s3://").strip("/")
    bucket, _, prefix = text.partition("/")
    if not bucket:
        raise ValueError(f"ANALYSIS_BUCKET {setting!r} names no bucket")
    return bucket, prefix.strip("/")


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def part_size(size: int, config: TransferConfig) -> int | None:
    """The part size a file of ``size`` bytes goes up in; None: one PUT (below the threshold).

    Like boto3: a part size below S3's 5 MiB minimum is raised, one giving over 10,000 parts doubled.
    """
    if size < config.multipart_threshold or size == 0:
        return None
    return int(ChunksizeAdjuster().adjust_chunksize(config.multipart_chunksize, size))


def crc32(data: bytes) -> str:
    """S3's form of a CRC32: base64 of the 4 big-endian bytes."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode("ascii")


def composite_crc32(part_crcs: list[str]) -> str:
    """The CRC32 S3 reports for a multipart object: the CRC32 of the parts' CRC32s, ``-<parts>``."""
    return f"{crc32(b''.join(base64.b64decode(c) for c in part_crcs))}-{len(part_crcs)}"


def multipart_etag(part_digests: list[bytes]) -> str:
    """The ETag S3 gives a multipart object: the MD5 of the parts' MD5 digests, ``-<parts>``."""
    digest = hashlib.md5(b"".join(part_digests), usedforsecurity=False).hexdigest()
    return f"{digest}-{len(part_digests)}"


def _etag(response: Mapping[str, Any]) -> str:
    return str(response.get("ETag", "")).strip('"')


@dataclass
class _FileUpload:
    """One result file on its way up; a multipart upload collects its parts (number, ETag, CRC32) and,
    from a server without flexible checksums, their MD5s."""

    path: Path
    key: str
    name: str
    size: int
    mtime_ns: int
    part_size: int | None
    upload_id: str = ""
    parts: list[dict[str, Any]] = field(default_factory=list)
    md5s: list[bytes | None] = field(default_factory=list)
    parts_left: int = 0


class S3ResultsStorage(ResultsStorage):
    """``s3://bucket/prefix/<fingerprint>/`` folders through a boto3 S3 client."""

    def __init__(
        self, client: Any, bucket: str, prefix: str = "", transfer: TransferConfig = DEFAULT_TRANSFER
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.transfer = transfer
        self._lock = threading.Lock()

    @classmethod
    def from_bucket_setting(cls, setting: str, client: Any | None = None) -> S3ResultsStorage:
        bucket, prefix = split_bucket(setting)
        # boto3 reads AWS_ENDPOINT_URL and the credentials from the environment itself; without a
        # configured client the waits are still bounded (the S3_* defaults).
        return cls(client or BoundedS3Resource().get_client(), bucket, prefix)

    def _key(self, fingerprint: str, name: str = "") -> str:
        folder = f"{self.prefix}/{fingerprint}" if self.prefix else fingerprint
        return f"{folder}/{name}" if name else f"{folder}/"

    def uri(self, fingerprint: str) -> str:
        return f"s3://{self.bucket}/{self._key(fingerprint).rstrip('/')}"

    # ---- writing -----------------------------------------------------------------------------
    def _answering(self, doing: str, key: str) -> Any:
        """Requests ``doing`` something to ``key``; a server that does not answer raises
        :class:`S3EndpointError` naming the endpoint and ``s3://bucket/key``."""
        return s3_answering(self.client, f"{doing} s3://{self.bucket}/{key}")

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
                    f"cannot delete s3://{self.bucket}/{first['Key']}: {first['Message']}"
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
        for name, data in ((OUTPUTS_FILE, json_bytes(outputs)), (RECORD_FILE, json_bytes(record))):
            self._put_object(folder + name, data)
            stored.append(StoredFile(name, len(data)))
        return stored

    def max_concurrency(self) -> int:
        """Requests in flight: the transfer config's, but never more than the client's connection pool
        (more threads than pooled connections would open and drop a connection per request)."""
        pool = getattr(getattr(self.client, "meta", None), "config", None)
        connections = getattr(pool, "max_pool_connections", None) or self.transfer.max_concurrency
        return max(1, min(self.transfer.max_concurrency, int(connections)))

    def _upload_files(self, source: Path, files: list[Path], folder: str) -> list[StoredFile]:
        """Upload ``files`` (small ones and the parts of large ones in one pool); verified, or raise.

        On the first failure nothing new starts, requests in flight finish, unfinished multipart
        uploads are aborted and the error is raised.
        """
        uploads = []
        for path in files:
            stat = path.stat()
            name = path.relative_to(source).as_posix()
            uploads.append(
                _FileUpload(
                    path,
                    folder + name,
                    name,
                    stat.st_size,
                    stat.st_mtime_ns,
                    part_size(stat.st_size, self.transfer),
                )
            )
        multipart = [u for u in uploads if u.part_size is not None]
        futures: list[Future[None]] = []
        with ThreadPoolExecutor(self.max_concurrency(), thread_name_prefix="s3-upload") as pool:
            try:
                # Parts of large files first (the longest tasks), then the small files.
                for upload in multipart:
                    with self._answering("starting the upload of", upload.key):
                        upload.upload_id = self.client.create_multipart_upload(
                            Bucket=self.bucket, Key=upload.key, ChecksumAlgorithm="CRC32"
                        )["UploadId"]
                    assert upload.part_size is not None
                    upload.parts_left = -(-upload.size // upload.part_size)
                    upload.parts = [{} for _ in range(upload.parts_left)]
                    upload.md5s = [None] * upload.parts_left
                    futures.extend(
                        pool.submit(self._upload_part, upload, number)
                        for number in range(1, upload.parts_left + 1)
                    )
                futures.extend(pool.submit(self._upload_whole, u) for u in uploads if u.part_size is None)
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                for future in done:
                    future.result()  # raises the first error
            except BaseException as exc:
                for future in futures:
                    future.cancel()
                pool.shutdown(wait=True)
                # A server that did not answer would not answer the aborts either (each would wait the
                # full timeouts again): the next write of this folder aborts what is left.
                if not isinstance(exc, S3EndpointError):
                    for upload in multipart:
                        if upload.upload_id and upload.parts_left >= 0:
                            self._abort(upload)
                raise
        return [StoredFile(u.name, u.size) for u in uploads]

    def _read(self, upload: _FileUpload, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; the last chunk also checks that the file ends there."""
        last = offset + length >= upload.size
        with upload.path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read(length + 1 if last else length)
        if len(data) != length:
            found = "more bytes" if len(data) > length else f"{offset + len(data)} bytes"
            raise ResultsStorageError(
                f"{upload.path}: found {found} where its size says {upload.size} "
                f"(it changed while being uploaded, or is not a regular file)"
            )
        return data

    def _check_unchanged(self, upload: _FileUpload) -> None:
        stat = upload.path.stat()
        if (stat.st_size, stat.st_mtime_ns) != (upload.size, upload.mtime_ns):
            raise ResultsStorageError(f"{upload.path} changed while being uploaded")

    def _upload_whole(self, upload: _FileUpload) -> None:
        self._put_object(upload.key, self._read(upload, 0, upload.size))
        self._check_unchanged(upload)

    def _upload_part(self, upload: _FileUpload, number: int) -> None:
        """Upload part ``number`` (from 1); the part finishing last completes the upload."""
        assert upload.part_size is not None
        offset = (number - 1) * upload.part_size
        data = self._read(upload, offset, min(upload.part_size, upload.size - offset))
        response, checksum, md5 = self._send(
            f"{upload.key} (part {number})",
            self.client.upload_part,
            data,
            Key=upload.key,
            UploadId=upload.upload_id,
            PartNumber=number,
        )
        if md5 is not None and _etag(response) != md5.hex():
            raise self._mismatch(f"{upload.key} (part {number})", _etag(response) or "no ETag", md5.hex())
        with self._lock:
            upload.parts[number - 1] = {
                "PartNumber": number,
                "ETag": response["ETag"],
                "ChecksumCRC32": checksum,
            }
            upload.md5s[number - 1] = md5
            upload.parts_left -= 1
            last = upload.parts_left == 0
        if last:
            self._complete(upload)

    def _complete(self, upload: _FileUpload) -> None:
        with self._answering("completing the upload of", upload.key):
            response = self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=upload.key,
                UploadId=upload.upload_id,
                MultipartUpload={"Parts": upload.parts},
            )
        upload.parts_left = -1  # completed: nothing left to abort
        # Each part was verified as it went up; the object must be made of exactly those parts.
        reported = response.get("ChecksumCRC32")
        expected = composite_crc32([part["ChecksumCRC32"] for part in upload.parts])
        md5s = [m for m in upload.md5s if m is not None]
        if reported and reported.endswith(f"-{len(upload.parts)}"):
            if reported != expected:
                raise self._mismatch(upload.key, f"CRC32 {reported}", expected)
        elif reported is None and len(md5s) == len(upload.parts):
            self._verify_etag(upload.key, response, upload.size, multipart_etag(md5s))
        else:  # a full-object CRC32, or a server reporting CRC32s for some requests only
            self._verify_size(upload.key, upload.size)
        self._check_unchanged(upload)

    def _abort(self, upload: _FileUpload) -> None:
        # Best effort: the error being raised matters more (and S3 lifecycle rules expire uploads too).
        with contextlib.suppress(Exception):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id)

    def _put_object(self, key: str, data: bytes) -> None:
        response, _, md5 = self._send(key, self.client.put_object, data, Key=key)
        if md5 is not None:
            self._verify_etag(key, response, len(data), md5.hex())

    def _send(
        self, what: str, call: Callable[..., dict[str, Any]], data: bytes, **params: Any
    ) -> tuple[dict[str, Any], str, bytes | None]:
        """``call`` (PutObject or UploadPart) with ``data`` and its CRC32, checked against what S3 reports.

        S3 checks a request's CRC32 against the bytes it received (refusing them if they differ) and
        reports the CRC32 it stored. A server without flexible checksums reports none; then the caller
        checks its ETag (the MD5 of what it stored). Returns the response, the CRC32 sent and, for such
        a server, the MD5 of ``data``.
        """
        checksum = crc32(data)
        with s3_answering(self.client, f"uploading s3://{self.bucket}/{what}"):
            response = call(Bucket=self.bucket, Body=data, ChecksumCRC32=checksum, **params)
        reported = response.get("ChecksumCRC32")
        if reported is not None:
            if reported != checksum:
                raise self._mismatch(what, f"CRC32 {reported}", checksum)
            return response, checksum, None
        return response, checksum, hashlib.md5(data, usedforsecurity=False).digest()

    def _verify_etag(self, key: str, response: Mapping[str, Any], size: int, etag: str) -> None:
        """The stored object's ETag must be ``etag``; a server answering without one is asked for the
        object's size and ETag instead (the ETag only checked if it gives one)."""
        got = _etag(response) or self._verify_size(key, size)
        if got and got != etag:
            raise self._mismatch(key, got, etag)

    def _verify_size(self, key: str, size: int) -> str:
        """The stored object must have ``size`` bytes; returns its ETag."""
        with self._answering("checking", key):
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        if int(head["ContentLength"]) != size:
            raise ResultsStorageError(
                f"s3://{self.bucket}/{key}: stored {head['ContentLength']} bytes, expected {size}"
            )
        return _etag(head)

    def _mismatch(self, what: str, got: str, expected: str) -> ResultsStorageError:
        return ResultsStorageError(
            f"s3://{self.bucket}/{what}: S3 reports checksum {got}, expected {expected}"
        )

    # ---- reading -----------------------------------------------------------------------------
    def read_bytes(self, fingerprint: str, name: str) -> bytes:
        key = self._key(fingerprint, name)
        try:
            with self._answering("reading", key):
                return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except self.client.exceptions.NoSuchKey:
            raise ResultsStorageError(f"s3://{self.bucket}/{key} does not exist") from None

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


class S3InputCache:
    """Local copies of ``s3://`` inputs for one run: downloaded once, reused within the run, removed after.

    A location naming one object gives that file; a location naming a prefix (an asset folder) gives a
    folder holding every object under it.
    """

    def __init__(self, client_factory: Callable[[], Any], root: Path) -> None:
        self._client_factory = client_factory
        self._client: Any = None
        self.root = root
        self._fetched: dict[str, Path] = {}

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def local_path(self, uri: str) -> Path:
        """The local copy of ``uri``; a server that does not answer raises :class:`S3EndpointError`."""
        with s3_answering(self.client, f"downloading the input {uri}"):
            return self._local_path(uri)

    def _local_path(self, uri: str) -> Path:
        if uri in self._fetched:
            return self._fetched[uri]
        bucket, key = split_s3_uri(uri)
        target = contained_path(self.root, bucket, key)  # a key like "/tmp/x" or "a/../../x" is refused
        # A whole bucket (empty key; HeadObject refuses it) or a key ending in "/" names a prefix.
        is_object = bool(key) and not key.endswith("/")
        if is_object:
            try:
                self.client.head_object(Bucket=bucket, Key=key)
            except self.client.exceptions.ClientError:
                is_object = False
        if is_object:
            target.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(bucket, key, str(target), Config=DEFAULT_TRANSFER)
        else:
            prefix = key.rstrip("/") + "/" if key else ""
            paginator = self.client.get_paginator("list_objects_v2")
            count = 0
            try:
                for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                    for obj in page.get("Contents", []):
                        if obj["Key"].endswith("/"):
                            # A "folder" marker (what the S3 console's "Create folder" writes): not a file.
                            continue
                        destination = contained_path(target, obj["Key"][len(prefix) :], what=obj["Key"])
                        destination.parent.mkdir(parents=True, exist_ok=True)
                        self.client.download_file(
                            bucket, obj["Key"], str(destination), Config=DEFAULT_TRANSFER
                        )
                        count += 1
            except self.client.exceptions.NoSuchBucket:
                raise FileNotFoundError(
                    f"{uri}: no such object or prefix in S3 (no bucket {bucket})"
                ) from None
            if count == 0:
                raise FileNotFoundError(f"{uri}: no such object or prefix in S3")
        self._fetched[uri] = target
        return target

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self._fetched.clear()
