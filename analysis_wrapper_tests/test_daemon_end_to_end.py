"""A real ``dagster dev`` (daemon, webserver, code server) against a temporary DAGSTER_HOME holding the
shipped ``dagster_home/dagster.yaml``: job files dropped into the inbox are run without anyone at the
keyboard, and a ``kill -9`` of the whole process group in the middle of a run loses nothing and runs
nothing twice."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analysis_wrapper.analyses.isi_violations import analysis as isi
from analysis_wrapper.registration import prepare_files
from analysis_wrapper.sensors import run_partition_keys
from analysis_wrapper.store.base import JobState, Store
from analysis_wrapper.store.mongo import MongoStore
from analysis_wrapper.store.sqlite import SqliteStore
from analysis_wrapper_tests.dagster_dev import DagsterDev, drop, wait_for
from analysis_wrapper_tests.harness import load_examples_module
from analysis_wrapper_tests.mongo_server import MongoServer, fresh_database_name


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("batch_size", "records"),
    [(1, "sqlite"), (10, "sqlite"), (10, "mongodb")],
    ids=["run-per-job", "batches", "batches-mongodb"],
)
def test_daemon_runs_dropped_jobs_and_survives_kill_9(
    dagster_dev: tuple[DagsterDev, Path, Path, Path],
    tmp_path: Path,
    batch_size: int,
    records: str,
    request: pytest.FixtureRequest,
) -> None:
    dev, home, inbox, results = dagster_dev
    dev.env["SENSOR_BATCH_SIZE"] = str(batch_size)
    store: Store
    if records == "mongodb":  # jobs, records and leases on a real MongoDB server (SecantusDB)
        server: MongoServer = request.getfixturevalue("mongo_server")
        database = fresh_database_name("daemon")
        dev.env.update(DOCDB_URI=server.uri, DOCDB_DATABASE=database)
        store = MongoStore(server.uri, database=database)
    else:
        store = SqliteStore(home / "analysis_records.sqlite")
    files = list(load_examples_module().write_examples(tmp_path / "examples", n_jobs=7, seed=11))
    prepared = prepare_files(files, {isi.name: isi})
    assert not prepared.rejected
    expected = {job.partition_key: job.fingerprint for job in prepared.all_jobs()}
    assert len(set(expected.values())) == 7
    first, second = files[:4], files[4:]

    def recorded(keys: list[str]) -> bool:
        return len(store.existing_fingerprints(isi.name, [expected[k] for k in keys])) == len(keys)

    # Phase 1: a running daemon picks the files up, registers and runs them.
    dev.start()
    drop(first, inbox)
    first_keys = [j.partition_key for j in prepared.all_jobs()[:4]]
    second_keys = [j.partition_key for j in prepared.all_jobs()[4:]]

    def first_done() -> bool:
        states = {e.partition_key: e.state for e in store.list_jobs(isi.name)}
        return recorded(first_keys) and all(states.get(k) == JobState.DONE for k in first_keys)

    wait_for("the first 4 jobs to be recorded and done", first_done, dev)

    # Phase 2: more jobs; kill -9 everything while one of them runs, then start again.
    drop(second, inbox)

    def something_running() -> bool:
        return any(e.state == JobState.RUNNING for e in store.get_jobs(isi.name, second_keys).values())

    wait_for("a job of the second batch to be running", something_running, dev)
    dev.kill()
    interrupted = {e.partition_key for e in store.list_jobs(isi.name) if e.state == JobState.RUNNING}
    assert interrupted and not recorded(sorted(interrupted)), "the kill was meant to land mid-run"

    dev.start()

    def all_done() -> bool:
        entries = store.list_jobs(isi.name)
        return (
            len(entries) == 7 and all(e.state == JobState.DONE for e in entries) and recorded(list(expected))
        )

    wait_for("every job to be recorded and done after the restart", all_done, dev)

    # The summary asset updates by itself (declarative automation) once the new results are recorded.
    summary = results / f"{isi.name}_summary"

    def summary_complete() -> bool:
        try:
            rows = pd.read_parquet(summary / "summary.parquet")
        except (OSError, ValueError):
            return False
        return sorted(rows["partition_key"]) == sorted(expected)

    wait_for("isi_violations_summary to hold every job", summary_complete, dev)
    dev.kill()
    rows = pd.read_parquet(summary / "summary.parquet")
    assert dict(zip(rows["partition_key"], rows["fingerprint"], strict=True)) == expected
    assert (summary / "summary.csv").is_file() and (summary / "summary.png").is_file()

    # Every job done exactly once: one record per fingerprint, one result folder each, no job lost.
    records = store.find_records(isi.name)
    assert sorted(r["_id"] for r in records) == sorted(expected.values())
    assert sorted(p.name for p in results.iterdir() if p != summary) == sorted(expected.values())
    assert all((results / fp / "metadata.nd.json").is_file() for fp in expected.values())
    entries = {e.partition_key: e for e in store.list_jobs(isi.name)}
    assert {k: e.fingerprint for k, e in entries.items()} == expected
    for key in interrupted:  # the killed run was failed, and retried under a new run key
        assert entries[key].attempts >= 2, entries[key]
    assert sorted(p.name for p in (inbox / "registered" / isi.name).iterdir()) == sorted(
        p.name for p in files
    )
    assert not list(inbox.glob("*.json")) and not (inbox / "rejected").exists()
    store.close()

    from dagster import DagsterInstance, DagsterRunStatus

    with DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
    successes: Counter[Any] = Counter(
        key for r in runs if r.status == DagsterRunStatus.SUCCESS for key in run_partition_keys(r)
    )
    lost = [r for r in runs if r.status == DagsterRunStatus.FAILURE]
    lost_keys = {key for r in lost for key in run_partition_keys(r)}
    if batch_size > 1:
        assert any(r.job_name == isi.batch_job_name for r in runs), "no batch run: batching untested"
    # No job succeeded twice; a job without a successful run is one whose run was killed after it
    # had committed its record (its run was then failed as lost, and nothing ran again).
    assert set(successes) <= set(expected) and set(successes.values()) <= {1}, successes
    assert set(expected) - set(successes) <= lost_keys
    assert lost_keys >= interrupted
    # A lost run is a first attempt (a job's own run key ends in its attempt; a batch's is a hash).
    assert all(r.tags.get("dagster/run_key", "").endswith(":1") for r in lost if r.job_name == isi.job_name)


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_killed_cli_runs_do_not_block_the_daemon(
    dagster_dev: tuple[DagsterDev, Path, Path, Path], tmp_path: Path
) -> None:
    """Two `analysis-wrapper run` processes SIGKILLed mid-run leave two STARTED runs, as many as the
    shipped dagster.yaml lets run at once; the daemon's sensors find them dead (their process is gone),
    fail them, free the slots, and new jobs dropped into the inbox are recorded. The killed jobs are
    retried and recorded too."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    dev, home, inbox, results = dagster_dev
    dev.env["SENSOR_BATCH_SIZE"] = "10"
    examples = load_examples_module()
    cli_jobs = [list(examples.write_examples(tmp_path / f"cli{i}", n_jobs=4, seed=20 + i)) for i in range(2)]
    later = list(examples.write_examples(tmp_path / "later", n_jobs=3, seed=30))
    prepared = prepare_files([f for group in cli_jobs for f in group] + later, {isi.name: isi})
    assert not prepared.rejected
    expected = {job.partition_key: job.fingerprint for job in prepared.all_jobs()}
    assert len(set(expected.values())) == 11
    store = SqliteStore(home / "analysis_records.sqlite")

    # The CLI uses the same DAGSTER_HOME (and so the shipped queue limits) as the daemon will.
    exe = Path(sys.executable).parent / "analysis-wrapper"
    clis = []
    for i, group in enumerate(cli_jobs):
        log = (tmp_path / f"cli{i}.log").open("wb")
        clis.append(
            subprocess.Popen(
                [str(exe), "run", str(group[0].parent), "--batch-size", "4"],
                cwd=tmp_path,
                env=dev.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

    def both_running() -> bool:
        running = [e for e in store.list_jobs(isi.name) if e.state == JobState.RUNNING]
        return len({e.run_id for e in running}) == 2

    wait_for("both CLI runs to be computing a job", both_running, dev)
    for proc in clis:
        proc.kill()
        proc.wait(timeout=30)
    with DagsterInstance.from_config(str(home)) as instance:
        started = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
    assert len(started) == 2, "the killed CLI runs should hold both slots of the run queue"

    dev.start()
    drop(later, inbox)

    def all_recorded() -> bool:
        return len(store.existing_fingerprints(isi.name, list(expected.values()))) == len(expected)

    def later_recorded() -> bool:
        fps = [j.fingerprint for j in prepared.all_jobs()[-3:]]
        return len(store.existing_fingerprints(isi.name, fps)) == 3

    wait_for("the jobs dropped after the kill to be recorded", later_recorded, dev, timeout=200)
    # The jobs the killed runs held are failed (their run is lost) and retried by the sensor; those the
    # CLI never reached are still pending and are requested like any other.
    wait_for("every job, the killed ones too, to be recorded", all_recorded, dev, timeout=200)
    dev.kill()
    with DagsterInstance.from_config(str(home)) as instance:
        killed = [instance.get_run_by_id(r.run_id) for r in started]
    for run in killed:
        assert run is not None and run.status == DagsterRunStatus.FAILURE, run
    records = store.find_records(isi.name)
    assert sorted(r["_id"] for r in records) == sorted(expected.values())
    for record in records:
        folder = results / record["_id"]
        written = json.loads((folder / "metadata.nd.json").read_text())
        assert written["analysis_wrapper"]["run_id"] == record["analysis_wrapper"]["run_id"]
    store.close()
