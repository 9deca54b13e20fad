"""The provenance record: AIND field paths, a valid aind-data-schema Processing, and code state."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from analysis_wrapper.provenance import DirtyTreeError, check_may_post, code_state, environment_description
from analysis_wrapper_tests.harness import write_job
from analysis_wrapper_tests.sample_analyses import echo


@pytest.fixture
def record(harness_factory: Any, tmp_path: Path) -> dict[str, Any]:
    h = harness_factory([echo])
    job_file = write_job(tmp_path / "jobs", [tmp_path / "jobs"], scale=2)
    (job,) = h.submit([job_file])
    assert h.materialize("echo", job.partition_key).success
    return h.store.get_record("echo", job.fingerprint)


def test_record_keeps_the_aind_field_paths(record: dict[str, Any], tmp_path: Path) -> None:
    process = record["processing"]["data_processes"][0]
    assert record["name"] == record["_id"] and len(record["name"]) == 64
    assert record["location"].endswith(record["name"])
    assert process["process_type"] == "Analysis" and process["stage"] == "Analysis"
    code = process["code"]
    assert code["version"] == "1.0" and code["url"]
    assert code["parameters"] == {"analysis_name": "echo", "scale": 2.0, "fail": False}
    assert [d["url"] for d in code["input_data"]] == [str(tmp_path / "jobs")]
    assert process["output_parameters"]["n_inputs"] == 1
    assert process["start_date_time"] <= process["end_date_time"]
    assert process["experimenters"] and isinstance(process["experimenters"], list)
    assert "partition" in process["notes"]
    extra = record["analysis_wrapper"]
    for key in (
        "run_id",
        "partition_key",
        "asset_key",
        "git_commit",
        "git_dirty",
        "source_digest",
        "environment",
    ):
        assert key in extra
    assert extra["asset_key"] == "echo_result" and extra["git_dirty"] is False
    # The digest of the analysis's own source files (echo's: the test package, which other work may be
    # changing meanwhile: test_source_state compares values), beside the commit.
    assert re.fullmatch("[0-9a-f]{64}", extra["source_digest"])
    assert len(extra["git_commit"]) == 40
    assert extra["environment"]["packages"]["dagster"] == environment_description()["packages"]["dagster"]


def test_processing_part_is_valid_for_aind_data_schema(record: dict[str, Any]) -> None:
    processing = pytest.importorskip(
        "aind_data_schema.core.processing", reason="aind-data-schema (dev extra)"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "neither commit_hash nor version" warning either
        model = processing.Processing.model_validate(record["processing"])
    dumped = model.model_dump(mode="json")
    ours = record["processing"]["data_processes"][0]
    theirs = dumped["data_processes"][0]
    assert theirs["code"]["parameters"] == ours["code"]["parameters"]
    assert theirs["code"]["commit_hash"] == record["analysis_wrapper"]["git_commit"]
    assert theirs["output_parameters"] == ours["output_parameters"]


def test_code_state_of_clean_dirty_and_missing_trees(
    clean_repo: Path, dirty_repo: Path, tmp_path: Path
) -> None:
    clean = code_state(clean_repo)
    assert clean.source == "git" and not clean.dirty and clean.commit and len(clean.commit) == 40
    dirty = code_state(dirty_repo)
    assert dirty.dirty
    (clean_repo / "untracked.txt").write_text("results do not make a tree dirty")
    assert not code_state(clean_repo).dirty
    (clean_repo / "untracked.txt").unlink()
    none = code_state(tmp_path, git_commit_env="abc1234")
    assert (none.commit, none.source, none.dirty) == ("abc1234", "GIT_COMMIT", False)
    assert code_state(tmp_path).source == "unknown"


def test_dirty_tree_rule(dirty_repo: Path) -> None:
    state = code_state(dirty_repo)
    with pytest.raises(DirtyTreeError, match="ALLOW_DIRTY=1"):
        check_may_post(state, dry_run=False, allow_dirty=False)
    check_may_post(state, dry_run=True, allow_dirty=False)
    check_may_post(state, dry_run=False, allow_dirty=True)
