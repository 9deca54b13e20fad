"""S3 input keys cannot place a file outside the run's input cache (issue 11, item 1), on a real S3 server.

An S3 key is any string: ``/abs/path``, ``trav/../../../../abs/path`` are keys like any other. The cache
joined them onto its folder and downloaded to wherever that led (the job ended ``done``). Now job files
naming such keys are rejected when read (naming the file and field), and keys met at run time (listed
under a prefix, so unknowable before) fail the job naming the key; nothing is written outside.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from analysis_wrapper.inputs import UnsafeInputError, resolve_inputs
from analysis_wrapper.job_file import JobFileError, load_job_file
from analysis_wrapper.resources.s3_input_cache import S3InputCache
from analysis_wrapper_tests.harness import write_job
from analysis_wrapper_tests.s3_servers import S3Endpoint
from analysis_wrapper_tests.sample_analyses import echo


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def escape_keys(target: Path) -> dict[str, str]:
    """Keys that, joined onto any cache folder, name ``target`` (an absolute path)."""
    up = "../" * 40  # more than any cache folder is deep
    return {
        "leading slash": str(target),  # s3://bucket//abs/path
        "dot dot": f"trav/{up}{str(target).lstrip('/')}",
    }


def test_keys_leading_out_of_the_cache_are_refused_before_any_download(
    moto_s3: S3Endpoint, tmp_path: Path
) -> None:
    bucket = moto_s3.new_bucket("inputs")
    client = moto_s3.client()
    outside = tmp_path / "outside" / "evil.nwb"
    keys = escape_keys(outside)
    for key in keys.values():
        client.put_object(Bucket=bucket, Key=key, Body=b"evil")
    assert set(keys.values()) <= set(moto_s3.objects(bucket))  # the server holds them as they are
    cache = S3InputCache(moto_s3.client, tmp_path / "cache")
    before = tree(tmp_path)
    for key in keys.values():
        location = f"s3://{bucket}/{key}"
        with pytest.raises(UnsafeInputError) as caught:
            resolve_inputs(["/dev/null", location], "/jobs/job.json", cache)
        message = str(caught.value)
        assert message.startswith("/jobs/job.json: input [1]") and location in message, message
        assert "refused" in message
    assert not outside.exists() and tree(tmp_path) == before


def test_a_prefix_listing_a_key_that_leads_out_is_refused_naming_the_key(
    moto_s3: S3Endpoint, tmp_path: Path
) -> None:
    bucket = moto_s3.new_bucket("inputs")
    client = moto_s3.client()
    outside = tmp_path / "outside" / "evil.nwb"
    bad_key = "pre/" + "../" * 40 + str(outside).lstrip("/")
    client.put_object(Bucket=bucket, Key="pre/good.nwb", Body=b"good")
    client.put_object(Bucket=bucket, Key=bad_key, Body=b"evil")
    cache = S3InputCache(moto_s3.client, tmp_path / "cache")
    with pytest.raises(UnsafeInputError) as caught:
        resolve_inputs([f"s3://{bucket}/pre"], "job.json", cache)
    assert repr(bad_key) in str(caught.value) and "'..' path segment" in str(caught.value)
    assert not outside.exists() and not (tmp_path / "outside").exists()
    cache.cleanup()
    client.delete_object(Bucket=bucket, Key=bad_key)
    folder = cache.local_path(f"s3://{bucket}/pre")  # the same prefix, without that key: fine
    assert (folder / "good.nwb").read_bytes() == b"good" and folder.is_relative_to(tmp_path / "cache")


@pytest.mark.parametrize("form", ["leading slash", "dot dot"])
def test_job_files_naming_such_keys_are_rejected_naming_file_and_field(tmp_path: Path, form: str) -> None:
    location = f"s3://inputs/{escape_keys(tmp_path / 'outside' / 'evil.nwb')[form]}"
    for field in ("s3_location", "file_location"):
        path = write_job(tmp_path / "jobs", ["s3://inputs/asset"])
        job = json.loads(path.read_text())
        job[field] = [location]
        path.write_text(json.dumps(job))
        with pytest.raises(JobFileError) as caught:
            load_job_file(path)
        assert str(caught.value).startswith(f"{path}: field '{field}[0]'"), str(caught.value)


def test_a_run_over_a_prefix_with_an_escaping_key_fails_the_job_and_writes_nothing_outside(
    moto_s3: S3Endpoint, harness_factory: Any, tmp_path: Path
) -> None:
    bucket = moto_s3.new_bucket("inputs")
    client = moto_s3.client()
    outside = tmp_path / "outside" / "evil.nwb"
    client.put_object(Bucket=bucket, Key="pre/" + "../" * 40 + str(outside).lstrip("/"), Body=b"evil")
    h = harness_factory([echo], AWS_ENDPOINT_URL=moto_s3.endpoint_url)
    (job,) = h.submit([write_job(tmp_path / "jobs", [f"s3://{bucket}/pre"])])
    result = h.materialize("echo", job.partition_key, raise_on_error=False)
    assert not result.success
    errors = [e.step_failure_data.error.message for e in result.all_events if e.is_step_failure]
    assert any("'..' path segment" in e and "refused" in e for e in errors), errors
    entry = h.store.get_job("echo", job.partition_key)
    assert entry is not None and entry.state.value == "failed" and "refused" in (entry.last_error or "")
    assert not outside.exists() and not (tmp_path / "outside").exists()
    assert h.store.find_records("echo") == []
    assert not os.path.lexists(outside.parent)
