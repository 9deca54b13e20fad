"""UI backfills in batches: a backfill of the result asset runs its partitions many to a run
(BackfillPolicy), each partition reported with its own materialization or observation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, DagsterRunStatus

from analysis_wrapper.checks import CHECK_NAMES
from analysis_wrapper.store.base import JobState
from analysis_wrapper_tests.harness import write_job
from analysis_wrapper_tests.sample_analyses import echo

ASSET = AssetKey(echo.asset_name)
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def _jobs(h: Any, tmp_path: Path, *params: dict[str, Any]) -> list[Any]:
    inputs = [h.settings.CODE_REPOSITORY / "code.py"]
    return h.submit([write_job(tmp_path / "jobs", inputs, **p) for p in params])


def _ranged_run(h: Any, first: str, last: str) -> Any:
    """A run of the asset job over a range of partitions, as the backfill daemon launches it."""
    job_def = h.defs.resolve_job_def(echo.job_name)
    return job_def.execute_in_process(
        instance=h.instance, tags={RANGE_START: first, RANGE_END: last}, raise_on_error=False
    )


def _partition_status(h: Any) -> tuple[set[str], set[str]]:
    """Materialized and failed partitions, as the UI's Partitions tab reads them (the status cache)."""
    from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

    partitions = h.built["echo"].partitions
    value = get_and_update_asset_status_cache_value(h.instance, ASSET, partitions)
    assert value is not None
    materialized = value.deserialize_materialized_partition_subsets(partitions).get_partition_keys()
    failed = value.deserialize_failed_partition_subsets(partitions).get_partition_keys()
    return set(materialized), set(failed)


def test_a_ranged_run_reports_each_partition_itself(harness_factory: Any, tmp_path: Path) -> None:
    h = harness_factory([echo])
    ok, failing, recorded, other = _jobs(
        h, tmp_path, {"scale": 1.0}, {"fail": True}, {"scale": 3.0}, {"scale": 4.0}
    )
    assert h.materialize("echo", recorded.partition_key).success  # recorded before the backfill

    result = _ranged_run(h, ok.partition_key, other.partition_key)  # the four, in the order registered

    assert not result.success  # the run fails at its end, after every partition ran
    run = h.instance.get_run_by_id(result.run_id)
    assert run.status == DagsterRunStatus.FAILURE
    failure = next(e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    assert (
        f"1 of 4 partition(s) of echo failed: {failing.partition_key}"
        in failure.step_failure_data.error.message
    )
    # Each new result is its own materialization, with its metadata, data version and checks.
    records = h.instance.fetch_materializations(AssetRecordsFilter(asset_key=ASSET), limit=100).records
    in_run = {r.partition_key: r.asset_materialization for r in records if r.run_id == result.run_id}
    assert set(in_run) == {ok.partition_key, other.partition_key}
    # ... and the skipped one shows its recorded result's checks (their real state, not "Skipped").
    checked = {(c.partition, c.check_name) for c in result.get_asset_check_evaluations() if c.passed}
    assert checked == {(job.partition_key, name) for job in (ok, recorded, other) for name in CHECK_NAMES}
    for job in (ok, other):
        assert in_run[job.partition_key].metadata["fingerprint"].value == job.fingerprint
        assert in_run[job.partition_key].tags["dagster/data_version"] == job.fingerprint
        assert h.store.get_job("echo", job.partition_key).state == JobState.DONE
    # The skip and the failure are observations saying what happened.
    observed = {
        r.partition_key: r.asset_observation.metadata["status"].value
        for r in h.instance.fetch_observations(AssetRecordsFilter(asset_key=ASSET), limit=100).records
        if r.run_id == result.run_id
    }
    assert observed == {
        recorded.partition_key: "skipped: already recorded",
        failing.partition_key: "failed: RuntimeError: echo was asked to fail",
    }
    assert h.store.get_job("echo", failing.partition_key).state == JobState.FAILED  # to be retried
    # What the Partitions tab shows: the new results materialized; the failed one failed, and so is
    # the skipped one (Dagster's view of a failed ranged run: a partition it planned and saw no
    # materialization of), while its record and latest materialization stay those of its own run.
    materialized, failed = _partition_status(h)
    assert materialized == {ok.partition_key, recorded.partition_key, other.partition_key}
    assert failed == {failing.partition_key, recorded.partition_key}
    latest = h.instance.get_latest_materialization_event(ASSET)
    assert latest is not None


WORKSPACE = """
from pathlib import Path

from analysis_wrapper_tests.harness import make_harness, make_settings
from analysis_wrapper_tests.sample_analyses import echo

here = Path(__file__).parent
defs = make_harness(make_settings(here, here), [echo]).defs
"""


def _backfill_runs(tmp_path: Path, n: int, selections: dict[str, list[int] | None]) -> dict[str, list[Any]]:
    """Register ``n`` partitions, launch one backfill per selection (``None``: all partitions) as the
    UI's launchPartitionBackfill does, let the backfill daemon's logic submit their runs (queued: none
    executes), and return each backfill's runs."""
    import logging
    import time

    from dagster import RunsFilter, instance_for_test
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import PythonFileTarget
    from dagster._daemon.backfill import execute_backfill_iteration

    (tmp_path / "defs.py").write_text(WORKSPACE)
    (tmp_path / "home").mkdir()
    keys = [f"job-{i:04d}" for i in range(n)]
    queued = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}
    target = PythonFileTarget(str(tmp_path / "defs.py"), "defs", str(Path.cwd()), "backfill")
    runs: dict[str, list[Any]] = {}
    with (
        instance_for_test(temp_dir=str(tmp_path / "home"), overrides={"run_coordinator": queued}) as instance,
        create_test_daemon_workspace_context(target, instance) as workspace,
    ):
        instance.add_dynamic_partitions(echo.partitions_name, keys)
        for name, selected in selections.items():
            backfill = PartitionBackfill.from_asset_partitions(
                backfill_id=name,
                asset_graph=workspace.create_request_context().asset_graph,
                partition_names=None if selected is None else [keys[i] for i in selected],
                asset_selection=[ASSET],
                backfill_timestamp=time.time(),
                tags={},
                dynamic_partitions_store=instance,
                all_partitions=selected is None,
                title=None,
                description=None,
                run_config=None,
            )
            instance.add_backfill(backfill)
        for _ in range(3):  # the daemon's ticks, until every run is submitted
            list(execute_backfill_iteration(workspace, logging.getLogger("backfill")))
            if not any(instance.get_backfill(name).submitting_run_requests for name in selections):
                break
        for name in selections:
            assert instance.get_backfill(name).status == BulkActionStatus.REQUESTED
            found = instance.get_runs(RunsFilter(tags={"dagster/backfill": name}))
            runs[name] = sorted(found, key=lambda run: run.tags[RANGE_START])
    return runs


@pytest.mark.slow
def test_materialize_all_on_1000_partitions_makes_10_runs(tmp_path: Path) -> None:
    selections = {"all": None, "gaps": [0, 1, 2, 4, 5, 9]}
    runs = _backfill_runs(tmp_path, 1000, selections)
    assert len(runs["all"]) == 10  # ceil(1000 / BACKFILL_PARTITIONS_PER_RUN), 100 by default
    assert [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in runs["all"][:2]] == [
        ("job-0000", "job-0099"),
        ("job-0100", "job-0199"),
    ]
    # Dagster's own asset job runs them (not echo_job): the project's run tags are not on them.
    assert {r.job_name for r in runs["all"]} == {"__ASSET_JOB"}
    # A range is partitions next to each other in the order registered: a selection with gaps takes
    # one run per unbroken stretch (a stretch of one is a range of one, computed as a lone partition).
    assert [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in runs["gaps"]] == [
        ("job-0000", "job-0002"),
        ("job-0004", "job-0005"),
        ("job-0009", "job-0009"),
    ]


def test_a_range_of_one_is_a_lone_partition(harness_factory: Any, tmp_path: Path) -> None:
    """A backfill's stretch of one partition is a ranged run without a partition tag."""
    h = harness_factory([echo])
    (job,) = _jobs(h, tmp_path, {"scale": 1.0})
    result = _ranged_run(h, job.partition_key, job.partition_key)
    assert result.success
    (materialization,) = result.asset_materializations_for_node(echo.asset_name)
    assert materialization.partition == job.partition_key
    assert materialization.metadata["status"].value == "recorded"
    assert h.store.get_job("echo", job.partition_key).state == JobState.DONE
