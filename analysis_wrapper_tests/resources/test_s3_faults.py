"""S3 that stops answering, and uploads a killed run left unfinished (issue 11, items 5 and 10).

Real servers only: a ``moto_server`` process of the test's own (``s3_process``), frozen with SIGSTOP in
the middle of a multipart upload or killed, and moto / SeaweedFS for the leftover multipart uploads.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from analysis_wrapper.code_location import build_resources
from analysis_wrapper.factory import RESULTS_IO_MANAGER_KEY
from analysis_wrapper.inbox import open_inbox
from analysis_wrapper.resources.s3_client import BoundedS3Resource, S3EndpointError
from analysis_wrapper.resources.s3_input_cache import S3InputCache
from analysis_wrapper.resources.s3_storage import MB, S3ResultsStorage
from analysis_wrapper.settings import Settings
from analysis_wrapper_tests.s3_servers import S3Endpoint, S3Process

FP = "f" * 64
OTHER_FP = "e" * 64
# Recognisable credentials (moto accepts any): they must never show in an error.
KEY_ID = "AKIAFAULTSUITE000042"
SECRET = "s3cr3t-fault-suite-value-7f3a"
CONNECT_S, READ_S, ATTEMPTS = 1.0, 2.0, 2


def bounded_client(endpoint: S3Endpoint, **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "endpoint_url": endpoint.endpoint_url,
        "region_name": endpoint.region,
        "aws_access_key_id": KEY_ID,
        "aws_secret_access_key": SECRET,
        "connect_timeout_s": CONNECT_S,
        "read_timeout_s": READ_S,
        "max_attempts": ATTEMPTS,
        **overrides,
    }
    return BoundedS3Resource(**options).get_client()


def wait_bound() -> float:
    """A generous correctness bound (not a performance target) on how long a request may hang:
    every attempt's connect and read timeouts, botocore's backoff between attempts (under 1 s each
    at 2 attempts), requests already in flight finishing theirs (x3), and slack for a loaded machine."""
    return 3 * ATTEMPTS * (CONNECT_S + READ_S + 1) + 10


def result_folder(tmp_path: Path, big_mb: int = 0) -> Path:
    src = tmp_path / "scratch"
    (src / "sub").mkdir(parents=True)
    (src / "small.txt").write_text("small\n")
    (src / "sub" / "other.txt").write_text("other\n")
    if big_mb:
        with (src / "big.bin").open("wb") as handle:
            for _ in range(big_mb):
                handle.write(os.urandom(MB))
    return src


def start_unfinished_upload(client: Any, bucket: str, key: str) -> str:
    """What a run killed mid-upload leaves: a multipart upload with one part and no completion."""
    upload_id = str(client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"])
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * (5 * MB))
    return upload_id


def freeze_once_uploading(server: S3Process, bucket: str, found: dict[str, float]) -> threading.Thread:
    """A thread that SIGSTOPs ``server`` as soon as a multipart upload is under way in ``bucket``."""
    probe = server.endpoint.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=1)

    def watch() -> None:
        began = time.monotonic()
        while time.monotonic() - began < 60:
            try:
                if probe.list_multipart_uploads(Bucket=bucket).get("Uploads"):
                    server.freeze()
                    found["frozen_at"] = time.monotonic()
                    return
            except Exception:
                pass
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def wait_answering(endpoint: S3Endpoint, timeout_s: float = 30) -> None:
    probe = endpoint.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            probe.list_buckets()
            return
        except Exception:
            assert time.monotonic() < deadline, "the S3 server did not answer again"
            time.sleep(0.1)


def test_a_frozen_endpoint_fails_an_upload_within_the_timeouts_and_says_so(
    s3_process: S3Process, tmp_path: Path
) -> None:
    endpoint = s3_process.endpoint
    bucket = endpoint.new_bucket("frozen")
    storage = S3ResultsStorage(bounded_client(endpoint), bucket, "results")
    src = result_folder(tmp_path, big_mb=40)
    found: dict[str, float] = {}
    watcher = freeze_once_uploading(s3_process, bucket, found)
    began = time.monotonic()
    with pytest.raises(S3EndpointError) as info:
        storage.put_result(FP, src, {"n": 1}, {"_id": FP})
    failed_after = time.monotonic() - began
    watcher.join(timeout=5)
    assert "frozen_at" in found, "the server was meant to freeze in the middle of the upload"
    print(f"frozen S3 endpoint: the upload failed {failed_after:.1f} s after it began")
    assert failed_after < wait_bound()
    message = str(info.value)
    assert re.search(
        rf"^S3 endpoint {re.escape(endpoint.endpoint_url)} did not answer within 2 s \(2 attempts\) while "
        rf"(uploading|completing the upload of) s3://{bucket}/results/{FP}/",
        message,
    ), message
    assert "check that the server is up" in message and "S3_READ_TIMEOUT_S" in message
    assert KEY_ID not in message and SECRET not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__

    # Back again: the next write of the folder aborts what the frozen one left and stores it whole.
    s3_process.thaw()
    wait_answering(endpoint)
    again = S3ResultsStorage(bounded_client(endpoint), bucket, "results")
    again.put_result(FP, src, {"n": 1}, {"_id": FP})
    assert again.unfinished_uploads(f"results/{FP}/") == []
    names = sorted(f.name for f in again.list_files(FP))
    assert names == ["big.bin", "metadata.nd.json", "outputs.json", "small.txt", "sub/other.txt"]


def test_a_stopped_endpoint_fails_at_once_naming_it(s3_process: S3Process, tmp_path: Path) -> None:
    endpoint = s3_process.endpoint
    bucket = endpoint.new_bucket("stopped")
    storage = S3ResultsStorage(bounded_client(endpoint), bucket, "results")
    cache = S3InputCache(lambda: bounded_client(endpoint), tmp_path / "cache")
    s3_process.kill()
    began = time.monotonic()
    with pytest.raises(S3EndpointError) as info:
        storage.put_result(FP, result_folder(tmp_path), {"n": 1}, {"_id": FP})
    assert time.monotonic() - began < wait_bound()
    message = str(info.value)
    assert message.startswith(f"S3 endpoint {endpoint.endpoint_url} could not be reached (2 attempts"), (
        message
    )
    assert f"s3://{bucket}/results/{FP}/" in message and SECRET not in message
    with pytest.raises(S3EndpointError, match=rf"while downloading the input s3://{bucket}/in/a.nwb"):
        cache.local_path(f"s3://{bucket}/in/a.nwb")


@pytest.mark.parametrize("s3_server", ["moto", "seaweed"], indirect=True)
def test_uploads_a_killed_run_left_unfinished_are_aborted_before_the_folder_is_rewritten(
    s3_server: S3Endpoint, tmp_path: Path
) -> None:
    bucket = s3_server.new_bucket("leftover")
    client = s3_server.client()
    start_unfinished_upload(client, bucket, f"results/{FP}/big.bin")
    other = start_unfinished_upload(client, bucket, f"results/{OTHER_FP}/big.bin")
    storage = S3ResultsStorage(client, bucket, "results")
    assert len(storage.unfinished_uploads(f"results/{FP}/")) == 1
    storage.put_result(FP, result_folder(tmp_path), {"n": 1}, {"_id": FP})
    assert storage.unfinished_uploads(f"results/{FP}/") == []
    # Another fingerprint's upload is another run's business (only its claimant writes there).
    assert [u["UploadId"] for u in storage.unfinished_uploads(f"results/{OTHER_FP}/")] == [other]


def test_every_s3_client_of_the_definitions_has_the_configured_timeouts_and_retries(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        DAGSTER_HOME=tmp_path / "home",
        ANALYSIS_BUCKET="bucket/prefix",
        AWS_ENDPOINT_URL="http://127.0.0.1:9",
        S3_CONNECT_TIMEOUT_S=3,
        S3_READ_TIMEOUT_S=7,
        S3_MAX_ATTEMPTS=4,
        S3_RETRY_MODE="adaptive",
    )
    resources = build_resources(settings)
    clients = {
        "results": resources[RESULTS_IO_MANAGER_KEY].results.s3_client(),
        "inputs": resources["runtime"].s3_client(),
        # the inbox sensor opens its inbox with the "s3" resource's client factory
        "inbox": open_inbox("s3://inbox-bucket/jobs", resources["s3"].get_client).client,  # type: ignore[attr-defined]
    }
    for name, client in clients.items():
        config = client.meta.config
        assert (config.connect_timeout, config.read_timeout) == (3, 7), name
        assert config.retries == {"total_max_attempts": 4, "mode": "adaptive"}, name
        assert client.meta.endpoint_url == "http://127.0.0.1:9", name
