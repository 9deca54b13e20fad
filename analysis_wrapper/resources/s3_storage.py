"""Result folders in S3 (or any S3-compatible server), and the per-run cache for S3 inputs.

``ANALYSIS_BUCKET`` is ``bucket[/prefix]`` as in the capsule; a result folder is
``s3://bucket/prefix/<fingerprint>/``. Files go up with boto3's managed transfer (multipart for large
files, several files at once), in the wrapper's fixed order: result files, then ``outputs.json``, then
``metadata.nd.json``. Every object is verified against what S3 reports back (size and ETag, which we
compute locally for single-part and multipart uploads alike) before the IO manager writes the record.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
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

MB = 1024 * 1024
# "classic": boto3's own transfer manager, whose part sizes ``expected_etag`` mirrors. With awscrt installed,
# boto3's default ("auto") switches to the CRT manager on some instance types, which ignores these settings,
# so every large upload would fail verification there.
DEFAULT_TRANSFER = TransferConfig(
    multipart_threshold=16 * MB,
    multipart_chunksize=16 * MB,
    max_concurrency=8,
    preferred_transfer_client="classic",
)
UPLOAD_WORKERS = 8


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


def expected_etag(path: Path, config: TransferConfig) -> str:
    """The ETag S3 gives an object uploaded from ``path`` with ``config`` (MD5, or MD5 of part MD5s)."""
    size = path.stat().st_size
    if size < config.multipart_threshold:
        digest = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(MB), b""):
                digest.update(block)
        return digest.hexdigest()
    # s3transfer raises a part size below S3's 5 MiB minimum and doubles it past 10,000 parts; so do we.
    part_size = ChunksizeAdjuster().adjust_chunksize(config.multipart_chunksize, size)
    parts = []
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(part_size), b""):
            parts.append(hashlib.md5(block, usedforsecurity=False).digest())
    return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"


class S3ResultsStorage(ResultsStorage):
    """``s3://bucket/prefix/<fingerprint>/`` folders through a boto3 S3 client."""

    def __init__(
        self, client: Any, bucket: str, prefix: str = "", transfer: TransferConfig = DEFAULT_TRANSFER
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.transfer = transfer

    @classmethod
    def from_bucket_setting(cls, setting: str, client: Any | None = None) -> S3ResultsStorage:
        bucket, prefix = split_bucket(setting)
        # boto3 reads AWS_ENDPOINT_URL and the credentials from the environment itself.
        return cls(client or boto3.client("s3"), bucket, prefix)

    def _key(self, fingerprint: str, name: str = "") -> str:
        folder = f"{self.prefix}/{fingerprint}" if self.prefix else fingerprint
        return f"{folder}/{name}" if name else f"{folder}/"

    def uri(self, fingerprint: str) -> str:
        return f"s3://{self.bucket}/{self._key(fingerprint).rstrip('/')}"

    # ---- writing -----------------------------------------------------------------------------
    def _objects(self, key_prefix: str) -> list[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        found: list[dict[str, Any]] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=key_prefix):
            found.extend(page.get("Contents", []))
        return found

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            response = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )
            if response.get("Errors"):
                first = response["Errors"][0]
                raise ResultsStorageError(
                    f"cannot delete s3://{self.bucket}/{first['Key']}: {first['Message']}"
                )

    def _upload(self, path: Path, key: str) -> StoredFile:
        self.client.upload_file(str(path), self.bucket, key, Config=self.transfer)
        return self._verify(key, path.stat().st_size, expected_etag(path, self.transfer))

    def _put_bytes(self, key: str, data: bytes) -> StoredFile:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        return self._verify(key, len(data), hashlib.md5(data, usedforsecurity=False).hexdigest())

    def _verify(self, key: str, size: int, etag: str) -> StoredFile:
        head = self.client.head_object(Bucket=self.bucket, Key=key)
        got_size = int(head["ContentLength"])
        got_etag = str(head.get("ETag", "")).strip('"')
        if got_size != size:
            raise ResultsStorageError(f"s3://{self.bucket}/{key}: stored {got_size} bytes, expected {size}")
        if got_etag and got_etag != etag:
            raise ResultsStorageError(
                f"s3://{self.bucket}/{key}: S3 reports checksum {got_etag}, expected {etag}"
            )
        return StoredFile(key, size)

    def put_result(
        self, fingerprint: str, source: Path, outputs: Mapping[str, Any], record: Mapping[str, Any]
    ) -> list[StoredFile]:
        files = result_files(source)
        folder = self._key(fingerprint)
        # A folder without a record (a run that died, or one being replaced under force) is cleared first,
        # so no stale file survives next to the new ones.
        leftovers = [o["Key"] for o in self._objects(folder)]
        if leftovers:
            self._delete(leftovers)
        stored: list[StoredFile] = []
        with ThreadPoolExecutor(max_workers=UPLOAD_WORKERS) as pool:
            futures = [
                pool.submit(self._upload, path, folder + path.relative_to(source).as_posix())
                for path in files
            ]
            for path, future in zip(files, futures, strict=True):
                future.result()
                stored.append(StoredFile(path.relative_to(source).as_posix(), path.stat().st_size))
        for name, data in ((OUTPUTS_FILE, json_bytes(outputs)), (RECORD_FILE, json_bytes(record))):
            self._put_bytes(folder + name, data)
            stored.append(StoredFile(name, len(data)))
        return stored

    # ---- reading -----------------------------------------------------------------------------
    def read_bytes(self, fingerprint: str, name: str) -> bytes:
        key = self._key(fingerprint, name)
        try:
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
        if uri in self._fetched:
            return self._fetched[uri]
        bucket, key = split_s3_uri(uri)
        target = self.root / bucket / key
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
                        destination = target / obj["Key"][len(prefix) :]
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
