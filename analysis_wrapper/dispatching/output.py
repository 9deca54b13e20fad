"""The dispatched jobs as files, in a folder or under an S3 prefix, named as the dispatcher names them.

The dispatcher writes task ``i`` to ``<i // tasks_per_job>/<uuid4>.json`` (``model_dump_json(indent=4)``).
Here the uuid is derived from the job's fingerprint (uuid5), so dispatching the same jobs again
rewrites the same files instead of adding copies. Only jobs registered by this dispatch are written.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from analysis_wrapper.job_file import AnalysisJob
from analysis_wrapper.s3_uri import S3Uri

NAMESPACE = uuid.UUID("6f1d2a8e-4b51-4c43-9a3e-2f8d6a1c0b7e")


def job_file_name(job: AnalysisJob, index: int, tasks_per_job: int) -> str:
    return f"{index // tasks_per_job}/{uuid.uuid5(NAMESPACE, job.fingerprint)}.json"


def job_text(job: AnalysisJob) -> str:
    return json.dumps(job.dispatch.model_dump(mode="json"), indent=4)


def write_job_files(
    jobs: Sequence[AnalysisJob],
    target: str,
    tasks_per_job: int,
    s3_client: Callable[[], Any] | None,
    first_index: int = 0,
) -> list[str]:
    """Write ``jobs`` under ``target`` (a folder, or ``s3://bucket/prefix``); the URIs written."""
    written = []
    if S3Uri.matches(target):
        if s3_client is None:
            raise ValueError(f"output_directory {target}: an S3 prefix, but no S3 client was given")
        folder = S3Uri.parse(target)
        client = s3_client()
        for offset, job in enumerate(jobs):
            uri = folder.join(job_file_name(job, first_index + offset, tasks_per_job))
            client.put_object(
                Bucket=uri.bucket,
                Key=uri.key,
                Body=job_text(job).encode("utf-8"),
                ContentType="application/json",
            )
            written.append(str(uri))
        return written
    root = Path(target).expanduser()
    for offset, job in enumerate(jobs):
        path = root / job_file_name(job, first_index + offset, tasks_per_job)
        path.parent.mkdir(parents=True, exist_ok=True)
        hidden = path.with_name(f".{path.name}.tmp")
        hidden.write_text(job_text(job), encoding="utf-8")
        hidden.replace(path)  # never a half-written job file for a reader watching the folder
        written.append(str(path))
    return written
