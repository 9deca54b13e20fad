"""Batch runs: many partitions in one run, each stored, recorded and materialized as the asset does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, DagsterRunStatus

from analysis_wrapper.batch import batch_keys
from analysis_wrapper.store.base import JobState
from analysis_wrapper_tests.harness import write_job
from analysis_wrapper_tests.sample_analyses import echo

ASSET = AssetKey(echo.asset_name)


def _jobs(h: Any, tmp_path: Path, *params: dict[str, Any]) -> list[Any]:
    inputs = [h.settings.CODE_REPOSITORY / "code.py"]
    return h.submit([write_job(tmp_path / "jobs", inputs, **p) for p in params])


def _materializations(h: Any) -> dict[str, Any]:
    """The latest materialization of each partition."""
    records = h.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=ASSET), limit=100, ascending=True
    ).records
    return {r.partition_key: r for r in records}


def test_a_batch_runs_each_partition_like_the_asset_and_fails_only_at_the_end(
    harness_factory: Any, tmp_path: Path
) -> None:
    h = harness_factory([echo])
    ok, failing, recorded, other = _jobs(
        h, tmp_path, {"scale": 1.0}, {"fail": True}, {"scale": 3.0}, {"scale": 4.0}
    )
    assert h.materialize("echo", recorded.partition_key).success  # recorded before the batch
    keys = [ok.partition_key, failing.partition_key, recorded.partition_key, other.partition_key]

    result = h.run_batch("echo", keys)

    assert not result.success  # the failure is reported...
    failure = next(e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    message = failure.step_failure_data.error.message
    assert f"1 of 4 partition(s) of echo failed: {failing.partition_key}: RuntimeError" in message
    # ...after every other partition ran and was committed.
    for job in (ok, other):
        entry = h.store.get_job("echo", job.partition_key)
        assert (entry.state, entry.attempts, entry.run_id) == (JobState.DONE, 1, result.run_id)
        record = h.store.get_record("echo", job.fingerprint)
        assert record is not None and Path(record["location"], "echo.txt").is_file()
        assert record["analysis_wrapper"]["run_id"] == result.run_id
    entry = h.store.get_job("echo", failing.partition_key)
    assert (entry.state, entry.attempts) == (JobState.FAILED, 1)
    assert "echo was asked to fail" in (entry.last_error or "")
    assert h.store.get_record("echo", failing.fingerprint) is None
    assert not (h.settings.RESULTS_ROOT / failing.fingerprint).exists()  # nothing half-written kept
    assert h.store.get_job("echo", recorded.partition_key).attempts == 1  # skipped, not run again

    found = _materializations(h)
    assert set(found) == {ok.partition_key, recorded.partition_key, other.partition_key}
    batch_materialization = found[ok.partition_key].asset_materialization
    assert batch_materialization.tags["dagster/data_version"] == ok.fingerprint
    assert batch_materialization.tags["dagster/code_version"] == echo.version
    assert batch_materialization.metadata["fingerprint"].value == ok.fingerprint
    assert batch_materialization.metadata["status"].value == "recorded"
    # the skip is an observation: the partition still shows the run that recorded it
    assert found[recorded.partition_key].run_id != result.run_id
    assert found[recorded.partition_key].asset_materialization.metadata["status"].value == "recorded"
    (skip,) = h.instance.fetch_observations(
        AssetRecordsFilter(asset_key=AssetKey(echo.asset_name), asset_partitions=[recorded.partition_key]),
        limit=1,
    ).records
    assert skip.run_id == result.run_id
    assert skip.asset_observation.metadata["status"].value == "skipped: already recorded"

    run = h.instance.get_run_by_id(result.run_id)
    assert run.status == DagsterRunStatus.FAILURE
    assert batch_keys(run) == keys


def test_batch_dry_run_posts_nothing_and_force_supersedes(harness_factory: Any, tmp_path: Path) -> None:
    h = harness_factory([echo])
    first, second = _jobs(h, tmp_path, {"scale": 1.0}, {"scale": 2.0})
    keys = [first.partition_key, second.partition_key]
    assert h.run_batch("echo", keys, dry_run=True).success
    assert {h.store.get_job("echo", k).state for k in keys} == {JobState.DRY_RUN}
    assert h.store.existing_fingerprints("echo", [first.fingerprint, second.fingerprint]) == set()
    assert (h.settings.DRY_RUN_ROOT / first.fingerprint / "echo.txt").is_file()

    assert h.run_batch("echo", keys).success
    assert h.store.existing_fingerprints("echo", [first.fingerprint]) == {first.fingerprint}
    assert h.run_batch("echo", keys, force=True).success
    records = h.store.find_records("echo", include_superseded=True)
    assert len(records) == 4 and sum(".superseded-" in r["_id"] for r in records) == 2


def test_a_key_not_in_the_registry_fails_alone(harness_factory: Any, tmp_path: Path) -> None:
    h = harness_factory([echo])
    (job,) = _jobs(h, tmp_path, {"scale": 1.0})
    result = h.run_batch("echo", ["nope", job.partition_key])
    assert not result.success
    assert h.store.get_job("echo", job.partition_key).state == JobState.DONE
    failure = next(e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    assert (
        "nope: Partition 'nope' of echo is not in the job registry" in failure.step_failure_data.error.message
    )


def test_partitions_failed_before_they_start_use_up_an_attempt(
    harness_factory: Any, dirty_repo: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    """A batch has no attempt tag for the run-events sensor to count from: it counts them itself."""
    dirty = harness_factory([echo], code_repository=dirty_repo)
    first, second = _jobs(dirty, tmp_path, {"scale": 1.0}, {"scale": 2.0})
    assert not dirty.run_batch("echo", [first.partition_key, second.partition_key]).success
    for job in (first, second):
        entry = dirty.store.get_job("echo", job.partition_key)
        assert (entry.state, entry.attempts) == (JobState.FAILED, 1)
        assert "dirty" in (entry.last_error or "")

    from analysis_wrapper.resources.runtime import AnalysisRuntime

    def no_git(self: Any, *analysis: Any) -> Any:
        raise OSError("git is gone")

    monkeypatch.setattr(AnalysisRuntime, "code_state", no_git)
    assert not dirty.run_batch("echo", [first.partition_key]).success
    entry = dirty.store.get_job("echo", first.partition_key)
    assert (entry.state, entry.attempts) == (JobState.FAILED, 2)
    assert entry.last_error == "OSError: git is gone"


def test_a_failure_after_the_analysis_ran_leaves_no_scratch_folder(
    harness_factory: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    h = harness_factory([echo])
    (job,) = _jobs(h, tmp_path, {"scale": 1.0})
    scratch_root = tmp_path / "scratch"
    scratch_root.mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))
    from analysis_wrapper import partition_run

    def broken_record(**_: Any) -> Any:
        raise ValueError("cannot build the record")

    monkeypatch.setattr(partition_run, "build_record", broken_record)
    assert not h.run_batch("echo", [job.partition_key]).success
    entry = h.store.get_job("echo", job.partition_key)
    assert (entry.state, entry.attempts) == (JobState.FAILED, 1)
    assert entry.last_error == "ValueError: cannot build the record"
    assert list(scratch_root.iterdir()) == []
