"""The public testing helper (analysis_wrapper.testing): a job run through the real path, under the
test's folder, with settings given in code (not the environment)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from analysis_wrapper.job_file import load_job_file
from analysis_wrapper.store.base import JobState
from analysis_wrapper.testing import JobRunError, make_job_file, run_analysis_job, settings_under
from analysis_wrapper_tests.sample_analyses import EchoOutputs, echo


def _inputs(tmp_path: Path) -> list[Path]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(b"x" * 10)
    (data / "b.bin").write_bytes(b"y" * 30)
    return [data / "a.bin", data / "b.bin"]


def test_run_records_outputs_and_files_then_finds_the_job_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A developer's environment never reaches the helper: these would send the run elsewhere.
    monkeypatch.setenv("DOCDB_URI", "mongodb://127.0.0.1:9/never")
    monkeypatch.setenv("DRY_RUN", "1")
    monkeypatch.setenv("RESULTS_ROOT", str(tmp_path / "elsewhere"))
    inputs = _inputs(tmp_path)
    environ = dict(os.environ)

    result = run_analysis_job(echo, inputs, tmp_path / "work", parameters={"scale": 2.0})

    assert result.outcome == "done" and result.state == JobState.DONE
    assert result.outputs == EchoOutputs(n_inputs=2, total_bytes=80.0)
    assert result.record is not None and result.record["_id"] == result.job.fingerprint
    assert result.record["analysis_wrapper"]["source_digest"]  # the real commit path wrote it
    assert result.result_dir is not None and result.result_dir.is_relative_to(tmp_path / "work" / "results")
    assert (result.result_dir / "echo.txt").read_text().splitlines() == [str(p) for p in inputs]
    assert json.loads((result.result_dir / "outputs.json").read_text())["total_bytes"] == 80.0
    assert (tmp_path / "work" / "dagster_home" / "analysis_records.sqlite").is_file()
    assert not (tmp_path / "elsewhere").exists()
    assert dict(os.environ) == environ  # the settings were given in code, the environment is untouched

    again = run_analysis_job(echo, inputs, tmp_path / "work", parameters={"scale": 2.0})
    assert again.outcome == "already done"
    assert again.record == result.record and again.outputs == result.outputs


def test_failure_and_rejection_raise_with_the_reason(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path)
    with pytest.raises(JobRunError, match="echo was asked to fail"):
        run_analysis_job(echo, inputs, tmp_path / "work", parameters={"fail": True})
    failed = run_analysis_job(echo, inputs, tmp_path / "work", parameters={"fail": True}, check=False)
    assert failed.outcome == "failed" and failed.record is None and failed.outputs is None
    assert failed.state == JobState.FAILED
    with pytest.raises(JobRunError, match=r"scael.*did you mean scale"):
        run_analysis_job(echo, inputs, tmp_path / "work", parameters={"scael": 2.0})


def test_dry_run_settings_post_nothing(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path)
    settings = settings_under(tmp_path / "work", DRY_RUN=True)
    result = run_analysis_job(echo, inputs, tmp_path / "work", settings=settings)
    assert result.outcome == "dry run" and result.record is None
    assert not (tmp_path / "work" / "results").exists()


def test_job_file_is_the_dispatcher_format(tmp_path: Path) -> None:
    path = make_job_file(tmp_path, ["s3://bucket/asset", tmp_path / "x.nwb"], "echo", {"scale": 3})
    job = load_job_file(path)
    assert job.s3_location == ["s3://bucket/asset", str(tmp_path / "x.nwb")]
    assert job.analysis_name == "echo" and job.base_parameters == {"analysis_name": "echo", "scale": 3}
    assert job.asset_name == ["asset", "x.nwb"] and len(set(job.docdb_record_id)) == 2
