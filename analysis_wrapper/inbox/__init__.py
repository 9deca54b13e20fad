"""The dispatch inbox the sensors watch: a local folder (:mod:`.local`) or ``s3://bucket/prefix``
(:mod:`.s3`); :mod:`.base` says what both are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3

from analysis_wrapper.inbox.base import (
    REASON_SUFFIX,
    REGISTERED,
    REJECTED,
    RESERVED_FOLDERS,
    Inbox,
    InboxFile,
    is_job_file_name,
)
from analysis_wrapper.inbox.local import LocalInbox
from analysis_wrapper.inbox.s3 import S3Inbox
from analysis_wrapper.job_bytes import DEFAULT_MAX_JOB_FILE_BYTES
from analysis_wrapper.s3_uri import S3Uri

__all__ = [
    "REASON_SUFFIX",
    "REGISTERED",
    "REJECTED",
    "RESERVED_FOLDERS",
    "Inbox",
    "InboxFile",
    "LocalInbox",
    "S3Inbox",
    "is_job_file_name",
    "open_inbox",
]


def open_inbox(uri: str, s3_client_factory: Any = None, max_bytes: int = DEFAULT_MAX_JOB_FILE_BYTES) -> Inbox:
    """The inbox for ``DISPATCH_INBOX``: ``s3://…`` through ``s3_client_factory()``, else a local folder.
    Files over ``max_bytes`` (``MAX_JOB_FILE_BYTES``) are rejected unread."""
    if S3Uri.matches(uri):
        return S3Inbox(s3_client_factory() if s3_client_factory else boto3.client("s3"), uri, max_bytes)
    return LocalInbox(Path(uri).expanduser(), max_bytes)
