"""Local copies of a run's ``s3://`` inputs, downloaded with boto3's transfer manager.

Every local path is built by :func:`~analysis_wrapper.safe_paths.contained_path`, so no S3 key (``/tmp/x``,
``a/../../x``) can place a file outside the cache. boto3 validates the CRC32 S3 reports for what it
downloads (``response_checksum_validation``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from analysis_wrapper.resources.s3_client import s3_answering
from analysis_wrapper.resources.s3_storage import DEFAULT_TRANSFER
from analysis_wrapper.s3_uri import S3Uri
from analysis_wrapper.safe_paths import contained_path


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
        """The local copy of ``uri``; a server that does not answer raises
        :class:`~analysis_wrapper.resources.s3_client.S3EndpointError`."""
        if uri not in self._fetched:
            with s3_answering(self.client, f"downloading the input {uri}"):
                self._fetched[uri] = self._download(uri)
        return self._fetched[uri]

    def _is_object(self, location: S3Uri) -> bool:
        # A whole bucket (empty key; HeadObject refuses it) or a key ending in "/" names a prefix.
        if not location.key or location.key.endswith("/"):
            return False
        try:
            self.client.head_object(Bucket=location.bucket, Key=location.key)
        except self.client.exceptions.ClientError:
            return False
        return True

    def _download(self, uri: str) -> Path:
        location = S3Uri.parse(uri)
        bucket, key = location.bucket, location.key
        target = contained_path(self.root, bucket, key)  # a key like "/tmp/x" or "a/../../x" is refused
        if self._is_object(location):
            target.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(bucket, key, str(target), Config=DEFAULT_TRANSFER)
            return target
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
                    self.client.download_file(bucket, obj["Key"], str(destination), Config=DEFAULT_TRANSFER)
                    count += 1
        except self.client.exceptions.NoSuchBucket:
            raise FileNotFoundError(f"{uri}: no such object or prefix in S3 (no bucket {bucket})") from None
        if count == 0:
            raise FileNotFoundError(f"{uri}: no such object or prefix in S3")
        return target

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self._fetched.clear()
