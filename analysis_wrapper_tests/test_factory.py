"""The result asset end to end, in-process, on an ephemeral Dagster instance and the SQLite store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, AssetRecordsFilter, AssetsDefinition, asset

from analysis_wrapper.analyses.isi_violations import analysis as isi
from analysis_wrapper.store.base import JobState
from analysis_wrapper_tests.harness import Harness, write_job
from analysis_wrapper_tests.sample_analyses import EchoOutputs, echo


def latest_materialization(h: Harness, asset_name: str, key: str) -> Any:
    records = h.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset_name), asset_partitions=[key]), limit=1
    ).records
    assert records, f"no materialization of {asset_name} {key}"
    return records[0].asset_materialization


def test_isi_jobs_become_partitions_results_and_records(
    harness_factory: Any, example_jobs: list[Path]
) -> None:
    h = harness_factory([isi])
    jobs = h.submit(example_jobs)
    assert len(jobs) == 3
    assert sorted(h.instance.get_dynamic_partitions(isi.partitions_name)) == sorted(
        j.partition_key for j in jobs
    )
    for job in jobs:
        assert h.materialize("isi_violations", job.partition_key).success
        record = h.store.get_record("isi_violations", job.fingerprint)
        assert record is not None and record["_id"] == record["name"] == job.fingerprint
        folder = Path(record["location"])
        assert folder == h.settings.RESULTS_ROOT.absolute() / job.fingerprint
        names = sorted(p.name for p in folder.iterdir())
        assert names == ["isi_violations.csv", "isi_violations.png", "metadata.nd.json", "outputs.json"]
        on_disk = json.loads((folder / "metadata.nd.json").read_text())
        assert on_disk["name"] == job.fingerprint and on_disk["location"] == record["location"]
        outputs = json.loads((folder / "outputs.json").read_text())
        process = record["processing"]["data_processes"][0]
        assert process["output_parameters"] == outputs and outputs["n_files"] == 1
        assert process["code"]["parameters"] == job.parameters
        assert process["code"]["version"] == isi.version
        assert [d["url"] for d in process["code"]["input_data"]] == job.dispatch.s3_location
        assert h.store.get_job("isi_violations", job.partition_key).state == JobState.DONE

        mat = latest_materialization(h, isi.asset_name, job.partition_key)
        meta = mat.metadata
        assert meta["fingerprint"].value == job.fingerprint
        assert meta["results_location"].value == record["location"]
        assert meta["results_link"].value == Path(record["location"]).as_uri()
        assert [r.data["input"] for r in meta["inputs"].value.records] == job.inputs
        assert meta["parameters"].value == job.parameters
        assert meta["git_commit"].value == record["analysis_wrapper"]["git_commit"]
        assert meta["figure"].value.startswith("![isi_violations.png](data:image/png;base64,")
        table = {r.data["output"]: r.data["value"] for r in meta["outputs"].value.records}
        assert table["n_units"] == str(outputs["n_units"])
        assert mat.tags["dagster/data_version"] == job.fingerprint
        assert mat.tags["dagster/code_version"] == isi.version


def latest_observation(h: Harness, asset_name: str, key: str) -> Any:
    records = h.instance.fetch_observations(
        AssetRecordsFilter(asset_key=AssetKey(asset_name), asset_partitions=[key]), limit=1
    ).records
    assert records, f"no observation of {asset_name} {key}"
    return records[0].asset_observation


def test_recorded_fingerprint_is_skipped_unless_forced(harness_factory: Any, tmp_path: Path) -> None:
    h = harness_factory([echo])
    (job,) = h.submit([write_job(tmp_path / "jobs", [tmp_path / "jobs"])])
    assert h.materialize("echo", job.partition_key).success
    first = h.store.get_record("echo", job.fingerprint)

    result = h.materialize("echo", job.partition_key)
    assert result.success
    logs = [e.message for e in h.instance.all_logs(result.run_id) if e.user_message]
    assert any("Skipping" in m and "already recorded" in m for m in logs)
    assert h.store.get_record("echo", job.fingerprint) == first
    # The skip is an observation; the partition's latest materialization is still the recorded result.
    latest = latest_materialization(h, echo.asset_name, job.partition_key)
    assert latest.metadata["status"].value == "recorded"
    assert latest.metadata["fingerprint"].value == job.fingerprint
    assert "outputs" in latest.metadata
    assert latest.metadata["results_link"].value == Path(first["location"]).as_uri()
    skip = latest_observation(h, echo.asset_name, job.partition_key)
    assert skip.metadata["status"].value == "skipped: already recorded"
    assert skip.metadata["git_commit"].value == first["analysis_wrapper"]["git_commit"]
    assert skip.metadata["recorded_by_run"].value == first["analysis_wrapper"]["run_id"]

    forced = h.materialize("echo", job.partition_key, force=True)
    assert forced.success
    second = h.store.get_record("echo", job.fingerprint)
    assert second["analysis_wrapper"]["run_id"] == forced.run_id != first["analysis_wrapper"]["run_id"]
    assert [r["_id"] for r in h.store.find_records("echo")] == [job.fingerprint]
    everything = h.store.find_records("echo", include_superseded=True)
    superseded = [r for r in everything if r["_id"] != job.fingerprint]
    assert len(superseded) == 1
    old = superseded[0]
    assert old["analysis_wrapper"]["superseded_by"] == job.fingerprint
    assert old["analysis_wrapper"]["run_id"] == first["analysis_wrapper"]["run_id"]
    assert Path(old["location"]).is_dir() and Path(second["location"]).is_dir()
    assert old["location"] != second["location"]


def test_dry_run_posts_nothing(harness_factory: Any, tmp_path: Path) -> None:
    h = harness_factory([echo])
    (job,) = h.submit([write_job(tmp_path / "jobs", [tmp_path / "jobs"])])
    result = h.materialize("echo", job.partition_key, dry_run=True)
    assert result.success
    assert h.store.find_records() == []
    assert not (h.settings.RESULTS_ROOT / job.fingerprint).exists()
    dry_folder = h.settings.DRY_RUN_ROOT / job.fingerprint
    assert (dry_folder / "echo.txt").is_file() and (dry_folder / "metadata.nd.json").is_file()
    assert h.store.get_job("echo", job.partition_key).state == JobState.DRY_RUN
    logs = [e.message for e in h.instance.all_logs(result.run_id) if e.user_message]
    assert any("DRY RUN" in m and "nothing posted" in m for m in logs)
    # A dry run is no result: an observation, never the partition's materialization.
    assert not h.instance.fetch_materializations(AssetKey(echo.asset_name), limit=1).records
    observed = latest_observation(h, echo.asset_name, job.partition_key)
    assert observed.metadata["status"].value.startswith("dry run: not posted")
    assert observed.metadata["results_location"].value == str(dry_folder.absolute())


def test_dry_run_of_a_recorded_job_changes_neither_its_state_nor_its_result(
    harness_factory: Any, tmp_path: Path
) -> None:
    h = harness_factory([echo])
    (job,) = h.submit([write_job(tmp_path / "jobs", [tmp_path / "jobs"])])
    assert h.materialize("echo", job.partition_key).success
    recorded = latest_materialization(h, echo.asset_name, job.partition_key)
    # As the Launchpad does: a dry run with an override (another fingerprint), and a forced dry run.
    assert h.materialize("echo", job.partition_key, dry_run=True, scale=5.0).success
    assert h.materialize("echo", job.partition_key, dry_run=True, force=True).success
    entry = h.store.get_job("echo", job.partition_key)
    assert entry.state == JobState.DONE and entry.attempts == 1
    latest = latest_materialization(h, echo.asset_name, job.partition_key)
    assert latest.metadata["status"].value == "recorded"
    assert latest.metadata["fingerprint"].value == recorded.metadata["fingerprint"].value
    assert [r["_id"] for r in h.store.find_records("echo")] == [job.fingerprint]
    observed = latest_observation(h, echo.asset_name, job.partition_key)
    assert observed.metadata["status"].value.startswith("dry run")


def test_dry_run_is_the_default_setting(harness_factory: Any, tmp_path: Path) -> None:
    h = harness_factory([echo], DRY_RUN=True)
    (job,) = h.submit([write_job(tmp_path / "jobs", [tmp_path / "jobs"])])
    assert h.materialize("echo", job.partition_key).success
    assert h.store.find_records() == []
    assert h.store.get_job("echo", job.partition_key).state == JobState.DRY_RUN


def test_failing_analysis_leaves_no_record_and_no_folder(harness_factory: Any, tmp_path: Path) -> None:
    h = harness_factory([echo])
    (job,) = h.submit([write_job(tmp_path / "jobs", [tmp_path / "jobs"], fail=True)])
    result = h.materialize("echo", job.partition_key, raise_on_error=False)
    assert not result.success
    assert h.store.find_records() == []
    assert not (h.settings.RESULTS_ROOT / job.fingerprint).exists()
    entry = h.store.get_job("echo", job.partition_key)
    assert entry.state == JobState.FAILED and entry.attempts == 1
    assert "echo was asked to fail" in entry.last_error
    # The reason is on the partition's history too, naming the run with the full log.
    failed = latest_observation(h, echo.asset_name, job.partition_key)
    assert failed.metadata["status"].value == "failed: RuntimeError: echo was asked to fail"
    assert failed.metadata["run_id"].value == result.run_id


def test_config_violating_params_fails_before_the_analysis_runs(harness_factory: Any, tmp_path: Path) -> None:
    h = harness_factory([echo])
    (job,) = h.submit([write_job(tmp_path / "jobs", [tmp_path / "jobs"])])
    result = h.materialize("echo", job.partition_key, raise_on_error=False, scale=-2.0)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message
    assert "parameters.scale" in message and "greater than 0" in message
    entry = h.store.get_job("echo", job.partition_key)
    assert entry.attempts == 0 and entry.state == JobState.PENDING  # the analysis never started


def test_config_override_changes_parameters_and_fingerprint(harness_factory: Any, tmp_path: Path) -> None:
    h = harness_factory([echo])
    (job,) = h.submit([write_job(tmp_path / "jobs", [tmp_path / "jobs"])])
    assert h.materialize("echo", job.partition_key, scale=3.0).success
    (record,) = h.store.find_records("echo")
    assert record["processing"]["data_processes"][0]["code"]["parameters"]["scale"] == 3.0
    assert record["_id"] != job.fingerprint  # other parameters, other fingerprint


def test_dirty_tree_refused_unless_allowed(harness_factory: Any, tmp_path: Path, dirty_repo: Path) -> None:
    h = harness_factory([echo], code_repository=dirty_repo)
    (job,) = h.submit([write_job(tmp_path / "jobs", [tmp_path / "jobs"])])
    result = h.materialize("echo", job.partition_key, raise_on_error=False)
    assert not result.success
    message = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert "uncommitted changes" in message and "ALLOW_DIRTY=1" in message
    assert h.store.find_records() == []
    assert h.materialize("echo", job.partition_key, dry_run=True).success  # a dry run may be dirty

    allowed = harness_factory([echo], code_repository=dirty_repo, ALLOW_DIRTY=True)
    allowed.submit([write_job(tmp_path / "jobs2", [tmp_path / "jobs"])])
    assert allowed.materialize("echo", job.partition_key).success
    (record,) = allowed.store.find_records("echo")
    assert record["analysis_wrapper"]["git_dirty"] is True


def test_git_commit_setting_used_without_a_git_tree(harness_factory: Any, tmp_path: Path) -> None:
    no_git = tmp_path / "no_git"
    no_git.mkdir()
    h = harness_factory([echo], code_repository=no_git, GIT_COMMIT="0123456789abcdef0123456789abcdef01234567")
    (job,) = h.submit([write_job(tmp_path / "jobs", [tmp_path / "jobs"])])
    assert h.materialize("echo", job.partition_key).success
    record = h.store.get_record("echo", job.fingerprint)
    assert record["analysis_wrapper"]["git_commit"] == "0123456789abcdef0123456789abcdef01234567"
    assert record["processing"]["data_processes"][0]["code"]["commit_hash"].startswith("0123456789")


def test_io_manager_loads_outputs_for_downstream_assets(harness_factory: Any, tmp_path: Path) -> None:
    h = harness_factory([echo])
    (job,) = h.submit([write_job(tmp_path / "jobs", [tmp_path / "jobs"])])
    assert h.materialize("echo", job.partition_key).success
    echo_asset: AssetsDefinition = h.built["echo"].asset
    seen: list[Any] = []

    @asset(partitions_def=h.built["echo"].partitions, deps=[], ins={})
    def doubled(echo_result: EchoOutputs) -> None:  # type: ignore[no-untyped-def]
        seen.append(echo_result)

    from dagster import materialize

    result = materialize(
        [echo_asset.to_source_asset(), doubled],
        instance=h.instance,
        partition_key=job.partition_key,
        resources=h.resources,
        selection=[doubled],
    )
    assert result.success
    assert isinstance(seen[0], EchoOutputs) and seen[0].n_inputs == 1


def test_unknown_partition_fails_with_advice(harness_factory: Any) -> None:
    h = harness_factory([echo])
    h.instance.add_dynamic_partitions(echo.partitions_name, ["never-registered"])
    result = h.materialize("echo", "never-registered", raise_on_error=False)
    assert not result.success
    message = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert "not in the job registry" in message and "analysis-wrapper submit" in message


@pytest.mark.parametrize("name", ["Bad-Name", "1abc", ""])
def test_analysis_names_must_be_identifiers(name: str) -> None:
    from analysis_wrapper.analysis import Analysis

    with pytest.raises(ValueError, match="must match"):
        Analysis(name=name, version="1", params=echo.params, outputs=echo.outputs, run=echo.run)
