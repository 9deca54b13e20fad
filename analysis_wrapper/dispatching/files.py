"""``file_extension``: each asset's files ending in it, found recursively under the asset's location.

As the dispatcher's ``fs.glob(f"{location}/**/*{file_extension}")``, for S3 (``s3://bucket/prefix``,
listed through the project's boto3 client, so ``AWS_ENDPOINT_URL`` and credentials work as everywhere
else) and for local folders. Files come back sorted, S3 ones as ``s3://bucket/key``. Many assets are
listed at once (a thread pool), since each S3 listing is a round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from analysis_wrapper.errors import AnalysisWrapperError
from analysis_wrapper.job_file import normalize_location
from analysis_wrapper.s3_uri import S3Uri

LIST_THREADS = 8


class FileSearchError(AnalysisWrapperError, RuntimeError):
    """An asset location that cannot be listed; the message names it."""


def find_files(location: str, extension: str, s3_client: Callable[[], Any] | None) -> list[str]:
    """The files under ``location`` whose names end in ``extension``, sorted."""
    if S3Uri.matches(location):
        if s3_client is None:
            raise FileSearchError(f"{location}: an S3 location, but no S3 client was given")
        uri = S3Uri.parse(location)
        bucket, prefix = uri.bucket, uri.prefix
        client = s3_client()
        paginator = client.get_paginator("list_objects_v2")
        found: list[str] = []
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""):
                found.extend(
                    str(S3Uri(bucket, item["Key"]))
                    for item in page.get("Contents", [])
                    if item["Key"].endswith(extension) and not item["Key"].endswith("/")
                )
        except Exception as exc:  # botocore ClientError / EndpointConnectionError: name the place
            raise FileSearchError(f"cannot list {location}: {type(exc).__name__}: {exc}") from None
        return sorted(found)
    folder = Path(normalize_location(location))
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.rglob(f"*{extension}") if p.is_file())


def find_files_of(
    locations: Sequence[str], extension: str, s3_client: Callable[[], Any] | None
) -> dict[str, list[str]]:
    """:func:`find_files` for many locations at once."""
    unique = list(dict.fromkeys(locations))
    if len(unique) <= 1:
        return {loc: find_files(loc, extension, s3_client) for loc in unique}
    with ThreadPoolExecutor(max_workers=min(LIST_THREADS, len(unique))) as pool:
        results = pool.map(lambda loc: find_files(loc, extension, s3_client), unique)
        return dict(zip(unique, results, strict=True))
