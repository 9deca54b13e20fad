"""Parameter names (issue 19, item 5): a name the analysis's ``Params`` does not take is refused, in a
job file, in ``distributed_parameters`` and in run config, naming where and the closest known name; a
``Params`` that keeps extra fields (``extra="allow"``, as aind-data-schema's ``GenericModel``) keeps
them, in the fingerprint and the record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from aind_data_schema.base import GenericModel
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from analysis_wrapper.analyses.isi_violations import analysis as isi
from analysis_wrapper.analysis import Analysis
from analysis_wrapper.cli import main
from analysis_wrapper.fingerprint import fingerprint
from analysis_wrapper.job_file import JobFileError, load_job_file, parse_job
from analysis_wrapper.make_job import build_analysis_job
from analysis_wrapper.parameters import parameter_names
from analysis_wrapper.resources.record_store import close_all_stores
from analysis_wrapper_tests.environment import scrub_settings
from analysis_wrapper_tests.harness import write_job


class _Outputs(BaseModel):
    n_inputs: int = 0


def _run(job: Any, params: Any, results_dir: Path, logger: Any) -> _Outputs:
    return _Outputs(n_inputs=len(job.input_paths))


class StrictParams(BaseModel):
    threshold: float = Field(1.0, validation_alias=AliasChoices("threshold", "thr"))
    window_s: float = Field(2.0, alias="window")
    model_config = ConfigDict(populate_by_name=True)


class CapsuleSpec(GenericModel):
    """A capsule's ``AnalysisSpecification``: aind-data-schema's GenericModel keeps extra fields."""

    threshold: float = 1.0


strict = Analysis(name="strict", version="1", params=StrictParams, outputs=_Outputs, run=_run)
capsule_like = Analysis(name="capsule_like", version="1", params=CapsuleSpec, outputs=_Outputs, run=_run)


def job(base: dict[str, Any] | None = None, distributed: dict[str, Any] | None = None) -> Any:
    data: dict[str, Any] = {"s3_location": ["s3://bucket/asset_a"], "distributed_parameters": distributed}
    data["analysis_code"] = {"url": "https://example.org/code", "parameters": base or {}}
    return parse_job(data, "jobs/a.json")


def test_the_issues_misspelling_is_refused_naming_file_field_and_closest_name(tmp_path: Path) -> None:
    path = tmp_path / "jobs" / "a.json"
    write_job(path.parent, ["s3://bucket/asset_a"], analysis="isi_violations").rename(path)
    data = json.loads(path.read_text())
    data["distributed_parameters"] = {"isi_violation_cutoff": 0.1}
    path.write_text(json.dumps(data))
    with pytest.raises(JobFileError) as info:
        build_analysis_job(load_job_file(path), isi, source=str(path))
    assert str(info.value) == (
        f"{path}: field 'distributed_parameters.isi_violation_cutoff': not a parameter of isi_violations "
        "(did you mean isi_violations_cutoff?)"
    )


@pytest.mark.parametrize(
    ("where", "field"),
    [
        ("base", "analysis_code.parameters.treshold"),
        ("override", "run_config.treshold"),
        ("distributed", "distributed_parameters.treshold"),
    ],
)
def test_each_layer_names_itself(where: str, field: str) -> None:
    given = {"treshold": 2.0}
    dispatch = job(
        base=given if where == "base" else None, distributed=given if where == "distributed" else None
    )
    with pytest.raises(JobFileError, match=r"did you mean threshold\?") as info:
        build_analysis_job(
            dispatch, strict, overrides=given if where == "override" else None, source="jobs/a.json"
        )
    assert (info.value.source, info.value.field) == ("jobs/a.json", field)


def test_an_unset_override_is_no_parameter_and_a_name_far_from_any_lists_them() -> None:
    assert build_analysis_job(job(), strict, overrides={"nonsense": None}).parameters["threshold"] == 1.0
    with pytest.raises(JobFileError, match=r"\(its parameters: thr, threshold, window, window_s\)"):
        build_analysis_job(job(base={"zzzz": 1}), strict)


def test_aliases_are_names_and_the_job_formats_keys_pass() -> None:
    assert parameter_names(StrictParams) == {"threshold", "thr", "window_s", "window"}
    built = build_analysis_job(
        job(
            base={"thr": 3.0, "analysis_name": "strict", "file_location": ["x"], "dry_run": 1},
            distributed={"window": 4.0},
        ),
        strict,
    )
    assert built.parameters == {"threshold": 3.0, "window_s": 4.0}  # the format's keys are no parameters

    class Forbidding(StrictParams):
        model_config = ConfigDict(extra="forbid")

    forbidding = Analysis(name="forbidding", version="1", params=Forbidding, outputs=_Outputs, run=_run)
    assert (
        build_analysis_job(job(base={"analysis_name": "forbidding"}), forbidding).parameters["threshold"]
        == 1.0
    )


def test_a_params_model_that_keeps_extra_fields_keeps_them_in_the_fingerprint() -> None:
    plain = build_analysis_job(job(base={"threshold": 2.0}), capsule_like)
    extra = build_analysis_job(job(base={"threshold": 2.0}, distributed={"campaign": "c1"}), capsule_like)
    assert plain.parameters == {"threshold": 2.0}
    assert extra.parameters == {"threshold": 2.0, "campaign": "c1"}
    assert extra.fingerprint == fingerprint("capsule_like", extra.inputs, extra.parameters, "1")
    assert extra.fingerprint != plain.fingerprint


def test_extra_fields_reach_the_record(harness_factory: Any, tmp_path: Path) -> None:
    h = harness_factory([capsule_like])
    (built,) = h.submit([write_job(tmp_path / "jobs", [tmp_path / "jobs"], "capsule_like", campaign="c1")])
    assert h.materialize("capsule_like", built.partition_key).success
    record = h.store.get_record("capsule_like", built.fingerprint)
    parameters = record["processing"]["data_processes"][0]["code"]["parameters"]
    assert parameters["campaign"] == "c1" and parameters["threshold"] == 1.0


def test_a_misspelt_run_config_override_is_refused_by_dagster_naming_it(
    harness_factory: Any, tmp_path: Path
) -> None:
    h = harness_factory([isi])
    (built,) = h.submit([write_job(tmp_path / "jobs", [tmp_path / "jobs"], "isi_violations")])
    with pytest.raises(dg.DagsterInvalidConfigError, match="isi_violation_cutoff"):
        h.materialize("isi_violations", built.partition_key, isi_violation_cutoff=0.1)
    assert h.store.get_record("isi_violations", built.fingerprint) is None


def test_the_cli_rejects_the_file_and_registers_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clean_repo: Path,
    example_jobs: list[Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    scrub_settings(monkeypatch)
    monkeypatch.setenv("DRY_RUN", "0")
    monkeypatch.setenv("CODE_REPOSITORY", str(clean_repo))
    path = Path(shutil.copy(example_jobs[0], tmp_path / "a.json"))
    data = json.loads(path.read_text())
    data["distributed_parameters"] = {**(data["distributed_parameters"] or {}), "isi_violation_cutoff": 0.1}
    path.write_text(json.dumps(data))
    for command in ("submit", "run"):
        code = main([command, str(path)])
        close_all_stores()
        out = capsys.readouterr().out
        assert code == 1, out
        assert (
            f"REJECTED {path}: field 'distributed_parameters.isi_violation_cutoff': not a parameter of "
            "isi_violations (did you mean isi_violations_cutoff?)" in out
        )
    assert main(["status", "--json"]) == 0
    close_all_stores()
    assert json.loads(capsys.readouterr().out) == []
    assert not (tmp_path / "analysis_results").exists()
