"""The UI agrees with the record: a skip shows the recorded result's checks (not "Skipped"), a run says
on its page what it did (a run tag), and a run config the analysis refuses changes no partition."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetPartitionStatus,
    AssetRecordsFilter,
    DagsterRunStatus,
)

from analysis_wrapper.analyses.isi_violations import analysis as isi
from analysis_wrapper.batch import OUTCOME_TAG
from analysis_wrapper.checks import CHECK_NAMES, MATCHES_RECORD
from analysis_wrapper.store.base import JobState
from analysis_wrapper_tests.harness import Harness, write_job
from analysis_wrapper_tests.sample_analyses import echo

ASSET = AssetKey(echo.asset_name)
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def _outcome_tag(h: Harness, run_id: str) -> str | None:
    run = h.instance.get_run_by_id(run_id)
    assert run is not None
    return run.tags.get(OUTCOME_TAG)


def _checks_tab(h: Harness, key: str) -> dict[str, tuple[str, bool | None]]:
    """What the Checks tab shows for partition ``key``: each check's latest execution's status and
    whether it passed (from the instance's check execution records, as the UI reads them)."""
    from dagster._core.storage.event_log.base import PartitionKeyFilter

    shown = {}
    for name in CHECK_NAMES:
        (latest,) = h.instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(ASSET, name), limit=1, partition_filter=PartitionKeyFilter(key=key)
        )
        evaluation = latest.event.asset_check_evaluation if latest.event else None
        shown[name] = (latest.status.value, evaluation.passed if evaluation else None)
    return shown


def _recorded(h: Harness, tmp_path: Path, **params: Any) -> Any:
    (job,) = h.submit([write_job(tmp_path / "jobs", [tmp_path / "jobs"], **params)])
    assert h.materialize("echo", job.partition_key).success
    return job


def _check_is_current(h: Harness, keys: list[str]) -> bool:
    """Whether each partition's latest check execution aims at its latest materialization, as the
    check's *Partitions* view reads it (else it counts the partition as not evaluated)."""
    infos = h.instance.event_log_storage.get_asset_check_partition_info(
        [AssetCheckKey(ASSET, name) for name in CHECK_NAMES], partition_keys=keys
    )
    assert {i.partition_key for i in infos} == set(keys), infos
    return all(i.is_current and i.latest_target_materialization_storage_id for i in infos)


def _partition_status(h: Harness, key: str) -> AssetPartitionStatus | None:
    """The partition's status as the Partitions tab shows it (green, red, ...)."""
    partitions = h.defs.resolve_assets_def(ASSET).partitions_def
    return h.instance.get_status_by_partition(ASSET, [key], partitions).get(key)


def _latest(h: Harness, key: str) -> Any:
    records = h.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=ASSET, asset_partitions=[key]), limit=1
    ).records
    return records[0]


def test_a_skip_shows_the_recorded_results_real_checks_and_says_so_on_the_run(
    harness_factory: Any, tmp_path: Path
) -> None:
    h = harness_factory([echo])
    job = _recorded(h, tmp_path)
    key = job.partition_key
    skip = h.materialize("echo", key)  # as the README's `dagster job launch` example does
    assert skip.success and not skip.get_asset_materialization_events()
    evaluations = {e.check_name: e for e in skip.get_asset_check_evaluations()}
    assert set(evaluations) == set(CHECK_NAMES)
    assert all(e.passed and e.partition == key for e in evaluations.values())
    assert _checks_tab(h, key) == {name: ("SUCCEEDED", True) for name in CHECK_NAMES}
    assert _outcome_tag(h, skip.run_id) == "skipped: already recorded"

    # A damaged result: the next skip's check says so (red), naming the failed part; the others passed.
    (h.settings.RESULTS_ROOT.absolute() / job.fingerprint / "sub" / "sizes.txt").unlink()
    again = h.materialize("echo", key)
    assert again.success
    assert _checks_tab(h, key) == {MATCHES_RECORD: ("FAILED", False)}
    (failed,) = again.get_asset_check_evaluations()
    assert (failed.description or "").startswith("folder_complete: ")
    assert "sub/sizes.txt missing" in (failed.description or "")
    assert str(failed.metadata["folder_complete"].value).startswith("FAILED: ")
    assert str(failed.metadata["record_in_store"].value).startswith("passed: ")
    assert str(failed.metadata["outputs_valid"].value).startswith("passed: ")


def test_batch_and_ranged_runs_show_skips_checks_and_their_outcome_counts(
    harness_factory: Any, tmp_path: Path
) -> None:
    h = harness_factory([echo])
    inputs = [tmp_path / "jobs"]
    recorded, new, failing = h.submit(
        [write_job(tmp_path / "jobs", inputs, scale=s, fail=s == 3.0) for s in (1.0, 2.0, 3.0)]
    )
    assert h.materialize("echo", recorded.partition_key).success
    batch = h.run_batch("echo", [recorded.partition_key, new.partition_key, failing.partition_key])
    assert not batch.success
    assert _outcome_tag(h, batch.run_id) == "1 recorded, 1 skipped, 1 failed"
    checked = {(e.partition, e.check_name) for e in batch.get_asset_check_evaluations() if e.passed}
    assert checked == {(j.partition_key, n) for j in (recorded, new) for n in CHECK_NAMES}
    assert _check_is_current(h, [recorded.partition_key, new.partition_key])

    only_skips = h.run_batch("echo", [recorded.partition_key, new.partition_key])
    assert only_skips.success and _outcome_tag(h, only_skips.run_id) == "2 skipped"
    assert _checks_tab(h, recorded.partition_key) == {name: ("SUCCEEDED", True) for name in CHECK_NAMES}
    assert _check_is_current(h, [recorded.partition_key, new.partition_key])

    ranged = h.defs.resolve_job_def(echo.job_name).execute_in_process(
        instance=h.instance,
        tags={RANGE_START: recorded.partition_key, RANGE_END: new.partition_key},
        raise_on_error=False,
    )
    assert ranged.success and _outcome_tag(h, ranged.run_id) == "2 skipped"
    skipped_checks = {(e.partition, e.check_name, e.passed) for e in ranged.get_asset_check_evaluations()}
    assert skipped_checks == {(j.partition_key, n, True) for j in (recorded, new) for n in CHECK_NAMES}
    for job in (recorded, new):
        assert _checks_tab(h, job.partition_key) == {name: ("SUCCEEDED", True) for name in CHECK_NAMES}
    assert _check_is_current(h, [recorded.partition_key, new.partition_key])


def test_a_result_recorded_by_a_run_that_died_before_reporting_it_is_reported_by_the_next_run(
    harness_factory: Any, tmp_path: Path
) -> None:
    """A run killed between its record and its materialization leaves a recorded job that Dagster was
    never told of: its partition would stay missing and the summary (which reads materializations) one
    job short; the many-hosts test's code-server kill once did exactly that. Made here by wiping the
    asset's events after the records: the next run that finds them recorded reports them, as
    materializations naming the run that recorded them, and later runs skip as usual."""
    h = harness_factory([echo])
    inputs = [tmp_path / "jobs"]
    first, second = h.submit([write_job(tmp_path / "jobs", inputs, scale=s) for s in (1.0, 2.0)])
    recording = h.run_batch("echo", [first.partition_key, second.partition_key])
    assert recording.success
    h.instance.wipe_assets([ASSET])
    assert not h.instance.fetch_materializations(ASSET, limit=1).records

    batch = h.run_batch("echo", [first.partition_key, second.partition_key])
    assert batch.success and _outcome_tag(h, batch.run_id) == "2 recorded"
    for job in (first, second):
        assert _partition_status(h, job.partition_key) == AssetPartitionStatus.MATERIALIZED
        latest = _latest(h, job.partition_key)
        assert latest.run_id == batch.run_id
        meta = latest.asset_materialization.metadata
        assert meta["status"].value == (
            f"recorded by run {recording.run_id}, reported by this run (that run ended first)"
        )
        assert meta["fingerprint"].value == job.fingerprint
    assert {e.partition for e in batch.get_asset_check_evaluations() if e.passed} == {
        first.partition_key,
        second.partition_key,
    }
    again = h.run_batch("echo", [first.partition_key, second.partition_key])
    assert again.success and _outcome_tag(h, again.run_id) == "2 skipped"

    h.instance.wipe_assets([ASSET])  # the same through one partition's own run (the UI's Materialize)
    one = h.materialize("echo", first.partition_key)
    assert _partition_status(h, first.partition_key) == AssetPartitionStatus.MATERIALIZED
    assert _latest(h, first.partition_key).run_id == one.run_id
    assert h.store.get_job("echo", first.partition_key).state == JobState.DONE


def test_a_refused_run_config_changes_nothing_of_a_recorded_partition(
    harness_factory: Any, tmp_path: Path
) -> None:
    h = harness_factory([echo])
    job = _recorded(h, tmp_path)
    key = job.partition_key
    before = _latest(h, key)
    observations_before = h.instance.fetch_observations(
        AssetRecordsFilter(asset_key=ASSET, asset_partitions=[key]), limit=100
    ).records

    bad = h.materialize("echo", key, raise_on_error=False, scale=-2.0)

    assert not bad.success
    # It ends CANCELED, not FAILURE: Dagster would show the recorded partition failed (red) until its next
    # materialization, which a recorded job never gets.
    assert h.instance.get_run_by_id(bad.run_id).status == DagsterRunStatus.CANCELED
    assert _partition_status(h, key) == AssetPartitionStatus.MATERIALIZED
    message = next(e for e in bad.all_events if e.is_step_failure).step_failure_data.error.message
    assert "Run config refused" in message and "parameters.scale" in message and "greater than 0" in message
    after = _latest(h, key)
    assert after.storage_id == before.storage_id and after.run_id == before.run_id
    assert after.asset_materialization.metadata == before.asset_materialization.metadata
    observations = h.instance.fetch_observations(
        AssetRecordsFilter(asset_key=ASSET, asset_partitions=[key]), limit=100
    ).records
    assert [o.storage_id for o in observations] == [o.storage_id for o in observations_before]
    assert not any(e.is_asset_observation or e.is_step_materialization for e in bad.all_events)
    entry = h.store.get_job("echo", key)
    assert entry.state == JobState.DONE and entry.attempts == 1 and not entry.last_error
    tag = _outcome_tag(h, bad.run_id)
    assert tag is not None and tag.startswith("refused: Run config refused") and "parameters.scale" in tag
    assert _checks_tab(h, key) == {name: ("SUCCEEDED", True) for name in CHECK_NAMES}

    # A ranged run with the same config is refused before its first partition too.
    other = h.submit([write_job(tmp_path / "more", [tmp_path / "jobs"], scale=5.0)])[0]
    ranged = h.defs.resolve_job_def(echo.job_name).execute_in_process(
        instance=h.instance,
        tags={RANGE_START: key, RANGE_END: other.partition_key},
        run_config={"ops": {echo.asset_name: {"config": {"scale": -2.0}}}},
        raise_on_error=False,
    )
    assert not ranged.success
    assert h.instance.get_run_by_id(ranged.run_id).status == DagsterRunStatus.CANCELED
    assert _partition_status(h, key) == AssetPartitionStatus.MATERIALIZED
    assert not any(e.is_asset_observation or e.is_step_materialization for e in ranged.all_events)
    assert h.store.get_job("echo", other.partition_key).state == JobState.PENDING
    assert _latest(h, key).storage_id == before.storage_id
    assert _checks_tab(h, key) == {name: ("SUCCEEDED", True) for name in CHECK_NAMES}


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"isi_violations_cutoff": -0.1}, "parameters.isi_violations_cutoff"),
        ({"min_isi_ms": 5.0}, "min_isi_ms (5.0) must be smaller than isi_threshold_ms"),  # with the job's
    ],
)
def test_isi_violations_refuses_a_bad_override_before_its_recorded_partition_changes(
    harness_factory: Any, example_jobs: list[Path], override: dict[str, Any], named: str
) -> None:
    h = harness_factory([isi])
    job = h.submit(example_jobs[:1])[0]
    assert h.materialize("isi_violations", job.partition_key).success
    key, asset = job.partition_key, AssetKey(isi.asset_name)
    before = h.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset, asset_partitions=[key]), limit=1
    ).records[0]
    bad = h.materialize("isi_violations", key, raise_on_error=False, **override)
    assert not bad.success
    message = next(e for e in bad.all_events if e.is_step_failure).step_failure_data.error.message
    assert "Run config refused, nothing was run or changed" in message and named in message
    assert not any(e.is_asset_observation or e.is_step_materialization for e in bad.all_events)
    after = h.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset, asset_partitions=[key]), limit=1
    ).records[0]
    assert after.storage_id == before.storage_id
    assert h.store.get_job("isi_violations", key).state == JobState.DONE


def test_a_failed_partitions_status_keeps_its_whole_message_on_one_line() -> None:
    from analysis_wrapper.partition_outcome import failure_metadata

    meta = failure_metadata(RuntimeError("cannot read x.nwb: unable to\n  open the file (truncated)"), "r1")
    assert meta["status"] == "failed: RuntimeError: cannot read x.nwb: unable to open the file (truncated)"
