"""Item 3b: trivial jobs through the inbox sensor and the Dagster daemon (queued run coordinator).

N trivial job files are dropped into a local inbox; then ``dagster-daemon run`` starts (sensor daemon,
queued run coordinator, run monitoring) on a fresh ``DAGSTER_HOME`` holding the shipped
``dagster_home/dagster.yaml`` (2 concurrent runs), with the code location ``benchmarks.daemon_defs``
(the shipped definitions serving the trivial analysis). The clock stops when every job has its record.
Each Dagster run is a new process started by the code server (Dagster's default run launcher).

Reported: jobs per second from the daemon's start to the last record (start-up included) and in the
steady state (first record to last), against the floor (plain loop); once with the sensor's default
batch runs (several jobs per run) and once with ``SENSOR_BATCH_SIZE=1`` (one run per job, on fewer
jobs: it is slow by construction).

``run_postgres`` (``daemon_postgres``): the default batch runs with Dagster's storage in SQLite (the
shipped ``dagster_home/dagster.yaml``) and then in PostgreSQL (``deploy/dagster.yaml`` with the
``DAGSTER_PG_*`` of a fresh database on a throwaway local server, started as the tests start theirs);
the ratio of seconds per job (steady state) against the target of at most 1.5x.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from analysis_wrapper.settings import Settings
from benchmarks import trivial
from benchmarks.common import (
    REPO_ROOT,
    Entry,
    RunOptions,
    ServerMissing,
    clean_git_repo,
    compared,
    entry,
    environment,
    postgres_server,
    server_missing,
)
from benchmarks.overhead import _analyses, _fresh, floor_run

DEFAULT_BATCH_SIZE = int(Settings.model_fields["SENSOR_BATCH_SIZE"].default)

TARGET_JOBS_PER_S = 20.0
"""Issue 20: at least this many trivial jobs a second through the daemon in batches (steady state)."""
EARLIER_TARGET_JOBS_PER_S = 5.0
"""The earlier target (issue 3b), kept as a row of its own."""
PG_TARGET = 1.5
"""Dagster storage in PostgreSQL: at most this many times the seconds per job of SQLite."""
FALLBACK_INSTANCE_YAML = """\
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 2
    dequeue_interval_seconds: 2
telemetry:
  enabled: false
"""


def _daemon_binary() -> str:
    local = Path(sys.executable).parent / "dagster-daemon"
    return str(local) if local.is_file() else (shutil.which("dagster-daemon") or "dagster-daemon")


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the daemon's process group (daemon, code server, run workers), wait until every member
    is gone (so none writes into the scratch folder after it is removed), SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _wait_for_runs_to_end(home: Path, timeout_s: float = 30.0) -> None:
    """Let the last run report its end (after the clock stopped) before the daemon is stopped."""
    from dagster import DagsterInstance, RunsFilter
    from dagster._core.instance.ref import InstanceRef

    from analysis_wrapper.sensors import UNFINISHED_RUN

    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and instance.get_runs_count(RunsFilter(statuses=UNFINISHED_RUN)):
            time.sleep(0.25)
    finally:
        instance.dispose()


def _run_phases(home: Path) -> str:
    """Median seconds of each Dagster run from launch to start (new process, imports, loading the
    code) and from start to success (the run itself), from the runs' events."""
    from dagster import DagsterEventType, DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    from benchmarks.common import median

    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    launch, execute = [], []
    try:
        for record in instance.get_run_records():
            times: dict[DagsterEventType, float] = {}
            for event in instance.all_logs(record.dagster_run.run_id):
                kind = event.dagster_event.event_type if event.dagster_event else None
                if kind is not None and kind not in times:
                    times[kind] = event.timestamp
            starting = times.get(DagsterEventType.RUN_STARTING)
            started = times.get(DagsterEventType.RUN_START)
            success = times.get(DagsterEventType.RUN_SUCCESS)
            if starting and started:
                launch.append(started - starting)
            if started and success:
                execute.append(success - started)
    finally:
        instance.dispose()
    if not launch or not execute:
        return "run phases unknown"
    return f"median run: {median(launch):.1f} s launch to start, {median(execute):.1f} s start to success"


def _daemon_rate(
    options: RunOptions,
    root: Path,
    n: int,
    batch_size: int,
    instance_yaml: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> tuple[float, float, float, str, float]:
    """Run ``n`` trivial jobs through a fresh daemon with ``SENSOR_BATCH_SIZE=batch_size``, the instance
    config ``instance_yaml`` (default: the shipped ``dagster_home/dagster.yaml``) and ``extra_env`` (in
    the daemon's environment; the caller puts it in this process's too, for reading the runs).

    Returns (steady jobs/s, start-to-last jobs/s, seconds first to last record, run phases, floor s).
    """
    from analysis_wrapper.store.sqlite import SqliteStore

    root.mkdir(parents=True, exist_ok=True)
    repo = clean_git_repo(root / "code_repo")
    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    if instance_yaml is None:
        shipped = REPO_ROOT / "dagster_home" / "dagster.yaml"
        instance_yaml = shipped.read_text() if shipped.is_file() else FALLBACK_INSTANCE_YAML
    (home / "dagster.yaml").write_text(instance_yaml)
    (root / "workspace.yaml").write_text(
        "load_from:\n"
        "  - python_module:\n"
        "      module_name: benchmarks.daemon_defs\n"
        f"      working_directory: {REPO_ROOT}\n"
    )
    inbox = root / "inbox"
    jobs = trivial.write_trivial_jobs(root / "trivial", n)
    floor_run(jobs, _fresh(root / "floor_warm_up"), _analyses())
    floor_s = floor_run(jobs, _fresh(root / "floor_results"), _analyses())
    inbox.mkdir(parents=True, exist_ok=True)
    for path in jobs.glob("*.json"):
        shutil.copy(path, inbox / path.name)

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DOCDB_URI", "ANALYSIS_BUCKET", "ALLOW_DIRTY", "GIT_COMMIT", "AWS_ENDPOINT_URL"}
        and not k.startswith("SENSOR_")
    }
    env.update(
        {
            "DAGSTER_HOME": str(home),
            "DISPATCH_INBOX": str(inbox),
            "RESULTS_ROOT": str(root / "results"),
            "DRY_RUN_ROOT": str(root / "dry_run"),
            "DRY_RUN": "0",
            "CODE_REPOSITORY": str(repo),
            "SENSOR_INTERVAL_S": "5",
            "SENSOR_START_STOPPED": "0",
            "SENSOR_BATCH_SIZE": str(batch_size),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
            **(extra_env or {}),
        }
    )
    store = SqliteStore(home / "analysis_records.sqlite")
    log_path = root / "daemon.log"
    timeout = 120 + 15 * n / batch_size
    first: float | None = None
    count = 0
    with log_path.open("wb") as log:
        start = time.perf_counter()
        daemon = subprocess.Popen(
            [_daemon_binary(), "run", "-w", str(root / "workspace.yaml")],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while True:
                if daemon.poll() is not None:
                    raise RuntimeError(f"dagster-daemon exited with {daemon.returncode}; see {log_path}")
                if (home / "analysis_records.sqlite").exists():
                    count = len(store.find_records(trivial.NAME))
                if count and first is None:
                    first = time.perf_counter()
                if count >= n:
                    break
                if time.perf_counter() - start > timeout:
                    raise RuntimeError(f"only {count} of {n} jobs recorded after {timeout} s; see {log_path}")
                time.sleep(0.25)
            last = time.perf_counter()
            _wait_for_runs_to_end(home)
        finally:
            store.close()
            _stop_group(daemon)
    total = last - start
    assert first is not None
    steady = (n - 1) / (last - first) if n > 1 and last > first else n / total
    return steady, n / total, last - first, _run_phases(home), floor_s


def run(options: RunOptions) -> list[Entry]:
    root = Path(options.workdir) / "daemon"
    entries: list[Entry] = []
    modes = [
        (options.sizes.daemon_jobs, DEFAULT_BATCH_SIZE, f"batches of {DEFAULT_BATCH_SIZE} (default)"),
        (options.sizes.daemon_single_jobs, 1, "one run per job (SENSOR_BATCH_SIZE=1)"),
    ]
    for n, batch_size, mode in modes:
        options.log(f"  dagster-daemon: {n} trivial jobs from the inbox, {mode} (shipped dagster.yaml)")
        steady, overall, span, phases, floor_s = _daemon_rate(
            options, root / f"batch_{batch_size}", n, batch_size
        )
        batched = batch_size > 1
        runs = f"{batch_size} jobs per run" if batched else "one Dagster run (process) per job"
        entries += [
            compared(
                f"{n} trivial jobs: inbox sensor + daemon, steady state, {mode}",
                steady,
                "jobs/s",
                "floor: plain Python loop",
                n / floor_s,
                "value ratio",
                target=f"≥ {TARGET_JOBS_PER_S:g} jobs/s" if batched else None,
                met=(lambda v: v >= TARGET_JOBS_PER_S) if batched else None,
                met_on="value",
                note=f"first record to last: {span:.1f} s; {runs}; {phases}",
            ),
            *(
                [
                    entry(
                        f"{n} trivial jobs: inbox sensor + daemon, steady state, against the earlier target",
                        steady,
                        "jobs/s",
                        target=f"≥ {EARLIER_TARGET_JOBS_PER_S:g} jobs/s",
                        met=steady >= EARLIER_TARGET_JOBS_PER_S,
                        note="the target before issue 20 (item 3b)",
                    )
                ]
                if batched
                else []
            ),
            entry(
                f"{n} trivial jobs: inbox sensor + daemon, start to last record, {mode}",
                overall,
                "jobs/s",
                note=f"{n / overall:.1f} s including daemon and code server start-up and the first tick",
            ),
        ]
    return entries


def run_postgres(options: RunOptions) -> list[Entry]:
    """The same trivial jobs through the daemon with Dagster's storage (runs, event logs, the run queue,
    sensor state) in SQLite files under ``DAGSTER_HOME`` (the shipped ``dagster_home/dagster.yaml``) and
    in PostgreSQL (``deploy/dagster.yaml``, ``DAGSTER_PG_*`` of a fresh database on a local server), one
    after the other in the same run; the analysis records stay in SQLite both times. ``--quick``: the
    PostgreSQL side only (the ``daemon`` benchmark runs the SQLite side)."""
    n = options.sizes.daemon_pg_jobs
    root = Path(options.workdir) / "daemon_postgres"
    label = f"{n} trivial jobs: inbox sensor + daemon, Dagster storage in PostgreSQL"
    deploy_yaml = (REPO_ROOT / "deploy" / "dagster.yaml").read_text()
    measured: dict[str, tuple[float, float, float, str, float]] = {}
    try:
        with postgres_server() as server:
            database = server.new_database("bench_daemon")
            pg_env = server.env(database)
            if not options.quick:  # quick: PostgreSQL only (CI budget); the `daemon` benchmark runs SQLite
                options.log(f"  dagster-daemon: {n} trivial jobs, Dagster storage in SQLite (shipped)")
                measured["SQLite"] = _daemon_rate(options, root / "sqlite", n, DEFAULT_BATCH_SIZE)
            options.log(
                f"  dagster-daemon: {n} trivial jobs, Dagster storage in PostgreSQL (deploy/dagster.yaml, "
                f"database {database} on 127.0.0.1:{server.port})"
            )
            with environment(**pg_env):
                measured["PostgreSQL"] = _daemon_rate(
                    options, root / "postgres", n, DEFAULT_BATCH_SIZE, deploy_yaml, pg_env
                )
            version = server.query(database, "SHOW server_version")[0][0]
    except ServerMissing as exc:
        return [server_missing(label, exc, "jobs/s")]
    entries: list[Entry] = []
    for storage, (steady, overall, span, phases, _floor) in measured.items():
        yaml = "dagster_home/dagster.yaml" if storage == "SQLite" else "deploy/dagster.yaml"
        entries.append(
            entry(
                f"{n} trivial jobs: inbox sensor + daemon, Dagster storage in {storage}, steady state",
                steady,
                "jobs/s",
                note=(
                    f"{yaml}; first record to last: {span:.1f} s; {n / overall:.1f} s from daemon start to "
                    f"last record ({overall:.2f} jobs/s); batches of {DEFAULT_BATCH_SIZE}; {phases}"
                ),
            )
        )
    if "SQLite" not in measured:
        return entries
    pg_steady, sqlite_steady = measured["PostgreSQL"][0], measured["SQLite"][0]
    pg_overall, sqlite_overall = measured["PostgreSQL"][1], measured["SQLite"][1]
    entries.append(
        compared(
            f"{n} trivial jobs: daemon throughput, Dagster storage in PostgreSQL vs SQLite",
            1 / pg_steady,
            "s/job",
            "SQLite (shipped dagster_home/dagster.yaml)",
            1 / sqlite_steady,
            "time ratio",
            target=f"≤ {PG_TARGET:g}x",
            met=lambda r: r <= PG_TARGET,
            note=(
                f"steady state (first record to last): {pg_steady:.2f} vs {sqlite_steady:.2f} jobs/s; from "
                f"daemon start: {pg_overall:.2f} vs {sqlite_overall:.2f} jobs/s "
                f"({sqlite_overall / pg_overall:.2f}x the time); PostgreSQL {version} on 127.0.0.1 "
                "(TCP, fsync=off, a fresh database)"
            ),
        )
    )
    return entries
