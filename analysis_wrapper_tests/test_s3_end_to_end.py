"""Results and inputs on S3, end to end: the CLI on SeaweedFS, and the IO manager on moto.

Every S3 request goes over HTTP to a server started by the fixtures in ``s3_servers``; failures are real
server answers (a bucket policy that denies writes), never patched clients.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetsDefinition, asset, materialize
from pydantic import BaseModel

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.cli import main
from analysis_wrapper.resources.record_store import close_all_stores
from analysis_wrapper.resources.results_storage import OUTPUTS_FILE, RECORD_FILE
from analysis_wrapper.store.base import JobState
from analysis_wrapper_tests.harness import write_job
from analysis_wrapper_tests.mongo_server import MongoServer, fresh_database_name
from analysis_wrapper_tests.s3_servers import S3Endpoint
from analysis_wrapper_tests.sample_analyses import EchoOutputs, echo

ISI_FILES = {"isi_violations.csv", "isi_violations.png", OUTPUTS_FILE, RECORD_FILE}


# ---- the CLI on SeaweedFS -----------------------------------------------------------------------


@pytest.fixture
def s3_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_repo: Path) -> Iterator[Path]:
    """A CLI working folder whose scratch space (the temp dir) is ``tmp/`` inside it."""
    monkeypatch.chdir(tmp_path)
    for name in (
        "ANALYSIS_BUCKET",
        "DOCDB_URI",
        "RESULTS_ROOT",
        "ALLOW_DIRTY",
        "GIT_COMMIT",
        "AWS_ENDPOINT_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    # The CLI writes DAGSTER_HOME into os.environ; setting it here makes monkeypatch restore it.
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / ".dagster_home"))
    monkeypatch.setenv("DRY_RUN", "0")
    monkeypatch.setenv("CODE_REPOSITORY", str(clean_repo))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    yield tmp_path
    close_all_stores()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    close_all_stores()
    return code, capsys.readouterr().out


def upload_example_jobs(s3: S3Endpoint, example_jobs: list[Path], bucket: str, jobs_dir: Path) -> list[str]:
    """Upload the example NWB assets to ``s3://bucket/data/<asset>/`` and write copies of the job files
    that name them by s3:// URI (as the AIND dispatcher does). Returns the NWB object URIs."""
    jobs_dir.mkdir(parents=True)
    nwb_uris = []
    for job_file in example_jobs:
        job = json.loads(job_file.read_text())
        asset_dir, nwb = Path(job["s3_location"][0]), Path(job["file_location"][0])
        uploaded = s3.upload_tree(asset_dir, bucket, f"data/{asset_dir.name}")
        job["s3_location"] = [f"s3://{bucket}/data/{asset_dir.name}"]
        job["file_location"] = [uploaded[nwb]]
        nwb_uris.append(uploaded[nwb])
        (jobs_dir / job_file.name).write_text(json.dumps(job, indent=2))
    return nwb_uris


@pytest.mark.parametrize("records", ["sqlite", "mongodb"])
def test_cli_runs_s3_jobs_on_seaweedfs_then_finds_them_done(
    seaweed_s3: S3Endpoint,
    s3_workdir: Path,
    example_jobs: list[Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    records: str,
) -> None:
    """The production shape on real servers: results in S3 (SeaweedFS), and jobs, records and leases in
    SQLite or in MongoDB (SecantusDB)."""
    bucket = seaweed_s3.new_bucket("e2e")
    nwb_uris = upload_example_jobs(seaweed_s3, example_jobs, bucket, s3_workdir / "jobs")
    monkeypatch.setenv("ANALYSIS_BUCKET", f"{bucket}/some/prefix")
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweed_s3.endpoint_url)
    database = fresh_database_name("e2e")
    if records == "mongodb":
        server: MongoServer = request.getfixturevalue("mongo_server")
        monkeypatch.setenv("DOCDB_URI", server.uri)
        monkeypatch.setenv("DOCDB_DATABASE", database)

    code, out = cli(capsys, "run", "jobs")
    assert code == 0, out
    assert "3 job(s): 3 done, 0 already done, 0 dry run, 0 failed; 0 file(s) rejected" in out

    code, out = cli(capsys, "results", "--json")
    found = json.loads(out)
    assert code == 0 and len(found) == 3
    for record in found:
        fingerprint = record["_id"]
        assert record["location"] == f"s3://{bucket}/some/prefix/{fingerprint}"
        folder = f"some/prefix/{fingerprint}/"
        assert {k[len(folder) :] for k in seaweed_s3.objects(bucket, folder)} == ISI_FILES
        body = seaweed_s3.client().get_object(Bucket=bucket, Key=folder + RECORD_FILE)["Body"].read()
        stored = json.loads(body)
        assert stored["_id"] == fingerprint and stored["location"] == record["location"]
    assert sorted(u for r in found for u in r["analysis_wrapper"]["inputs"]) == sorted(nwb_uris)
    assets = sorted(
        d["url"] for r in found for d in r["processing"]["data_processes"][0]["code"]["input_data"]
    )
    assert assets == sorted(uri.rsplit("/", 1)[0] for uri in nwb_uris)
    assert not (s3_workdir / "analysis_results").exists()
    assert sorted(p.name for p in (s3_workdir / "tmp").iterdir()) == []  # scratch and input caches gone
    sqlite_file = s3_workdir / ".dagster_home" / "analysis_records.sqlite"
    if records == "mongodb":  # everything went to the server, nothing to a local store
        client = server.client()
        try:
            stored_ids = sorted(d["_id"] for d in client[database]["isi_violations"].find({}, {"_id": 1}))
            jobs = list(client[database]["analysis_wrapper_jobs"].find({}, {"state": 1}))
            assert not list(client[database]["analysis_wrapper_leases"].find({}))  # all released
        finally:
            client.close()
        assert stored_ids == sorted(r["_id"] for r in found)
        assert sorted(j["state"] for j in jobs) == ["done"] * 3
        assert not sqlite_file.exists()
    else:
        assert sqlite_file.is_file()

    listing = seaweed_s3.objects(bucket)
    code, out = cli(capsys, "run", "jobs")
    assert code == 0, out
    assert sum(line.startswith("already done") for line in out.splitlines()) == 3
    assert "0 done, 3 already done" in out
    assert seaweed_s3.objects(bucket) == listing  # same keys, sizes, ETags and LastModified


# ---- the IO manager on moto ---------------------------------------------------------------------


class RunLogParams(BaseModel):
    analysis_name: str = "runlog"


class RunLogOutputs(BaseModel):
    n_inputs: int


def run_runlog(job: Any, params: RunLogParams, results_dir: Path, logger: Any) -> RunLogOutputs:
    """Like many real analyses, writes a log whose name differs from run to run."""
    (results_dir / "summary.txt").write_text(f"{len(job.input_paths)} inputs\n")
    (results_dir / "sub").mkdir()
    (results_dir / "sub" / "detail.txt").write_text("detail\n")
    (results_dir / "logs").mkdir()
    (results_dir / "logs" / f"run-{uuid.uuid4().hex}.log").write_text("log\n")
    return RunLogOutputs(n_inputs=len(job.input_paths))


runlog = Analysis(name="runlog", version="1.0", params=RunLogParams, outputs=RunLogOutputs, run=run_runlog)


def keys_under(s3: S3Endpoint, bucket: str, folder: str) -> set[str]:
    folder = folder.rstrip("/") + "/"
    return {key[len(folder) :] for key in s3.objects(bucket, folder)}


def input_object(s3: S3Endpoint, bucket: str, body: bytes = b"12345") -> str:
    s3.client().put_object(Bucket=bucket, Key="inputs/asset/data.bin", Body=body)
    return f"s3://{bucket}/inputs/asset/data.bin"


def test_upload_failing_halfway_leaves_no_record_and_the_next_run_completes(
    moto_s3: S3Endpoint, harness_factory: Any, tmp_path: Path
) -> None:
    bucket = moto_s3.new_bucket()
    h = harness_factory([runlog], ANALYSIS_BUCKET=f"{bucket}/results", AWS_ENDPOINT_URL=moto_s3.endpoint_url)
    (job,) = h.submit([write_job(tmp_path / "jobs", [input_object(moto_s3, bucket)], analysis="runlog")])
    folder = f"results/{job.fingerprint}"
    # moto enforces bucket policies: writes under sub/ are refused (403), the other files go up.
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": f"arn:aws:s3:::{bucket}/results/*/sub/*",
            }
        ],
    }
    moto_s3.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))

    result = h.materialize("runlog", job.partition_key, raise_on_error=False)
    assert not result.success
    entry = h.store.get_job("runlog", job.partition_key)
    assert entry.state == JobState.FAILED
    assert "storing results failed" in entry.last_error and "403" in entry.last_error
    assert h.store.get_record("runlog", job.fingerprint) is None
    partial = keys_under(moto_s3, bucket, folder)
    dead_logs = {k for k in partial if k.startswith("logs/")}
    # Half a folder at most: no outputs.json, no metadata.nd.json. Which of the other files landed
    # depends on the transfer manager, which cancels the uploads not yet started at the first failure.
    assert len(dead_logs) <= 1 and partial - dead_logs <= {"summary.txt"}

    moto_s3.client().delete_bucket_policy(Bucket=bucket)
    assert h.materialize("runlog", job.partition_key).success
    record = h.store.get_record("runlog", job.fingerprint)
    assert record is not None and record["location"] == f"s3://{bucket}/{folder}"
    entry = h.store.get_job("runlog", job.partition_key)
    assert entry.state == JobState.DONE and entry.attempts == 2
    files = keys_under(moto_s3, bucket, folder)
    (new_log,) = [k for k in files if k.startswith("logs/")]
    assert new_log not in dead_logs
    assert files == {"summary.txt", "sub/detail.txt", new_log, OUTPUTS_FILE, RECORD_FILE}


def test_force_on_s3_moves_the_old_folder_aside_and_keeps_its_record(
    moto_s3: S3Endpoint, harness_factory: Any, tmp_path: Path
) -> None:
    bucket = moto_s3.new_bucket()
    h = harness_factory([echo], ANALYSIS_BUCKET=f"{bucket}/prefix", AWS_ENDPOINT_URL=moto_s3.endpoint_url)
    (job,) = h.submit([write_job(tmp_path / "jobs", [input_object(moto_s3, bucket)])])
    fp = job.fingerprint
    first = h.materialize("echo", job.partition_key)
    assert first.success
    forced = h.materialize("echo", job.partition_key, force=True)
    assert forced.success

    records = h.store.find_records("echo", include_superseded=True)
    (old,) = [r for r in records if r["_id"] != fp]
    new = h.store.get_record("echo", fp)
    assert old["_id"].startswith(f"{fp}.superseded-")
    assert old["analysis_wrapper"]["superseded_by"] == fp
    assert old["analysis_wrapper"]["run_id"] == first.run_id
    assert new["analysis_wrapper"]["run_id"] == forced.run_id
    assert old["location"] == f"s3://{bucket}/prefix/{old['_id']}"
    assert new["location"] == f"s3://{bucket}/prefix/{fp}"

    expected = {"echo.txt", "sub/sizes.txt", OUTPUTS_FILE, RECORD_FILE}
    assert keys_under(moto_s3, bucket, f"prefix/{old['_id']}") == expected
    assert keys_under(moto_s3, bucket, f"prefix/{fp}") == expected
    client = moto_s3.client()
    for folder, run_id in ((old["_id"], first.run_id), (fp, forced.run_id)):
        body = client.get_object(Bucket=bucket, Key=f"prefix/{folder}/{RECORD_FILE}")["Body"].read()
        assert json.loads(body)["analysis_wrapper"]["run_id"] == run_id
    assert {k.split("/")[1] for k in moto_s3.objects(bucket, "prefix/")} == {fp, old["_id"]}


def materialize_downstream(h: Any, key: str) -> list[Any]:
    echo_asset: AssetsDefinition = h.built["echo"].asset
    seen: list[Any] = []

    @asset(partitions_def=h.built["echo"].partitions)
    def doubled(echo_result: EchoOutputs) -> None:
        seen.append(echo_result)

    result = materialize(
        [echo_asset.to_source_asset(), doubled],
        instance=h.instance,
        partition_key=key,
        resources=h.resources,
        selection=[doubled],
        raise_on_error=False,
    )
    errors = [e.step_failure_data.error.message for e in result.all_events if e.is_step_failure]
    assert result.success, errors
    return seen


def test_io_manager_loads_outputs_from_s3_for_downstream_assets(
    moto_s3: S3Endpoint, harness_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_ENDPOINT_URL in the environment, as the CLI and `dagster dev` see it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint_url)
    bucket = moto_s3.new_bucket()
    h = harness_factory([echo], ANALYSIS_BUCKET=f"{bucket}/prefix", AWS_ENDPOINT_URL=moto_s3.endpoint_url)
    (job,) = h.submit([write_job(tmp_path / "jobs", [input_object(moto_s3, bucket, b"x" * 10)])])
    assert h.materialize("echo", job.partition_key).success
    assert h.store.get_record("echo", job.fingerprint)["location"].startswith(f"s3://{bucket}/prefix/")

    (outputs,) = materialize_downstream(h, job.partition_key)
    assert outputs == EchoOutputs(n_inputs=1, total_bytes=10.0)


def test_io_manager_reads_outputs_through_the_configured_endpoint(
    moto_s3: S3Endpoint, harness_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_ENDPOINT_URL given in settings only (a settings.env file): results go to that server, so
    reading them back for a downstream asset must use it too, not boto3's default endpoint.

    Fails while ResultsIOManager.load_input builds its storage with storage_for_location(), whose
    S3ResultsStorage.from_bucket_setting() makes a fresh boto3.client("s3") that ignores the resource.
    """
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # the wrong endpoint fails fast
    bucket = moto_s3.new_bucket()
    h = harness_factory([echo], ANALYSIS_BUCKET=f"{bucket}/prefix", AWS_ENDPOINT_URL=moto_s3.endpoint_url)
    (job,) = h.submit([write_job(tmp_path / "jobs", [input_object(moto_s3, bucket, b"x" * 10)])])
    assert h.materialize("echo", job.partition_key).success

    (outputs,) = materialize_downstream(h, job.partition_key)
    assert outputs == EchoOutputs(n_inputs=1, total_bytes=10.0)
