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

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from analysis_wrapper.resources.results_storage import RECORD_FILE
from analysis_wrapper_tests.faults import report
from analysis_wrapper_tests.faults.processes import Workspace, sqlite_locked, wait_until
from analysis_wrapper_tests.s3_servers import S3Process

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
