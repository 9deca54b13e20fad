"""Fault suite, outages: S3 stopped and S3 frozen in the middle of a run, the SQLite store locked by
another process beyond its busy timeout, the MongoDB server (SecantusDB) killed mid-run and started again
on its port, and an inbox sensor tick with the store down.

Every outage must give a clear error within a bounded time (from the settings, generously: this is a
correctness bound, not a performance target), mark nothing done and record nothing; once the service is
back, one more run records each job exactly once and leaves nothing behind
(:meth:`Workspace.check_recovered`); a tick with the store down keeps every inbox file where it is, and
the next tick registers them all. The counts go to the suite's table: ``outages``: injected / recovered.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, Definitions, SensorResult, build_sensor_context

from analysis_wrapper.code_location import build_analysis_set, build_resources
from analysis_wrapper.resources.record_store import close_all_stores
from analysis_wrapper.sensors import SensorSettings, build_inbox_sensor
from analysis_wrapper.store.base import JobState
from analysis_wrapper_tests.faults import report
from analysis_wrapper_tests.faults.fault_analysis import NAME, faulty
from analysis_wrapper_tests.faults.processes import S3_WAIT_BOUND_S, Workspace, sqlite_locked, wait_until
from analysis_wrapper_tests.harness import make_settings, write_job
from analysis_wrapper_tests.mongo_server import MongoServerFactory, fresh_database_name
from analysis_wrapper_tests.s3_servers import S3Process

pytestmark = pytest.mark.slow

COUNTS = {"injected": 0, "recovered": 0}
STORE_WAIT_S = 2  # STORE_BUSY_TIMEOUT_S and DOCDB_TIMEOUT_MS / 1000 in these tests
# A run that meets a store outage waits at most a few store timeouts per job (the commit, marking the
# job failed, the next job's start) and the run's own bookkeeping: generous, with slack for the machine.
STORE_OUTAGE_BOUND_S = 20 * STORE_WAIT_S + 60


@pytest.fixture(scope="module", autouse=True)
def outage_report() -> Iterator[None]:
    yield
    report.record("outages", **COUNTS)


@pytest.fixture
def ws(tmp_path: Path, clean_repo: Path) -> Iterator[Workspace]:
    made = Workspace.make(tmp_path, clean_repo)
    try:
        yield made
    finally:
        made.close()


def nothing_done(ws: Workspace) -> None:
    assert ws.records() == {}
    states = {k: e.state for k, e in ws.jobs().items()}
    assert JobState.DONE not in states.values(), states


def recovered(ws: Workspace, jobs: list[Path]) -> None:
    again = ws.run("run", str(ws.root / "jobs"), label="rerun")
    assert again.popen.returncode == 0, again.output()
    ws.check_recovered(jobs)
    COUNTS["injected"] += 1
    COUNTS["recovered"] += len(jobs)


def test_s3_stopped_mid_run_fails_the_jobs_at_once_and_the_next_run_records_them(
    ws: Workspace, s3_process: S3Process
) -> None:
    endpoint = s3_process.endpoint
    ws.use_s3(endpoint, endpoint.new_bucket("stopped"))
    jobs = [ws.job(tag="a"), ws.job(tag="b")]
    ws.hold()
    proc = ws.start("run", str(ws.root / "jobs"))
    wait_until("an analysis to be running", lambda: bool(ws.started()), 90, [proc])
    s3_process.kill()
    ws.release()
    began = time.monotonic()
    code = proc.wait()
    took = time.monotonic() - began
    print(f"S3 stopped: the run failed both jobs {took:.1f} s after")
    assert code == 1, proc.output()
    assert took < 2 * S3_WAIT_BOUND_S, f"{took:.1f} s"
    assert f"S3 endpoint {endpoint.endpoint_url} could not be reached" in proc.stdout, proc.output()
    nothing_done(ws)
    assert {e.state for e in ws.jobs().values()} <= {JobState.FAILED, JobState.PENDING}
    s3_process.start()  # the same port; moto keeps nothing, so the bucket is made again
    endpoint.client().create_bucket(Bucket=ws.bucket)
    recovered(ws, jobs)


def test_s3_frozen_mid_upload_fails_each_job_within_the_timeouts_and_the_next_run_records_them_once(
    ws: Workspace, s3_process: S3Process
) -> None:
    """Issue 11, item 5: a frozen S3 endpoint (SIGSTOP during a multipart upload) used to hang each job
    about 6 minutes; now each fails within its settings' timeouts, says what happened, and is failed."""
    endpoint = s3_process.endpoint
    ws.use_s3(endpoint, endpoint.new_bucket("frozen"))
    jobs = [ws.job(tag="a", big_mb=16), ws.job(tag="b", big_mb=16)]
    probe = endpoint.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=1)
    proc = ws.start("run", str(ws.root / "jobs"))

    def uploading() -> bool:
        try:
            return bool(probe.list_multipart_uploads(Bucket=ws.bucket).get("Uploads"))
        except Exception:
            return False

    wait_until("the multipart upload to begin", uploading, 90, [proc])
    s3_process.freeze()
    began = time.monotonic()
    code = proc.wait()
    took = time.monotonic() - began
    print(f"frozen S3 (S3_READ_TIMEOUT_S=2, S3_MAX_ATTEMPTS=2): the run failed both jobs {took:.1f} s after")
    assert code == 1, proc.output()
    assert took < len(jobs) * S3_WAIT_BOUND_S, f"{took:.1f} s"
    expected = f"S3 endpoint {endpoint.endpoint_url} did not answer within 2 s (2 attempts) while "
    assert expected in proc.stdout, proc.output()
    assert f"s3://{ws.bucket}/results/" in proc.stdout and "check that the server is up" in proc.stdout
    nothing_done(ws)
    failed = ws.jobs()
    assert {e.state for e in failed.values()} == {JobState.FAILED}, "failed, not stuck running"
    assert all(expected in (e.last_error or "") for e in failed.values()), [
        e.last_error for e in failed.values()
    ]
    s3_process.thaw()
    recovered(ws, jobs)


def test_the_sqlite_store_locked_beyond_its_busy_timeout_fails_the_run_clearly_and_nothing_is_lost(
    ws: Workspace,
) -> None:
    ws.env["STORE_BUSY_TIMEOUT_S"] = str(STORE_WAIT_S)
    jobs = [ws.job(tag="a"), ws.job(tag="b")]
    ws.hold()
    proc = ws.start("run", str(ws.root / "jobs"))
    wait_until("an analysis to be running", lambda: bool(ws.started()), 90, [proc])
    with sqlite_locked(ws.sqlite_path):  # another process, in a write transaction all along
        ws.release()
        began = time.monotonic()
        code = proc.wait()
        took = time.monotonic() - began
        print(f"SQLite store locked: the run failed both jobs {took:.1f} s after")
        assert code == 1, proc.output()
        assert took < STORE_OUTAGE_BOUND_S, f"{took:.1f} s"
        assert "database is locked" in proc.stdout, proc.output()
        nothing_done(ws)  # read while locked: WAL readers are not blocked
    recovered(ws, jobs)


def test_mongodb_killed_mid_run_and_restarted_on_its_port_loses_nothing(
    ws: Workspace, mongo_server_factory: MongoServerFactory
) -> None:
    server = mongo_server_factory()
    ws.env.update(
        DOCDB_URI=server.uri,
        DOCDB_DATABASE=fresh_database_name("outage"),
        DOCDB_TIMEOUT_MS=str(STORE_WAIT_S * 1000),
    )
    jobs = [ws.job(tag="a"), ws.job(tag="b")]
    ws.hold()
    proc = ws.start("run", str(ws.root / "jobs"))
    wait_until("an analysis to be running", lambda: bool(ws.started()), 90, [proc])
    ws.close_store()  # the test's own client: reconnect after the restart
    server.kill()
    ws.release()
    began = time.monotonic()
    code = proc.wait()
    took = time.monotonic() - began
    print(f"MongoDB killed: the run failed both jobs {took:.1f} s after")
    assert code == 1, proc.output()
    assert took < STORE_OUTAGE_BOUND_S, f"{took:.1f} s"
    assert f"127.0.0.1:{server.port}" in proc.stdout, proc.output()
    assert "Traceback" not in proc.stdout
    server.start()  # the same port and data
    nothing_done(ws)
    recovered(ws, jobs)


def test_a_sensor_tick_with_the_store_down_keeps_every_inbox_file_for_the_next_tick(
    tmp_path: Path, clean_repo: Path, mongo_server_factory: MongoServerFactory
) -> None:
    server = mongo_server_factory()
    inbox = tmp_path / "inbox"
    settings = make_settings(
        tmp_path,
        clean_repo,
        DISPATCH_INBOX=str(inbox),
        DOCDB_URI=server.uri,
        DOCDB_DATABASE=fresh_database_name("tick"),
        DOCDB_TIMEOUT_MS=STORE_WAIT_S * 1000,
    )
    built = build_analysis_set([faulty])
    sensor = build_inbox_sensor(built[NAME], {NAME: faulty}, SensorSettings(inbox=str(inbox), settle_s=0))
    resources = build_resources(settings)
    defs = Definitions(
        assets=[built[NAME].asset],
        jobs=[built[NAME].job, built[NAME].batch_job],
        sensors=[sensor],
        resources=resources,
    )
    instance = DagsterInstance.ephemeral()
    source = tmp_path / "input.bin"
    source.write_bytes(b"x")
    files = [write_job(inbox, [source], analysis=NAME, tag=str(i)) for i in range(3)]

    def tick(cursor: str | None) -> SensorResult:
        with build_sensor_context(
            instance=instance, cursor=cursor, definitions=defs, resources=resources, sensor_name=sensor.name
        ) as context:
            result = sensor(context)
        assert isinstance(result, SensorResult)
        return result

    try:
        server.kill()
        began = time.monotonic()
        with pytest.raises(Exception) as info:  # the tick fails (Dagster records it as a failed tick)
            tick(None)
        assert time.monotonic() - began < STORE_OUTAGE_BOUND_S
        assert f"127.0.0.1:{server.port}" in str(info.value), str(info.value)
        assert sorted(p.name for p in inbox.glob("*.json")) == sorted(p.name for p in files), (
            "all still there"
        )
        assert not (inbox / "rejected").exists()

        server.start()
        result = tick(None)
        store = resources["store"].get_store()
        registered = store.find_jobs(NAME, limit=100)
        assert len(registered) == 3 and {e.state for e in registered} == {JobState.PENDING}
        assert not list(inbox.glob("*.json")), "each file moved to registered/ once its job is registered"
        assert len(list((inbox / "registered" / NAME).glob("*.json"))) == 3
        assert len(result.run_requests or []) >= 1
    finally:
        close_all_stores()
        instance.dispose()
    COUNTS["injected"] += 1
    COUNTS["recovered"] += len(files)
