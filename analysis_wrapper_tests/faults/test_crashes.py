"""Fault suite, crashes: SIGKILL of a real ``analysis-wrapper run`` during the analysis, during the S3
upload and between the upload and the record; and of the daemon and of the code server under a running
inbox sensor.

After each kill: no record without a complete folder, and what the killed process left (its scratch
folder, an unfinished multipart upload, a folder without a record, a job left ``running``) is there to
be cleaned; then one more run (or the restarted daemon) must finish every job, recorded once, with
nothing left behind (:meth:`Workspace.check_recovered`). The counts go to the suite's table:
``crashes``: injected / jobs recovered.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.storage.dagster_run import FINISHED_STATUSES

from analysis_wrapper.resources.results_storage import RECORD_FILE
from analysis_wrapper.store.base import JobState
from analysis_wrapper_tests.dagster_dev import SHIPPED_INSTANCE_YAML, drop
from analysis_wrapper_tests.faults import report
from analysis_wrapper_tests.faults.fault_analysis import NAME
from analysis_wrapper_tests.faults.processes import BIN, Proc, Workspace, sqlite_locked, wait_until
from analysis_wrapper_tests.s3_servers import S3Process
from analysis_wrapper_tests.servers import free_port

pytestmark = pytest.mark.slow

COUNTS = {"injected": 0, "recovered": 0}


@pytest.fixture(scope="module", autouse=True)
def crash_report() -> Iterator[None]:
    yield
    report.record("crashes", **COUNTS)


@pytest.fixture
def ws(tmp_path: Path, clean_repo: Path) -> Iterator[Workspace]:
    made = Workspace.make(tmp_path, clean_repo)
    try:
        yield made
    finally:
        made.close()


def recovered(ws: Workspace, jobs: list[Path], crashes: int = 1) -> None:
    """One more ``run`` over ``jobs``: every job done once, nothing left behind; counted."""
    again = ws.run("run", str(ws.root / "jobs"), label="rerun")
    assert again.popen.returncode == 0, again.output()
    ws.check_recovered(jobs)
    COUNTS["injected"] += crashes
    COUNTS["recovered"] += len(jobs)


def test_a_run_killed_during_the_analysis_is_finished_by_the_next_run_which_sweeps_its_scratch(
    ws: Workspace,
) -> None:
    jobs = [ws.job(tag="a", big_mb=4), ws.job(tag="b", big_mb=4)]
    ws.hold()
    proc = ws.start("run", str(ws.root / "jobs"))
    wait_until("an analysis to be running", lambda: bool(ws.started()), 90, [proc])
    proc.kill()
    (running,) = ws.started()
    assert running not in ws.records()
    # What the issue saw: the killed process's scratch folder, its files in it, stays behind...
    (owner,) = ws.scratch_owners()
    assert owner.split(".")[2] == str(proc.popen.pid)
    assert list((ws.scratch_root / owner).glob("faulty-*/big.bin"))
    ws.release()
    # ...until the next run sweeps it (its owner is gone) and runs the job again.
    recovered(ws, jobs)
    assert ws.computed()[running] == 2  # killed once, then computed and recorded once


def test_a_run_killed_during_the_upload_leaves_an_unfinished_upload_the_next_run_aborts(
    ws: Workspace, s3_process: S3Process
) -> None:
    endpoint = s3_process.endpoint
    ws.use_s3(endpoint, endpoint.new_bucket("crash-upload"))
    jobs = [ws.job(tag="big", big_mb=24)]
    probe = endpoint.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=1)
    proc = ws.start("run", str(ws.root / "jobs"))

    def uploading() -> bool:
        try:
            return bool(probe.list_multipart_uploads(Bucket=ws.bucket).get("Uploads"))
        except Exception:
            return False

    wait_until("the multipart upload to begin", uploading, 90, [proc])
    s3_process.freeze()  # the upload cannot finish now: the kill lands in its middle
    proc.kill()
    s3_process.thaw()
    assert ws.records() == {}
    assert ws.unfinished_uploads(), "the killed upload was meant to stay unfinished"
    assert ws.scratch_owners(), "the killed run's scratch folder was meant to stay"
    recovered(ws, jobs)


def test_a_run_killed_between_the_upload_and_the_record_leaves_a_folder_the_next_run_replaces(
    ws: Workspace,
) -> None:
    jobs = [ws.job(tag="c")]
    ws.hold()
    proc = ws.start("run", str(ws.root / "jobs"))
    wait_until("the analysis to be running", lambda: bool(ws.started()), 90, [proc])
    (fp,) = ws.started()
    folder = ws.results / fp
    # Another writer holds the store: the run stores the folder, then waits for the store to insert the
    # record; the kill lands there.
    with sqlite_locked(ws.sqlite_path):
        ws.release()
        wait_until("the folder to be complete", lambda: (folder / RECORD_FILE).is_file(), 60, [proc])
        time.sleep(0.5)  # well inside the insert's 30 s wait for the lock
        proc.kill()
    assert ws.records() == {}  # a folder without a record is allowed; the reverse never
    first_token = (folder / "token.txt").read_text().strip()
    recovered(ws, jobs)
    (record,) = ws.records().values()
    token = record["processing"]["data_processes"][0]["output_parameters"]["token"]
    assert token != first_token, "the folder of the killed run was replaced by the recorded computation's"


def grpc_ping(port: int) -> bool:
    from dagster._grpc.client import DagsterGrpcClient

    try:
        DagsterGrpcClient(port=port, host="127.0.0.1").ping("hello")
        return True
    except Exception:
        return False


@pytest.mark.timeout(400)
def test_the_daemon_and_the_code_server_killed_mid_run_lose_no_job_and_run_none_twice(ws: Workspace) -> None:
    """The daemon and the code server as separate processes (as deployed), the shipped instance config:
    SIGKILL of the daemon while a run computes (its run worker goes on; the restarted daemon carries on),
    then of the code server with its run workers (the inbox sensor sees the run's heartbeat holder gone,
    fails the run and retries its jobs). `test_daemon_end_to_end` kills the whole of `dagster dev`, and
    `test_many_hosts` the code server across network namespaces; here each part alone, on one host."""
    home = ws.root / "home"
    home.mkdir()
    shutil.copy(SHIPPED_INSTANCE_YAML, home / "dagster.yaml")
    inbox = ws.root / "inbox"
    inbox.mkdir()
    port = free_port()
    (ws.root / "workspace.yaml").write_text(
        f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {port}\n"
        "      location_name: analysis_wrapper\n"
    )
    ws.env.update(
        DISPATCH_INBOX=str(inbox),
        SENSOR_INTERVAL_S="1",
        SENSOR_AUDIT_AFTER_S="2",
        SENSOR_BATCH_SIZE="2",
        RETRY_DELAY_S="1",
        LEASE_TTL_S="6",
    )
    code_server = [str(BIN / "dagster"), "api", "grpc", "-m", "analysis_wrapper.definitions"]
    code_server += ["-h", "127.0.0.1", "-p", str(port)]
    daemon = [str(BIN / "dagster-daemon"), "run", "-w", str(ws.root / "workspace.yaml")]

    def start_code_server() -> Proc:
        proc = ws.spawn(code_server, "code-server")
        wait_until("the code server to answer", lambda: grpc_ping(port), 120, [proc])
        return proc

    servers = [start_code_server(), ws.spawn(daemon, "daemon")]

    def done(n: int) -> Callable[[], bool]:
        return lambda: (
            len(ws.records()) >= n and sum(e.state == JobState.DONE for e in ws.jobs().values()) >= n
        )

    # ---- the daemon, while a run computes -------------------------------------------------------
    ws.hold()
    first = [ws.job(tag=f"d{i}") for i in range(3)]
    drop(first, inbox)
    wait_until("a run to compute", lambda: bool(ws.started()), 150, servers)
    servers[1].kill()
    held = set(ws.started())
    assert not held & set(ws.records()), "the kill was meant to land mid-run"
    ws.release()
    # The run worker belongs to the code server: it finishes its jobs without the daemon.
    wait_until("the running run to record its jobs", lambda: held <= set(ws.records()), 120, servers[:1])
    servers[1] = ws.spawn(daemon, "daemon")
    wait_until("every job of the first drop to be done", done(3), 150, servers)
    assert ws.computed() == Counter({fp: 1 for fp in ws.records()}), "nothing computed twice"

    # ---- the code server and its run workers, while a run computes --------------------------------
    ws.hold()
    second = [ws.job(tag=f"c{i}") for i in range(2)]
    drop(second, inbox)
    wait_until("a run of the second drop to compute", lambda: len(set(ws.started())) > 3, 150, servers)
    servers[0].kill()
    interrupted = set(ws.started()) - set(ws.records())
    assert interrupted, "the kill was meant to land mid-run"
    assert ws.scratch_owners(), "the killed run worker's scratch folder stays until a later run sweeps it"
    ws.release()
    servers[0] = start_code_server()
    wait_until("every job to be done", done(5), 200, servers)
    # A run worker removes its scratch folder just after the record: let every run of the analysis end
    # before the kill (the killed one too: the inbox sensor fails it once its heartbeat holder is gone).
    instance = DagsterInstance.from_config(str(home))
    try:
        statuses = [s for s in DagsterRunStatus if s not in FINISHED_STATUSES]
        filters = [RunsFilter(statuses=statuses, job_name=f"{NAME}{part}") for part in ("_job", "_batch_job")]

        def unfinished() -> list[Any]:
            return [run for f in filters for run in instance.get_runs(f)]

        try:
            wait_until("every run of the analysis to end", lambda: not unfinished(), 120, servers)
        except AssertionError as exc:
            runs = [(r.run_id[:8], r.status.value, r.job_name, dict(r.tags)) for r in unfinished()]
            raise AssertionError(f"{exc}; unfinished runs: {runs}") from None
    finally:
        instance.dispose()
    for proc in servers:
        proc.kill()
    ws.check_recovered([*first, *second])
    computed = ws.computed()
    assert all(computed[fp] == 2 for fp in interrupted), computed  # killed once, then recorded once
    COUNTS["injected"] += 2
    COUNTS["recovered"] += len(first) + len(second)
