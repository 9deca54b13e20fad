"""S3 results storage and the S3 input cache, against real S3 servers on 127.0.0.1 (moto and SeaweedFS).

The core contracts run on both servers (``s3_server``); checks that need a moto feature (bucket policies
that deny writes) run on moto only. Nothing patches boto3: failures come from the server or the disk.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import shutil
import urllib.parse
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from analysis_wrapper.inputs import InputNotFoundError, resolve_inputs
from analysis_wrapper.resources.results_resources import storage_for_location
from analysis_wrapper.resources.results_storage import (
    OUTPUTS_FILE,
    RECORD_FILE,
    ResultsStorageError,
    json_bytes,
)
from analysis_wrapper.resources.s3_input_cache import S3InputCache
from analysis_wrapper.resources.s3_storage import DEFAULT_TRANSFER, MB, S3ResultsStorage
from analysis_wrapper.s3_uri import S3Uri
from analysis_wrapper_tests.s3_servers import S3Endpoint

FP = "a" * 64
PREFIX = "some/prefix"
FILES = {"a.csv": b"x\n1\n", "nested/deeper/b.bin": b"\0" * 1000, "z_top.txt": b"top"}


def scratch(tmp_path: Path, files: dict[str, bytes] = FILES) -> Path:
    src = tmp_path / "scratch"
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    return src


def record_for(storage: S3ResultsStorage, fingerprint: str = FP) -> dict[str, Any]:
    return {"_id": fingerprint, "name": fingerprint, "location": storage.uri(fingerprint)}


def folder_keys(s3: S3Endpoint, bucket: str, fingerprint: str = FP, prefix: str = PREFIX) -> set[str]:
    folder = f"{prefix}/{fingerprint}/"
    return {key[len(folder) :] for key in s3.objects(bucket, folder)}


def expected_etag(path: Path, part_size: int | None = None) -> str:
    """What S3 reports for ``path`` uploaded whole (the MD5) or in ``part_size`` parts (MD5 of part MD5s)."""
    data = path.read_bytes()
    if part_size is None:
        return hashlib.md5(data, usedforsecurity=False).hexdigest()
    parts = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    digests = b"".join(hashlib.md5(p, usedforsecurity=False).digest() for p in parts)
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(parts)}"


def etag_of(s3: S3Endpoint, bucket: str, key: str) -> str:
    return str(s3.client().head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 MB of incompressible bytes: three 16 MB parts under the default transfer config."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    rng = random.Random(0)
    with path.open("wb") as handle:
        for _ in range(40):
            handle.write(rng.randbytes(MB))
    return path


def scratch_with_big_file(tmp_path: Path, big_file: Path) -> Path:
    """``FILES`` and ``big.bin``: five 8 MiB parts."""
    src = scratch(tmp_path)
    shutil.copyfile(big_file, src / "big.bin")
    return src


# ---- S3ResultsStorage ------------------------------------------------------------------------------


def test_put_result_then_list_and_read_back(
    s3_server: S3Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.new_bucket()
    storage = S3ResultsStorage(s3_server.client(), bucket, f"/{PREFIX}/")
    record = record_for(storage)
    stored = storage.put_result(FP, scratch(tmp_path), {"n": 1}, record)

    names = [*sorted(FILES), OUTPUTS_FILE, RECORD_FILE]
    assert [s.name for s in stored] == names
    assert storage.uri(FP) == f"s3://{bucket}/{PREFIX}/{FP}"
    assert set(s3_server.objects(bucket)) == {f"{PREFIX}/{FP}/{name}" for name in names}
    assert {f.name: f.size for f in storage.list_files(FP)} == {s.name: s.size for s in stored}
    assert storage.list_files(FP)[0].size == len(FILES["a.csv"])
    for name, data in FILES.items():
        assert storage.read_bytes(FP, name) == data
    assert json.loads(storage.read_bytes(FP, OUTPUTS_FILE)) == {"n": 1}
    assert json.loads(storage.read_bytes(FP, RECORD_FILE)) == record
    with pytest.raises(ResultsStorageError, match="does not exist"):
        storage.read_bytes(FP, "missing.txt")
    assert storage.list_files("b" * 64) == []

    # A recorded location maps back to the same folder (boto3 takes the endpoint from the environment).
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    again, name = storage_for_location(record["location"])
    assert isinstance(again, S3ResultsStorage) and (again.bucket, again.prefix, name) == (bucket, PREFIX, FP)
    assert json.loads(again.read_bytes(name, OUTPUTS_FILE)) == {"n": 1}


def test_large_files_go_up_multipart_and_verify(
    s3_server: S3Endpoint, tmp_path: Path, big_file: Path
) -> None:
    bucket = s3_server.new_bucket()
    src = scratch(tmp_path, {"small.txt": b"small"})
    shutil.copyfile(big_file, src / "big.bin")
    storage = S3ResultsStorage(s3_server.client(), bucket, PREFIX)
    stored = storage.put_result(FP, src, {}, record_for(storage))

    assert {s.name: s.size for s in stored}["big.bin"] == 40 * MB
    big_etag = etag_of(s3_server, bucket, f"{PREFIX}/{FP}/big.bin")
    assert big_etag.endswith("-5")  # five 8 MiB parts, as awscli splits it
    assert big_etag == expected_etag(src / "big.bin", 8 * MB)
    assert storage.read_bytes(FP, "big.bin") == big_file.read_bytes()
    small_etag = etag_of(s3_server, bucket, f"{PREFIX}/{FP}/small.txt")
    assert small_etag == hashlib.md5(b"small", usedforsecurity=False).hexdigest()
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_sizes_at_the_edges_of_the_part_size(s3_server: S3Endpoint, tmp_path: Path) -> None:
    """An empty file, one of exactly 8 MiB (multipart, one part) and one a byte longer (two parts)."""
    bucket = s3_server.new_bucket()
    rng = random.Random(2)
    files = {
        "empty.txt": b"",
        "eight.bin": rng.randbytes(8 * MB),
        "eight_and_one.bin": rng.randbytes(8 * MB + 1),
    }
    src = scratch(tmp_path, files)
    storage = S3ResultsStorage(s3_server.client(), bucket, PREFIX)
    stored = storage.put_result(FP, src, {}, record_for(storage))

    assert {s.name: s.size for s in stored} == {
        **{name: len(data) for name, data in files.items()},
        OUTPUTS_FILE: len(json_bytes({})),
        RECORD_FILE: len(json_bytes(record_for(storage))),
    }
    for name, data in files.items():
        assert storage.read_bytes(FP, name) == data
    assert etag_of(s3_server, bucket, f"{PREFIX}/{FP}/empty.txt") == expected_etag(src / "empty.txt")
    assert etag_of(s3_server, bucket, f"{PREFIX}/{FP}/eight.bin") == expected_etag(src / "eight.bin", 8 * MB)
    assert etag_of(s3_server, bucket, f"{PREFIX}/{FP}/eight_and_one.bin").endswith("-2")


def test_part_size_below_the_s3_minimum_is_raised_like_boto3_does(
    s3_server: S3Endpoint, tmp_path: Path
) -> None:
    """boto3 raises a 1 MiB part size to S3's 5 MiB minimum; so do we, and verify those parts."""
    bucket = s3_server.new_bucket()
    src = scratch(tmp_path, {"twelve.bin": random.Random(1).randbytes(12 * MB)})
    transfer = TransferConfig(
        multipart_threshold=2 * MB, multipart_chunksize=1 * MB, preferred_transfer_client="classic"
    )
    storage = S3ResultsStorage(s3_server.client(), bucket, PREFIX, transfer=transfer)
    storage.put_result(FP, src, {}, record_for(storage))

    etag = etag_of(s3_server, bucket, f"{PREFIX}/{FP}/twelve.bin")
    assert etag.endswith("-3")  # 5 + 5 + 2 MiB, not twelve 1 MiB parts
    assert etag == expected_etag(src / "twelve.bin", 5 * MB)


def test_default_transfer_is_boto3s_own_manager() -> None:
    # Downloads and copies go through boto3's transfer manager; with awscrt installed, boto3's "auto"
    # may pick the CRT manager, which ignores these part sizes and this concurrency.
    assert DEFAULT_TRANSFER.preferred_transfer_client == "classic"


def test_concurrency_never_exceeds_the_clients_connection_pool(
    seaweed_s3: S3Endpoint, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """More threads than pooled connections would open (and drop) a connection per request; urllib3
    warns when that happens. 40 files through a client with 3 connections: 3 at a time, no warning."""
    bucket = seaweed_s3.new_bucket()
    assert S3ResultsStorage(seaweed_s3.client(), bucket).max_concurrency() == 10
    storage = S3ResultsStorage(seaweed_s3.client(max_pool_connections=3), bucket, PREFIX)
    assert storage.max_concurrency() == 3
    files = {f"f{i:02d}.bin": random.Random(i).randbytes(1000) for i in range(40)}
    with caplog.at_level(logging.WARNING, logger="urllib3"):
        stored = storage.put_result(FP, scratch(tmp_path, files), {}, record_for(storage))
    assert len(stored) == 42
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]


def test_a_file_whose_size_lies_fails_and_writes_no_record(s3_server: S3Endpoint, tmp_path: Path) -> None:
    """A file whose reported size lies (like /proc files: size 0, content not empty) cannot be stored
    as it is: the upload fails and neither outputs.json nor metadata.nd.json is written."""
    bucket = s3_server.new_bucket()
    src = scratch(tmp_path)
    (src / "status.txt").symlink_to("/proc/self/status")
    assert (src / "status.txt").stat().st_size == 0 and (src / "status.txt").read_bytes()
    storage = S3ResultsStorage(s3_server.client(), bucket, PREFIX)

    with pytest.raises(ResultsStorageError, match=r"status\.txt: found more bytes where its size says 0"):
        storage.put_result(FP, src, {"n": 1}, record_for(storage))
    # The first failure stops the upload: some of the other files may have gone up, never the JSON files.
    assert folder_keys(s3_server, bucket) <= set(FILES)


def request_url(request: Any) -> tuple[str, dict[str, list[str]]]:
    url = urllib.parse.urlsplit(request.url)
    return urllib.parse.unquote(url.path), urllib.parse.parse_qs(url.query)


def on_upload(name: str, part: int | None, action: Callable[[Any], None]) -> Callable[..., None]:
    """A botocore ``before-send`` handler (the real client, talking to the real server) running ``action``
    on the request uploading ``name`` (or its part ``part``), once boto3 has signed it and computed
    its CRC32."""

    def handler(request: Any, **kwargs: Any) -> None:
        path, query = request_url(request)
        if path.endswith(f"/{name}") and part in (None, int(query.get("partNumber", ["0"])[0])):
            action(request)

    return handler


def damage(request: Any) -> None:
    """The request's bytes damaged on the way: its first byte changed after its CRC32 was computed."""
    body = request.body
    data = body.read() if hasattr(body, "read") else bytes(body)
    request.body = bytes([data[0] ^ 0xFF]) + data[1:]


@pytest.mark.parametrize(
    ("operation", "name", "part"),
    [("PutObject", "a.csv", None), ("PutObject", RECORD_FILE, None), ("UploadPart", "big.bin", 2)],
)
def test_bytes_damaged_on_the_way_are_refused_and_no_record_is_written(
    seaweed_s3: S3Endpoint, tmp_path: Path, big_file: Path, operation: str, name: str, part: int | None
) -> None:
    """boto3 sends the CRC32 of each request's bytes; S3 (SeaweedFS here; moto checks none) compares it
    with the bytes it received and refuses them (BadDigest). A damaged file or part stops the folder
    before the record (outputs.json and metadata.nd.json are written last) and leaves no multipart
    upload behind."""
    bucket = seaweed_s3.new_bucket()
    src = scratch_with_big_file(tmp_path, big_file)
    client = seaweed_s3.client()
    client.meta.events.register(f"before-send.s3.{operation}", on_upload(name, part, damage))
    storage = S3ResultsStorage(client, bucket, PREFIX)

    with pytest.raises(ClientError, match="BadDigest"):
        storage.put_result(FP, src, {"n": 1}, record_for(storage))
    keys = folder_keys(seaweed_s3, bucket)
    assert RECORD_FILE not in keys and (name == RECORD_FILE or OUTPUTS_FILE not in keys)
    assert seaweed_s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    if operation == "UploadPart":
        assert "big.bin" not in keys


def crc32(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode("ascii")


def test_every_upload_carries_its_crc32_and_s3_keeps_it(
    seaweed_s3: S3Endpoint, tmp_path: Path, big_file: Path
) -> None:
    """What boto3 sends: each PutObject and UploadPart with the CRC32 of its bytes, the multipart upload
    created for CRC32 and completed with each part's; S3 reports each object's CRC32 back (big.bin's
    a composite of its five parts)."""
    bucket = seaweed_s3.new_bucket()
    src = scratch_with_big_file(tmp_path, big_file)
    client = seaweed_s3.client()
    sent: list[tuple[str, Any, Any]] = []  # operation, its CRC32 (or algorithm) header, its body

    def note(request: Any, event_name: str, **kwargs: Any) -> None:
        headers = request.headers
        checksum = headers.get("x-amz-checksum-crc32") or headers.get("x-amz-checksum-algorithm")
        sent.append((event_name.rsplit(".", 1)[-1], checksum, request.body))

    client.meta.events.register("before-send.s3", note)
    storage = S3ResultsStorage(client, bucket, PREFIX)
    storage.put_result(FP, src, {"n": 1}, record_for(storage))

    uploads = [checksum for op, checksum, _ in sent if op in {"PutObject", "UploadPart"}]
    assert len(uploads) == len(FILES) + 5 + 2 and all(uploads)
    assert [op for op, _, _ in sent].count("UploadPart") == 5
    assert [c for op, c, _ in sent if op == "CreateMultipartUpload"] == [b"CRC32"]
    (completion,) = [body for op, _, body in sent if op == "CompleteMultipartUpload"]
    assert completion.count(b"<ChecksumCRC32>") == 5
    for name, data in FILES.items():
        head = client.head_object(Bucket=bucket, Key=f"{PREFIX}/{FP}/{name}", ChecksumMode="ENABLED")
        assert head["ChecksumCRC32"] == crc32(data)
    big = client.head_object(Bucket=bucket, Key=f"{PREFIX}/{FP}/big.bin", ChecksumMode="ENABLED")
    assert big["ChecksumCRC32"].endswith("-5")


def test_a_file_gone_from_the_folder_before_the_record_fails(s3_server: S3Endpoint, tmp_path: Path) -> None:
    """Kept here, as boto3 cannot know it: before the record, one listing shows every file with its
    size. Another writer clears a.csv between the upload and that listing: no record is written."""
    bucket = s3_server.new_bucket()
    client = s3_server.client()
    listings: list[int] = []

    def clear_on_second_listing(**kwargs: Any) -> None:
        listings.append(1)
        if len(listings) == 2:  # the first lists the leftovers, the second checks the folder
            s3_server.client().delete_object(Bucket=bucket, Key=f"{PREFIX}/{FP}/a.csv")

    client.meta.events.register("before-call.s3.ListObjectsV2", clear_on_second_listing)
    storage = S3ResultsStorage(client, bucket, PREFIX)
    with pytest.raises(
        ResultsStorageError, match=rf"s3://{bucket}/{PREFIX}/{FP}/a\.csv: missing, expected 4"
    ):
        storage.put_result(FP, scratch(tmp_path), {"n": 1}, record_for(storage))
    assert folder_keys(s3_server, bucket) == set(FILES) - {"a.csv"}


def test_a_file_that_changes_while_it_goes_up_fails(
    seaweed_s3: S3Endpoint, tmp_path: Path, big_file: Path
) -> None:
    bucket = seaweed_s3.new_bucket()
    src = scratch_with_big_file(tmp_path, big_file)

    def append(request: Any) -> None:
        with (src / "big.bin").open("ab") as handle:
            handle.write(b"written after the upload started")

    client = seaweed_s3.client()
    client.meta.events.register("before-send.s3.UploadPart", on_upload("big.bin", 1, append))
    storage = S3ResultsStorage(client, bucket, PREFIX)
    with pytest.raises(
        ResultsStorageError, match=r"big\.bin.*(changed while being uploaded|found more bytes)"
    ):
        storage.put_result(FP, src, {"n": 1}, record_for(storage))
    assert RECORD_FILE not in folder_keys(seaweed_s3, bucket)


def test_a_failed_part_aborts_its_multipart_upload(
    s3_server: S3Endpoint, tmp_path: Path, big_file: Path
) -> None:
    bucket = s3_server.new_bucket()
    src = scratch_with_big_file(tmp_path, big_file)

    def fail(request: Any) -> None:
        raise OSError("connection reset while sending part 3")

    client = s3_server.client()
    client.meta.events.register("before-send.s3.UploadPart", on_upload("big.bin", 3, fail))
    storage = S3ResultsStorage(client, bucket, PREFIX)
    with pytest.raises(OSError, match="part 3"):
        storage.put_result(FP, src, {"n": 1}, record_for(storage))
    keys = folder_keys(s3_server, bucket)
    assert "big.bin" not in keys and RECORD_FILE not in keys
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def deny_writes(s3: S3Endpoint, bucket: str, pattern: str) -> None:
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": f"arn:aws:s3:::{bucket}/{pattern}",
            }
        ],
    }
    s3.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


def test_record_is_written_only_after_every_result_file(moto_s3: S3Endpoint, tmp_path: Path) -> None:
    """moto enforces a bucket policy that denies writes under nested/: that file fails (403), and
    outputs.json and metadata.nd.json never appear; once allowed, all go up."""
    bucket = moto_s3.new_bucket()
    deny_writes(moto_s3, bucket, f"{PREFIX}/*/nested/*")
    storage = S3ResultsStorage(moto_s3.client(), bucket, PREFIX)
    src = scratch(tmp_path)

    with pytest.raises(Exception, match=r"403|Forbidden|AccessDenied"):
        storage.put_result(FP, src, {"n": 1}, record_for(storage))
    # The first failure stops the upload: files already on their way finish, nothing new starts.
    assert folder_keys(moto_s3, bucket) <= {"a.csv", "z_top.txt"}

    moto_s3.client().delete_bucket_policy(Bucket=bucket)
    storage.put_result(FP, src, {"n": 1}, record_for(storage))
    assert folder_keys(moto_s3, bucket) == {*FILES, OUTPUTS_FILE, RECORD_FILE}


def test_leftovers_of_a_dead_run_are_removed_and_neighbours_kept(
    s3_server: S3Endpoint, tmp_path: Path
) -> None:
    bucket = s3_server.new_bucket()
    client = s3_server.client()
    leftovers = ["stale.txt", "nested/old.bin", OUTPUTS_FILE]
    for name in leftovers:
        client.put_object(Bucket=bucket, Key=f"{PREFIX}/{FP}/{name}", Body=b"from a dead run")
    neighbours = [f"{PREFIX}/{FP}.superseded-20260101T000000Z/keep.txt", f"{PREFIX}/{'b' * 64}/keep.txt"]
    for key in neighbours:
        client.put_object(Bucket=bucket, Key=key, Body=b"keep")

    storage = S3ResultsStorage(client, bucket, PREFIX)
    storage.put_result(FP, scratch(tmp_path), {"n": 2}, record_for(storage))

    assert folder_keys(s3_server, bucket) == {*FILES, OUTPUTS_FILE, RECORD_FILE}
    assert json.loads(storage.read_bytes(FP, OUTPUTS_FILE)) == {"n": 2}
    assert set(neighbours) <= set(s3_server.objects(bucket))


def test_move_aside_copies_then_deletes(s3_server: S3Endpoint, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    storage = S3ResultsStorage(s3_server.client(), bucket, PREFIX)
    storage.put_result(FP, scratch(tmp_path), {"n": 1}, record_for(storage))
    other = "c" * 64
    storage.put_result(other, scratch(tmp_path), {"n": 3}, record_for(storage, other))
    before = {f.name: f.size for f in storage.list_files(FP)}

    suffix = ".superseded-20260101T000000000000Z"
    assert storage.move_aside(FP, suffix) == f"s3://{bucket}/{PREFIX}/{FP}{suffix}"

    assert storage.list_files(FP) == []
    assert {f.name: f.size for f in storage.list_files(FP + suffix)} == before
    assert storage.read_bytes(FP + suffix, "nested/deeper/b.bin") == FILES["nested/deeper/b.bin"]
    assert json.loads(storage.read_bytes(FP + suffix, OUTPUTS_FILE)) == {"n": 1}
    assert json.loads(storage.read_bytes(other, OUTPUTS_FILE)) == {"n": 3}  # untouched
    assert storage.move_aside("d" * 64, suffix) is None


def split_bucket(setting: str) -> tuple[str, str]:
    root = S3Uri.from_setting(setting, "ANALYSIS_BUCKET")
    return root.bucket, root.key


def test_split_bucket_and_root_of_a_bucket(moto_s3: S3Endpoint, tmp_path: Path) -> None:
    assert split_bucket("bkt/some/prefix/") == ("bkt", "some/prefix")
    assert split_bucket("s3://bkt") == ("bkt", "")
    with pytest.raises(ValueError, match="names no bucket"):
        split_bucket("s3:///")
    bucket = moto_s3.new_bucket()
    storage = S3ResultsStorage.from_bucket_setting(bucket, client=moto_s3.client())
    storage.put_result(FP, scratch(tmp_path), {"n": 1}, record_for(storage))
    assert storage.uri(FP) == f"s3://{bucket}/{FP}"
    assert f"{FP}/{RECORD_FILE}" in moto_s3.objects(bucket)


# ---- S3InputCache --------------------------------------------------------------------------------


class CountingFactory:
    """A client factory that counts how often the cache asked for a client."""

    def __init__(self, s3: S3Endpoint):
        self.s3 = s3
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.s3.client()


def test_input_cache_downloads_an_object_once_per_run(s3_server: S3Endpoint, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    key = "data/ecephys_1/ecephys_1.nwb"
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=b"nwb bytes")
    factory = CountingFactory(s3_server)
    cache = S3InputCache(factory, tmp_path / "inputs")
    uri = f"s3://{bucket}/{key}"

    path = cache.local_path(uri)
    assert path.name == "ecephys_1.nwb" and path.read_bytes() == b"nwb bytes"
    assert path.is_relative_to(tmp_path / "inputs")
    first = path.stat()

    # Gone from S3: a second request within the run must not go back to S3 at all.
    s3_server.client().delete_object(Bucket=bucket, Key=key)
    again = cache.local_path(uri)
    assert again == path and again.read_bytes() == b"nwb bytes"
    assert (again.stat().st_ino, again.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    assert factory.calls == 1

    cache.cleanup()
    assert not (tmp_path / "inputs").exists()
    with pytest.raises(FileNotFoundError):  # the cache forgot it: this goes to S3, where it is gone
        cache.local_path(uri)


def test_input_cache_downloads_a_prefix_as_a_folder(s3_server: S3Endpoint, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    client = s3_server.client()
    for key, body in {
        "data/asset/session.nwb": b"nwb",
        "data/asset/sub/meta.json": b"{}",
        "data/asset-2/other.nwb": b"not this one",
        "data/asset/": b"",  # "folder" markers, as the S3 console writes them
        "data/asset/empty/": b"",
    }.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    cache = S3InputCache(s3_server.client, tmp_path / "inputs")

    for uri in (f"s3://{bucket}/data/asset", f"s3://{bucket}/data/asset/"):
        folder = cache.local_path(uri)
        assert folder.is_dir()
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        assert files == {"session.nwb": b"nwb", "sub/meta.json": b"{}"}

    whole = cache.local_path(f"s3://{bucket}")  # a whole bucket is a prefix too
    assert (whole / "data" / "asset-2" / "other.nwb").read_bytes() == b"not this one"
    cache.cleanup()
    assert not (tmp_path / "inputs").exists()


def test_input_cache_missing_inputs(moto_s3: S3Endpoint, tmp_path: Path) -> None:
    bucket = moto_s3.new_bucket()
    moto_s3.client().put_object(Bucket=bucket, Key="data/present.nwb", Body=b"x")
    cache = S3InputCache(moto_s3.client, tmp_path / "inputs")
    for uri in (
        f"s3://{bucket}/data/absent.nwb",
        f"s3://{bucket}/nothing/here/",
        f"s3://{bucket}/data/present",  # a key's leading part is neither an object nor a prefix
        "s3://no-such-bucket-for-inputs/data/x.nwb",
    ):
        with pytest.raises(FileNotFoundError, match="no such object or prefix"):
            cache.local_path(uri)
    with pytest.raises(InputNotFoundError, match=r"job\.json: input \[1\]"):
        resolve_inputs(
            [f"s3://{bucket}/data/present.nwb", f"s3://{bucket}/data/absent.nwb"], "job.json", cache
        )
    cache.cleanup()


def test_input_cache_root_is_not_created_until_needed(moto_s3: S3Endpoint, tmp_path: Path) -> None:
    made: list[Callable[[], Any]] = []
    cache = S3InputCache(lambda: made.append(moto_s3.client) or moto_s3.client(), tmp_path / "inputs")
    assert resolve_inputs([str(tmp_path)], "job.json", cache) == [tmp_path]
    assert made == [] and not (tmp_path / "inputs").exists()
    cache.cleanup()
