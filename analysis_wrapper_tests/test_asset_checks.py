"""The asset check of each partition (``matches_record``, three named parts): evaluated with every
materialization (one-partition runs and batch runs), re-run alone without computing, and red with the
failing part and its reason when the result is not what its record says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dagster import AssetCheckEvaluation

from analysis_wrapper.checks import CHECK_NAMES, MATCHES_RECORD, PART_NAMES
from analysis_wrapper_tests.harness import Harness, write_job
from analysis_wrapper_tests.sample_analyses import echo


def by_name(evaluations: list[AssetCheckEvaluation]) -> dict[str, AssetCheckEvaluation]:
    return {e.check_name: e for e in evaluations}


def parts(evaluation: AssetCheckEvaluation) -> dict[str, tuple[bool, str]]:
    """The check's three parts as its metadata shows them: passed or not, and what each found."""
    shown = {}
    for name in PART_NAMES:
        verdict, _, text = str(evaluation.metadata[name].value).partition(": ")
        assert verdict in ("passed", "FAILED"), evaluation.metadata[name]
        shown[name] = (verdict == "passed", text)
    return shown


def run_checks_only(h: Harness, key: str) -> dict[str, AssetCheckEvaluation]:
    """What the UI's "Execute" on the checks does: the checks of one partition, no materialization."""
    asset = h.built["echo"].asset
    job = h.defs.resolve_job_def(echo.job_name).get_subset(
        asset_selection=set(), asset_check_selection=set(asset.check_keys)
    )
    result = job.execute_in_process(instance=h.instance, partition_key=key)
    assert result.success
    assert not result.get_asset_materialization_events()
    return by_name(list(result.get_asset_check_evaluations()))


def recorded(h: Harness, tmp_path: Path) -> tuple[Any, Path]:
    (job,) = h.submit([write_job(tmp_path / "jobs", [tmp_path / "jobs"])])
    result = h.materialize("echo", job.partition_key)
    checks = by_name(list(result.get_asset_check_evaluations()))
    assert set(checks) == set(CHECK_NAMES)
    assert all(c.passed and c.partition == job.partition_key for c in checks.values()), checks
    return job, h.settings.RESULTS_ROOT.absolute() / job.fingerprint


def test_every_materialization_is_checked_and_checks_rerun_alone(
    harness_factory: Any, tmp_path: Path
) -> None:
    h = harness_factory([echo])
    job, folder = recorded(h, tmp_path)
    record = h.store.get_record("echo", job.fingerprint)
    assert {f["name"]: f["size"] for f in record["analysis_wrapper"]["files"]} == {
        "echo.txt": (folder / "echo.txt").stat().st_size,
        "sub/sizes.txt": (folder / "sub" / "sizes.txt").stat().st_size,
    }
    again = run_checks_only(h, job.partition_key)
    assert all(c.passed for c in again.values())
    assert all(passed for passed, _ in parts(again[MATCHES_RECORD]).values())
    assert h.store.get_record("echo", job.fingerprint) == record  # nothing ran


def test_a_missing_or_changed_file_fails_folder_complete(harness_factory: Any, tmp_path: Path) -> None:
    h = harness_factory([echo])
    job, folder = recorded(h, tmp_path)
    (folder / "sub" / "sizes.txt").unlink()
    (folder / "echo.txt").write_text("x")
    failed = run_checks_only(h, job.partition_key)[MATCHES_RECORD]
    assert not failed.passed and failed.severity.value == "ERROR"
    description = failed.description or ""
    assert description.startswith("folder_complete: ")  # only the failed part is in the description
    assert "sub/sizes.txt missing" in description
    assert "echo.txt has 1 bytes, the record says" in description
    shown = parts(failed)
    assert not shown["folder_complete"][0] and "sub/sizes.txt missing" in shown["folder_complete"][1]
    assert shown["record_in_store"][0] and shown["outputs_valid"][0]
    assert "record_in_store" not in description and "outputs_valid" not in description


def test_outputs_that_do_not_validate_fail_outputs_valid(harness_factory: Any, tmp_path: Path) -> None:
    h = harness_factory([echo])
    job, folder = recorded(h, tmp_path)
    (folder / "outputs.json").write_text(json.dumps({"n_inputs": "many", "total_bytes": 1.0}))
    failed = run_checks_only(h, job.partition_key)[MATCHES_RECORD]
    assert not failed.passed
    assert "outputs_valid: outputs.json does not validate against EchoOutputs: n_inputs:" in (
        failed.description or ""
    )
    assert not parts(failed)["outputs_valid"][0] and parts(failed)["record_in_store"][0]

    (folder / "outputs.json").write_text(json.dumps({"n_inputs": 7, "total_bytes": 1.0}))
    differs = run_checks_only(h, job.partition_key)[MATCHES_RECORD]
    assert not differs.passed and "differs from the record's output_parameters" in (differs.description or "")
    assert not parts(differs)["outputs_valid"][0]


def test_no_record_fails_every_check_with_the_fingerprint(harness_factory: Any, tmp_path: Path) -> None:
    h = harness_factory([echo])
    (job,) = h.submit([write_job(tmp_path / "jobs", [tmp_path / "jobs"])])
    checks = run_checks_only(h, job.partition_key)
    assert set(checks) == set(CHECK_NAMES)
    for check in checks.values():
        assert not check.passed
        assert f"no record of echo under fingerprint {job.fingerprint}" in (check.description or "")
        assert not any(passed for passed, _ in parts(check).values())


def test_a_moved_folder_fails_the_folder_checks(harness_factory: Any, tmp_path: Path) -> None:
    h = harness_factory([echo])
    job, folder = recorded(h, tmp_path)
    folder.rename(folder.with_name("elsewhere"))
    check = run_checks_only(h, job.partition_key)[MATCHES_RECORD]
    shown = parts(check)
    assert not check.passed and shown["record_in_store"][0]
    assert not shown["folder_complete"][0] and "outputs.json missing" in shown["folder_complete"][1]
    assert not shown["outputs_valid"][0]
    assert "folder_complete: " in (check.description or "") and "outputs_valid: " in (check.description or "")


def test_batch_runs_check_each_partition(harness_factory: Any, tmp_path: Path) -> None:
    h = harness_factory([echo])
    jobs = h.submit([write_job(tmp_path / f"jobs{i}", [tmp_path / "jobs0"], scale=i + 1.0) for i in range(3)])
    result = h.run_batch("echo", [j.partition_key for j in jobs])
    assert result.success
    evaluations = list(result.get_asset_check_evaluations())
    assert len(evaluations) == len(jobs)  # one check event per partition (three parts in it)
    assert {(e.partition, e.check_name) for e in evaluations} == {
        (j.partition_key, name) for j in jobs for name in CHECK_NAMES
    }
    assert all(e.passed for e in evaluations)
    # a batch that skips them all (recorded) reports observations, no materialization, and the checks of
    # the recorded results it defers to (their real state, never "Skipped")
    again = h.run_batch("echo", [j.partition_key for j in jobs])
    assert again.success
    assert not again.get_asset_materialization_events()
    rechecked = list(again.get_asset_check_evaluations())
    assert {(e.partition, e.check_name) for e in rechecked} == {
        (j.partition_key, name) for j in jobs for name in CHECK_NAMES
    }
    assert all(e.passed for e in rechecked)


def test_a_batch_runs_page_lists_its_partitions_and_their_outcome(
    harness_factory: Any, tmp_path: Path
) -> None:
    h = harness_factory([echo])
    ok, bad = h.submit(
        [
            write_job(tmp_path / "ok", [tmp_path / "ok"]),
            write_job(tmp_path / "bad", [tmp_path / "ok"], fail=True),
        ]
    )
    result = h.run_batch("echo", [ok.partition_key, bad.partition_key])
    assert not result.success
    logs = [e.message for e in h.instance.all_logs(result.run_id) if e.user_message]
    summary = next(m for m in logs if "batch: 1 of 2 partition(s) ok" in m)
    assert f"{ok.partition_key}: recorded" in summary
    assert f"{bad.partition_key}: failed: RuntimeError: echo was asked to fail" in summary
    (observed,) = [
        e.asset_observation_data.asset_observation for e in result.all_events if e.is_asset_observation
    ]
    assert observed.partition == bad.partition_key
    assert observed.metadata["status"].value == "failed: RuntimeError: echo was asked to fail"
    failure = next(e for e in result.all_events if e.is_step_failure)
    table = failure.step_failure_data.user_failure_data.metadata["partitions"].value
    assert {r.data["partition"]: r.data["outcome"] for r in table.records} == {
        ok.partition_key: "recorded",
        bad.partition_key: "failed: RuntimeError: echo was asked to fail",
    }
