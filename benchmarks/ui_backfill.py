"""Issue 20, item 5: a backfill launched from the Dagster UI against ``analysis-wrapper run`` over the same
jobs, in one run.

Ours (the UI path): a fresh ``DAGSTER_HOME`` with the shipped ``dagster_home/dagster.yaml`` (queued run
coordinator, 2 runs at once), N trivial jobs registered with ``analysis-wrapper submit`` (in-process, the
trivial analysis served), then ``dagster dev`` (webserver, daemon, code server) on the code location
``benchmarks.daemon_defs``, its sensors stopped (``SENSOR_START_STOPPED=1``: the inbox sensor would
otherwise run the registered jobs itself). The backfill is launched as the UI's Materialize dialog
launches it: the GraphQL mutation ``launchPartitionBackfill`` on the webserver's ``/graphql`` with
``assetSelection`` = the result asset and ``partitionNames`` = every partition (what the dialog sends when
all partitions are selected), ``DRY_RUN=0``. The clock runs from the launch to the last record; the runs
of the backfill are counted.

Compared: ``analysis-wrapper run --no-dry-run`` in-process over the same N job files on a fresh home
(``benchmarks.overhead.cli_run``: the default ``--batch-size``). Ratio = UI time / CLI time, target at
most 2x at 60 partitions.

Dagster's backfill daemon looks at new backfills every 30 s (``DEFAULT_DAEMON_INTERVAL_SECONDS``, not
configurable), so a backfill waits 0 to 30 s before its first run exists; the note gives that wait
(launch to the first run's creation) apart from the rest, and a second row times the backfill from its
first run's creation. ``--quick`` (8 partitions) starts ``dagster-webserver`` alone and
``dagster-daemon run`` right after the launch, so the daemon's first look takes the backfill (its start-up
instead of the wait, which keeps CI short); the full run (60 and 1,000) uses ``dagster dev`` as a user does.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import trivial
from benchmarks.common import (
    REPO_ROOT,
    Entry,
    RunOptions,
    clean_git_repo,
    compared,
    environment,
    failed,
    stopwatch,
)
from benchmarks.overhead import cli_run
from benchmarks.webserver import LAUNCH_PARTITION_BACKFILL, dagster_ui

TARGET_RATIO = 2.0
TARGET_SIZE = 60
SIZES_FULL = (60, 1_000)
SIZES_QUICK = (8,)
BACKFILL_TAG = "dagster/backfill"


def partitions_per_run() -> int:
    """``BACKFILL_PARTITIONS_PER_RUN`` as shipped (the benchmark's servers get no such variable)."""
    from analysis_wrapper.settings import Settings

    field = Settings.model_fields.get("BACKFILL_PARTITIONS_PER_RUN")
    return int(field.default) if field is not None else 1


def _env(root: Path, home: Path, repo: Path) -> dict[str, str]:
    from analysis_wrapper_tests.environment import scrubbed_environ

    env = {k: v for k, v in scrubbed_environ().items() if k != "BACKFILL_PARTITIONS_PER_RUN"}
    env.update(
        {
            "DAGSTER_HOME": str(home),
            "DISPATCH_INBOX": str(root / "inbox"),
            "RESULTS_ROOT": str(root / "results"),
            "DRY_RUN_ROOT": str(root / "dry_run"),
            "DRY_RUN": "0",
            "CODE_REPOSITORY": str(repo),
            "SENSOR_START_STOPPED": "1",
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    return env


def _submit(jobs: Path, env: dict[str, str]) -> None:
    """``analysis-wrapper submit JOBS`` in-process: registry entries and dynamic partitions."""
    from analysis_wrapper.cli import main
    from analysis_wrapper.resources.record_store import close_all_stores

    names = ("DAGSTER_HOME", "RESULTS_ROOT", "DRY_RUN_ROOT", "DRY_RUN", "CODE_REPOSITORY", "DISPATCH_INBOX")
    out = io.StringIO()
    with environment(**{n: env[n] for n in names}), trivial.served(), contextlib.redirect_stdout(out):
        try:
            code = main(["submit", str(jobs)])
        finally:
            close_all_stores()
    if code != 0:
        raise RuntimeError(f"analysis-wrapper submit: exit {code}: {out.getvalue()[-300:]}")


def _recorded(home: Path) -> int:
    import sqlite3

    path = home / "analysis_records.sqlite"
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        try:
            row = conn.execute("SELECT count(*) FROM records WHERE analysis = ?", [trivial.NAME]).fetchone()
        except sqlite3.OperationalError:  # the table is not there yet
            return 0
    return int(row[0])


def _backfill_runs(home: Path, backfill_id: str) -> list[Any]:
    from dagster import DagsterInstance, RunsFilter
    from dagster._core.instance.ref import InstanceRef

    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    try:
        return list(instance.get_run_records(RunsFilter(tags={BACKFILL_TAG: backfill_id})))
    finally:
        instance.dispose()


def ui_backfill(options: RunOptions, root: Path, n: int) -> tuple[float, dict[str, Any]]:
    """Seconds from the launch of a UI backfill of ``n`` registered partitions to the last record."""
    from benchmarks.daemon import _wait_for_runs_to_end

    repo = clean_git_repo(root / "code_repo")
    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())
    env = _env(root, home, repo)
    jobs = trivial.write_trivial_jobs(root / "trivial", n)
    with stopwatch() as registered:
        _submit(jobs, env)
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    try:
        keys = list(instance.get_dynamic_partitions(trivial.analysis.partitions_name))
    finally:
        instance.dispose()
    if len(keys) != n:
        raise RuntimeError(f"{len(keys)} partitions registered for {n} jobs")
    asset_path = [trivial.analysis.asset_name]
    timeout = 240 + 3 * n
    # Quick: the webserver alone, the daemon started right after the launch (its first backfill
    # iteration takes the backfill: no wait of up to 30 s for its next one). Full: dagster dev.
    late_daemon = options.quick
    with dagster_ui(root, env, asset_path, daemon=not late_daemon) as ui, _daemon(root, env) as daemon:
        options.log(f"    {ui.process.name} up in {ui.process.startup_s:.1f} s; launching the backfill")
        params = {
            "assetSelection": [{"path": asset_path}],
            "partitionNames": keys,
            "fromFailure": False,
            "tags": [],
        }
        start = time.perf_counter()
        launched_at = time.time()
        reply = ui.graphql(LAUNCH_PARTITION_BACKFILL, {"backfillParams": params})
        result = reply.data["launchPartitionBackfill"]
        if result.get("__typename") != "LaunchBackfillSuccess":
            raise RuntimeError(f"launchPartitionBackfill: {result}")
        backfill_id = result["backfillId"]
        if late_daemon:
            daemon.spawn()
        count = polls = 0
        while count < n:
            for process in (ui.process, daemon) if late_daemon else (ui.process,):
                if not process.alive:
                    raise RuntimeError(f"{process.name} exited: {process.tail(20)}")
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"only {count} of {n} partitions recorded after {timeout} s")
            time.sleep(0.25)
            count = _recorded(home)
            polls += 1
            if count < n and polls % 20 == 0:
                _fail_if_ended(home, backfill_id, count, n)
        seconds = time.perf_counter() - start
        _wait_for_runs_to_end(home, timeout_s=60)
        runs = _backfill_runs(home, backfill_id)
    first_run = min((r.create_timestamp.timestamp() for r in runs), default=launched_at)
    return seconds, {
        "runs": len(runs),
        "wait_s": max(0.0, first_run - launched_at),
        "register_s": registered[0],
        "startup_s": ui.process.startup_s or 0.0,
        "ui": "dagster-webserver, dagster-daemon started after the launch" if late_daemon else "dagster dev",
    }


def _fail_if_ended(home: Path, backfill_id: str, count: int, n: int) -> None:
    """RuntimeError when the backfill has ended with partitions unrecorded (its runs failed), saying why."""
    from dagster import DagsterInstance
    from dagster._core.execution.backfill import BulkActionStatus
    from dagster._core.instance.ref import InstanceRef

    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    try:
        backfill = instance.get_backfill(backfill_id)
        if backfill is None or backfill.status in {BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING}:
            return
        runs = _backfill_runs(home, backfill_id)
        if any(not r.dagster_run.is_finished for r in runs):
            return
        statuses: dict[str, int] = {}
        for r in runs:
            statuses[r.dagster_run.status.value] = statuses.get(r.dagster_run.status.value, 0) + 1
        why = ""
        failures = [r for r in runs if r.dagster_run.status.value == "FAILURE"]
        if failures:
            for event in instance.all_logs(failures[0].dagster_run.run_id):
                error = getattr(getattr(event.dagster_event, "event_specific_data", None), "error", None)
                if error is not None:
                    why = f"; first failure: {error.message.strip().splitlines()[0][:200]}"
                    break
    finally:
        instance.dispose()
    raise RuntimeError(
        f"the backfill ended {backfill.status.value} with {count} of {n} partitions recorded; "
        f"runs {statuses}{why}"
    )


@contextlib.contextmanager
def _daemon(root: Path, env: dict[str, str]) -> Iterator[Any]:
    """A ``dagster-daemon run`` process, not started (the caller spawns it); stopped at the end."""
    import sys

    from analysis_wrapper_tests.servers import ServerProcess

    argv = [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(root / "workspace.yaml")]
    process = ServerProcess("dagster-daemon", argv, root / "daemon.log", root, env)
    try:
        yield process
    finally:
        process.stop(timeout_s=20)


def run(options: RunOptions) -> list[Entry]:
    base = Path(options.workdir) / "ui_backfill"
    per_run = partitions_per_run()
    entries: list[Entry] = []
    for n in SIZES_QUICK if options.quick else SIZES_FULL:
        root = base / f"n{n}"
        options.log(f"  UI backfill of {n} partitions (dagster dev, launchPartitionBackfill)")
        try:
            ui_s, info = ui_backfill(options, root / "ui", n)
        except Exception as exc:
            entries.append(failed(f"UI backfill of {n} partitions (launchPartitionBackfill)", exc))
            continue
        options.log(f"  analysis-wrapper run over the same {n} jobs (in-process, fresh home)")
        repo = clean_git_repo(root / "cli_repo")
        cli_s = cli_run(options, root / "cli", root / "ui" / "trivial" / "jobs", repo, n)
        at_target = n == TARGET_SIZE
        after_wait = ui_s - info["wait_s"]
        entries.append(
            compared(
                f"UI backfill of {n} partitions (launchPartitionBackfill) vs analysis-wrapper run",
                ui_s,
                "s",
                f"analysis-wrapper run over the same {n} jobs (in-process)",
                cli_s,
                "time ratio",
                target=f"≤ {TARGET_RATIO:g}x" if at_target else None,
                met=(lambda r: r <= TARGET_RATIO) if at_target else None,
                note=(
                    f"{info['runs']} runs for {n} partitions (BACKFILL_PARTITIONS_PER_RUN = {per_run}); "
                    f"launch to first run created {info['wait_s']:.1f} s (the backfill daemon looks every "
                    f"30 s), then {after_wait:.1f} s to the last record; "
                    f"{n / ui_s:.2f} vs {n / cli_s:.2f} jobs/s; {info['ui']}, shipped dagster.yaml (2 runs "
                    f"at once), sensors stopped; not timed: submit {info['register_s']:.1f} s, start-up "
                    f"{info['startup_s']:.1f} s"
                ),
            )
        )
        entries.append(
            compared(
                f"UI backfill of {n} partitions, from its first run's creation to the last record",
                after_wait,
                "s",
                f"analysis-wrapper run over the same {n} jobs (in-process)",
                cli_s,
                "time ratio",
                note="the backfill without the backfill daemon's wait for its next look (Dagster's "
                "fixed 30 s interval); no target",
            )
        )
    return entries
