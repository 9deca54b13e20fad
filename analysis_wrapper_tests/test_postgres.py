"""Dagster on PostgreSQL: the shipped ``deploy/dagster.yaml`` against a real server these tests start
(``postgres_server``), and a real ``dagster dev`` on it, killed with SIGKILL mid-run and started again."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus, job, op
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from analysis_wrapper.analyses.isi_violations import analysis as isi
from analysis_wrapper.registration import prepare_files
from analysis_wrapper.sensors import run_partition_keys
from analysis_wrapper.store.base import JobState
from analysis_wrapper.store.sqlite import SqliteStore
from analysis_wrapper_tests.dagster_dev import DagsterDev, drop, wait_for
from analysis_wrapper_tests.harness import load_examples_module
from analysis_wrapper_tests.postgres_server import PostgresServer

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_INSTANCE_YAML = REPO_ROOT / "deploy" / "dagster.yaml"
LOCAL_INSTANCE_YAML = REPO_ROOT / "dagster_home" / "dagster.yaml"
DAGSTER_TABLES = {
    "alembic_version",
    "runs",
    "run_tags",
    "snapshots",
    "daemon_heartbeats",
    "bulk_actions",
    "kvs",
    "event_logs",
    "asset_keys",
    "secondary_indexes",
    "dynamic_partitions",
    "concurrency_limits",
    "concurrency_slots",
    "pending_steps",
    "jobs",
    "instigators",
    "job_ticks",
}
"""Tables of Dagster's run, event-log and schedule storage (a subset: every one of these must exist)."""


def _use_database(server: PostgresServer, database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in server.env(database).items():
        monkeypatch.setenv(name, value)


def _home_with_deploy_config(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEPLOY_INSTANCE_YAML, folder / "dagster.yaml")
    return folder


def _tables(server: PostgresServer, database: str) -> set[str]:
    rows = server.query(
        database, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    return {name for (name,) in rows}


# ---- the fixture ---------------------------------------------------------------------------------------
def test_the_server_wants_the_password_and_keeps_committed_data_over_a_crash(
    postgres_server: PostgresServer,
) -> None:
    import psycopg2

    database = postgres_server.new_database("fixture")
    assert database != postgres_server.new_database("fixture")
    postgres_server.query(database, "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)")
    assert set(postgres_server.env(database)) == {
        "DAGSTER_PG_USERNAME",
        "DAGSTER_PG_PASSWORD",
        "DAGSTER_PG_HOST",
        "DAGSTER_PG_DB",
        "DAGSTER_PG_PORT",
    }
    if postgres_server.managed:
        assert postgres_server.host == "127.0.0.1"
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(postgres_server.dsn.replace(postgres_server.password, "wrong", 1))
        postgres_server.kill()
        assert postgres_server.pid is None
        with pytest.raises(psycopg2.OperationalError):
            postgres_server.connect(database)
        postgres_server.start()
    assert postgres_server.query(database, "SELECT x FROM t ORDER BY x") == [(1,), (2,)]
    conn = psycopg2.connect(postgres_server.dsn_for(database))
    conn.close()


# ---- the shipped instance config -------------------------------------------------------------------------
def test_deploy_config_queues_and_monitors_runs_as_the_local_config_does() -> None:
    deploy = yaml.safe_load(DEPLOY_INSTANCE_YAML.read_text())
    local = yaml.safe_load(LOCAL_INSTANCE_YAML.read_text())
    assert set(deploy) == set(local) | {"storage"}
    for part in local:
        assert deploy[part] == local[part], part
    assert deploy["storage"]["postgres"]["postgres_db"] == {
        "username": {"env": "DAGSTER_PG_USERNAME"},
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": {"env": "DAGSTER_PG_HOST"},
        "db_name": {"env": "DAGSTER_PG_DB"},
        "port": {"env": "DAGSTER_PG_PORT"},
        "scheme": "postgresql+psycopg2",
    }


def test_deploy_config_names_the_driver_dagster_postgres_installs(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLAlchemy 2.1 connects a plain ``postgresql://`` URL with psycopg (3), which dagster-postgres does
    not install (it requires psycopg2-binary): the config's ``scheme`` names psycopg2."""
    import sqlalchemy
    from dagster._config import process_config
    from dagster._core.storage.config import pg_config
    from dagster_postgres.utils import pg_url_from_config

    for name in ("DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOST", "DAGSTER_PG_DB"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("DAGSTER_PG_PORT", "5432")
    for config in (DEPLOY_INSTANCE_YAML, DEPLOY_INSTANCE_YAML.parent / "ecs" / "dagster.yaml"):
        storage = yaml.safe_load(config.read_text())["storage"]["postgres"]
        resolved = process_config(pg_config(), storage)
        assert resolved.success, resolved.errors
        url = sqlalchemy.engine.make_url(pg_url_from_config(resolved.value))  # type: ignore[arg-type]
        assert url.get_dialect().driver == "psycopg2", config
    helm = yaml.safe_load((DEPLOY_INSTANCE_YAML.parent / "helm" / "values.yaml").read_text())
    assert helm["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"


def test_deploy_config_loads_into_an_instance_on_postgres(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = postgres_server.new_database("instance")
    _use_database(postgres_server, database, monkeypatch)
    home = _home_with_deploy_config(tmp_path / "home")
    local = yaml.safe_load(LOCAL_INSTANCE_YAML.read_text())

    @op
    def one() -> int:
        return 1

    @job
    def tiny() -> None:
        one()

    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance._schedule_storage, PostgresScheduleStorage)
        # Created at the first start: every table, at Dagster's latest schema revision.
        assert _tables(postgres_server, database) >= DAGSTER_TABLES
        current, head = instance.event_log_storage.alembic_version()  # type: ignore[misc]
        assert current == head
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, QueuedRunCoordinator)
        assert coordinator.inst_data is not None
        assert coordinator.inst_data.config_dict == local["run_coordinator"]["config"]
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings == local["run_monitoring"]
        assert not instance.telemetry_enabled

        result = tiny.execute_in_process(instance=instance)
        assert result.success
        (run,) = instance.get_runs()

    # Written to PostgreSQL, nothing to SQLite files in DAGSTER_HOME.
    assert postgres_server.query(database, "SELECT run_id, status FROM runs") == [(run.run_id, "SUCCESS")]
    (count,) = postgres_server.query(
        database, "SELECT count(*) FROM event_logs WHERE run_id = %s", run.run_id
    )
    assert count[0] > 0
    assert not list(home.rglob("*.db")) and not (home / "history").exists()
    # A second instance (another host) reads the same storage.
    with DagsterInstance.from_config(str(_home_with_deploy_config(tmp_path / "other"))) as other:
        assert [r.run_id for r in other.get_runs()] == [run.run_id]


def test_deploy_config_without_its_password_fails_naming_the_variable(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_database(postgres_server, "postgres", monkeypatch)
    monkeypatch.delenv("DAGSTER_PG_PASSWORD")
    with pytest.raises(DagsterInvalidConfigError, match="DAGSTER_PG_PASSWORD"):
        DagsterInstance.from_config(str(_home_with_deploy_config(tmp_path / "home")))


# ---- the daemon end to end -------------------------------------------------------------------------------
@pytest.fixture
def dagster_dev_on_postgres(
    dagster_dev: tuple[DagsterDev, Path, Path, Path], postgres_server: PostgresServer
) -> tuple[DagsterDev, Path, Path, Path, str]:
    """``dagster_dev`` with ``deploy/dagster.yaml`` in its DAGSTER_HOME, on a fresh database."""
    dev, home, inbox, results = dagster_dev
    _home_with_deploy_config(home)
    database = postgres_server.new_database("daemon")
    dev.env.update(postgres_server.env(database))
    return dev, home, inbox, results, database


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_daemon_on_postgres_runs_dropped_jobs_and_survives_kill_9(
    dagster_dev_on_postgres: tuple[DagsterDev, Path, Path, Path, str],
    postgres_server: PostgresServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dev, home, inbox, results, database = dagster_dev_on_postgres
    dev.env["SENSOR_BATCH_SIZE"] = "2"  # several runs in the queue, two jobs each
    store = SqliteStore(home / "analysis_records.sqlite")
    files = list(load_examples_module().write_examples(tmp_path / "examples", n_jobs=6, seed=13))
    prepared = prepare_files(files, {isi.name: isi})
    assert not prepared.rejected
    jobs = prepared.all_jobs()
    expected = {job.partition_key: job.fingerprint for job in jobs}
    assert len(set(expected.values())) == 6
    first_keys = [j.partition_key for j in jobs[:3]]
    second_keys = [j.partition_key for j in jobs[3:]]

    def recorded(keys: list[str]) -> bool:
        return len(store.existing_fingerprints(isi.name, [expected[k] for k in keys])) == len(keys)

    # Phase 1: the daemon, on PostgreSQL from its first start (it creates the schema), runs dropped jobs.
    dev.start()
    drop(files[:3], inbox)

    def first_done() -> bool:
        states = {e.partition_key: e.state for e in store.list_jobs(isi.name)}
        return recorded(first_keys) and all(states.get(k) == JobState.DONE for k in first_keys)

    wait_for("the first 3 jobs to be recorded and done", first_done, dev)

    # Phase 2: more jobs; kill -9 everything while one of them runs, then start again.
    drop(files[3:], inbox)

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
            len(entries) == 6 and all(e.state == JobState.DONE for e in entries) and recorded(list(expected))
        )

    wait_for("every job to be recorded and done after the restart", all_done, dev)

    # A job is done before its run worker reports the run's end: wait for that, in PostgreSQL.
    def runs_finished() -> bool:
        (unfinished,) = postgres_server.query(
            database, "SELECT count(*) FROM runs WHERE status NOT IN ('SUCCESS', 'FAILURE', 'CANCELED')"
        )
        return unfinished[0] == 0

    wait_for("every Dagster run to end", runs_finished, dev)
    dev.kill()

    # Every job recorded exactly once, one result folder each, no job lost.
    assert sorted(r["_id"] for r in store.find_records(isi.name)) == sorted(expected.values())
    # (beside them, the summary asset's folder, which the daemon's automation writes by itself)
    folders = sorted(p.name for p in results.iterdir() if p.name != f"{isi.name}_summary")
    assert folders == sorted(expected.values())
    entries = {e.partition_key: e for e in store.list_jobs(isi.name)}
    assert {k: e.fingerprint for k, e in entries.items()} == expected
    for key in interrupted:  # the killed run was failed, and retried under a new run key
        assert entries[key].attempts >= 2, entries[key]
    assert not list(inbox.glob("*.json")) and not (inbox / "rejected").exists()
    store.close()

    # Dagster's runs are in PostgreSQL: what the instance reports is what the tables hold.
    _use_database(postgres_server, database, monkeypatch)
    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        runs = instance.get_runs()
    rows = postgres_server.query(database, "SELECT run_id, status, pipeline_name FROM runs")
    assert sorted(rows) == sorted((r.run_id, r.status.value, r.job_name) for r in runs)
    # (and the summary asset's runs, which the daemon's automation launches by itself)
    assert {r.job_name for r in runs} <= {isi.job_name, isi.batch_job_name, "__ASSET_JOB"}
    assert {r.status for r in runs} <= {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE}
    assert any(r.job_name == isi.batch_job_name for r in runs), "no batch run: batching untested"
    successes: Counter[Any] = Counter(
        key for r in runs if r.status == DagsterRunStatus.SUCCESS for key in run_partition_keys(r)
    )
    lost = [r for r in runs if r.status == DagsterRunStatus.FAILURE]
    lost_keys = {key for r in lost for key in run_partition_keys(r)}
    # No job succeeded twice; a job without a successful run is one whose run was killed after it had
    # committed its record (its run was then failed as lost, and nothing ran again).
    assert set(successes) <= set(expected) and set(successes.values()) <= {1}, successes
    assert set(expected) - set(successes) <= lost_keys
    assert lost_keys >= interrupted
    # Every run went through the queue, and the daemons (sensors, queue, run monitoring) kept their
    # state in PostgreSQL too; nothing of Dagster's went to SQLite files.
    (enqueued,) = postgres_server.query(
        database,
        "SELECT count(DISTINCT run_id) FROM event_logs WHERE dagster_event_type = 'PIPELINE_ENQUEUED'",
    )
    assert enqueued[0] == len(runs)
    (ticks,) = postgres_server.query(database, "SELECT count(*) FROM job_ticks WHERE type = 'SENSOR'")
    assert ticks[0] > 0
    daemons = {
        name for (name,) in postgres_server.query(database, "SELECT daemon_type FROM daemon_heartbeats")
    }
    assert {"SENSOR", "QUEUED_RUN_COORDINATOR", "MONITORING"} <= daemons, daemons
    assert not (home / "history").exists() and not (home / "schedules").exists()
