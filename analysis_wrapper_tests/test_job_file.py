"""Tests for job files (the AIND dispatcher format), locations, parameter merge and analysis selection."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aind_data_schema.base import GenericModel
from aind_data_schema.components.identifiers import Code, Container, DataAsset, Software
from analysis_pipeline_utils.analysis_dispatch_model import AnalysisDispatchModel
from pydantic import BaseModel

from analysis_wrapper.analyses.isi_violations import IsiViolationsParams
from analysis_wrapper.analyses.isi_violations import analysis as isi
from analysis_wrapper.analysis import Analysis
from analysis_wrapper.fingerprint import fingerprint, partition_key
from analysis_wrapper.job_file import (
    DispatchJob,
    JobFileError,
    UnknownAnalysisError,
    load_job_file,
    normalize_location,
    parse_job_text,
)
from analysis_wrapper.make_job import build_analysis_job, select_analysis
from analysis_wrapper.parameters import describe_parameter_changes, merge_parameters

DISPATCH_LOGGER = "analysis_wrapper.job_file"
MAKE_JOB_LOGGER = "analysis_wrapper.make_job"


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def write_job(path: Path, data: dict[str, Any]) -> Path:
    return write(path, json.dumps(data, indent=2))


# ------------------------------------------------------------------------------ the real AIND format


def full_aind_job() -> AnalysisDispatchModel:
    code = Code(
        url="https://github.com/AllenNeuralDynamics/isi-violations-capsule",
        name="isi-violations",
        version="1.0.0",
        commit_hash="0123456789abcdef0123456789abcdef01234567",
        container=Container(
            container_type="docker", tag="1.0.0", uri="ghcr.io/allenneuraldynamics/isi:1.0.0"
        ),
        run_script="code/run_capsule.py",
        language="Python",
        language_version="3.11.9",
        input_data=[
            DataAsset(name="ecephys_700001_2026-01-15_10-00-00", url="s3://bucket/ecephys_700001"),
            DataAsset(name="ecephys_700002_2026-01-16_11-00-00", url="s3://bucket/ecephys_700002"),
        ],
        parameters=GenericModel(
            analysis_name="isi_violations",
            isi_threshold_ms=2.0,
            analysis_tag="campaign-1",
            extra_setting={"nested": [1, 2.5, None]},
        ),
        core_dependency=Software(name="spikeinterface", version="0.101.2"),
    )
    return AnalysisDispatchModel(
        s3_location=["s3://bucket/ecephys_700001", "s3://bucket/ecephys_700002"],
        asset_name=["ecephys_700001_2026-01-15_10-00-00", "ecephys_700002_2026-01-16_11-00-00"],
        docdb_record_id=["6f0c1a2b-0000-4000-8000-000000000001", "6f0c1a2b-0000-4000-8000-000000000002"],
        file_location=["s3://bucket/ecephys_700001/units.nwb", "s3://bucket/ecephys_700002/units.nwb"],
        distributed_parameters={"min_isi_ms": 0.25, "isi_violations_cutoff": 0.3},
        group_metadata={"subject_id": "700001", "modality": ["ecephys"]},
        query='{"subject.subject_id": "700001"}',
        analysis_code=code,
    )


def test_real_aind_job_with_every_optional_key_loads_intact(tmp_path: Path) -> None:
    model = full_aind_job()
    text = model.model_dump_json()
    original = json.loads(text)
    # Every optional key of the dispatcher model and of Code is really set in the file.
    assert all(value is not None for value in original.values())
    assert all(value is not None for value in original["analysis_code"].values())
    path = write(tmp_path / "job.json", text)

    job = load_job_file(path)

    assert job.model_dump(mode="json") == original
    assert job.s3_location == ["s3://bucket/ecephys_700001", "s3://bucket/ecephys_700002"]
    assert job.asset_name == ["ecephys_700001_2026-01-15_10-00-00", "ecephys_700002_2026-01-16_11-00-00"]
    assert job.docdb_record_id == original["docdb_record_id"]
    assert job.file_location == [
        "s3://bucket/ecephys_700001/units.nwb",
        "s3://bucket/ecephys_700002/units.nwb",
    ]
    assert job.distributed_parameters == {"min_isi_ms": 0.25, "isi_violations_cutoff": 0.3}
    assert job.group_metadata == {"subject_id": "700001", "modality": ["ecephys"]}
    assert job.query == '{"subject.subject_id": "700001"}'
    code = job.analysis_code
    assert code is not None
    assert code.object_type == "Code"
    assert code.url == "https://github.com/AllenNeuralDynamics/isi-violations-capsule"
    assert code.name == "isi-violations"
    assert code.version == "1.0.0"
    assert code.commit_hash == "0123456789abcdef0123456789abcdef01234567"
    assert code.container == {
        "object_type": "Container",
        "container_type": "docker",
        "tag": "1.0.0",
        "uri": "ghcr.io/allenneuraldynamics/isi:1.0.0",
    }
    assert code.run_script == "code/run_capsule.py"
    assert code.language == "Python"
    assert code.language_version == "3.11.9"
    assert code.input_data is not None
    assert [(d.object_type, d.name, d.url) for d in code.input_data] == [
        ("Data asset", "ecephys_700001_2026-01-15_10-00-00", "s3://bucket/ecephys_700001"),
        ("Data asset", "ecephys_700002_2026-01-16_11-00-00", "s3://bucket/ecephys_700002"),
    ]
    assert code.parameters == {
        "analysis_name": "isi_violations",
        "isi_threshold_ms": 2.0,
        "analysis_tag": "campaign-1",
        "extra_setting": {"nested": [1, 2.5, None]},
    }
    assert code.core_dependency == {"object_type": "Software", "name": "spikeinterface", "version": "0.101.2"}
    assert job.analysis_name == "isi_violations"

    # Our dump is still a file the real dispatcher model accepts.
    AnalysisDispatchModel.model_validate(job.model_dump(mode="json"))


def test_real_aind_job_builds_the_expected_analysis_job(tmp_path: Path) -> None:
    path = write(tmp_path / "job.json", full_aind_job().model_dump_json())
    # extra_setting is no parameter of isi_violations: the job is refused (it used to be ignored).
    with pytest.raises(JobFileError, match="not a parameter of isi_violations") as info:
        build_analysis_job(load_job_file(path), isi, source=str(path))
    assert (info.value.source, info.value.field) == (str(path), "analysis_code.parameters.extra_setting")
    data = json.loads(path.read_text())
    del data["analysis_code"]["parameters"]["extra_setting"]
    write_job(path, data)
    job = build_analysis_job(load_job_file(path), isi, source=str(path))
    expected_params = {
        "analysis_name": "isi_violations",
        "analysis_tag": "campaign-1",
        "isi_threshold_ms": 2.0,
        "min_isi_ms": 0.25,
        "isi_violations_cutoff": 0.3,
    }
    assert job.parameters == expected_params
    assert job.inputs == ["s3://bucket/ecephys_700001/units.nwb", "s3://bucket/ecephys_700002/units.nwb"]
    assert job.fingerprint == fingerprint("isi_violations", job.inputs, expected_params, "1.0.0")
    assert job.partition_key == partition_key(
        "isi_violations", job.inputs, expected_params, "ecephys_700001_2026-01-15_10-00-00"
    )
    assert job.partition_key.startswith("ecephys_700001_2026-01-15_10-00-00-")
    assert job.source == str(path)
    assert (job.analysis, job.version) == ("isi_violations", "1.0.0")


MINIMAL_DISPATCHER_JOB = """{
  "s3_location": ["s3://codeocean-s3datasetsbucket/ecephys_700001_2026-01-15_10-00-00"],
  "asset_name": ["ecephys_700001_2026-01-15_10-00-00"],
  "docdb_record_id": ["0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"],
  "file_location": null,
  "distributed_parameters": null,
  "group_metadata": null,
  "query": null,
  "analysis_code": null
}
"""


def test_minimal_dispatcher_form_with_nulls(tmp_path: Path) -> None:
    # It is the real dispatcher's form.
    AnalysisDispatchModel.model_validate_json(MINIMAL_DISPATCHER_JOB)
    path = write(tmp_path / "minimal.json", MINIMAL_DISPATCHER_JOB)

    job = load_job_file(path)

    assert job.s3_location == ["s3://codeocean-s3datasetsbucket/ecephys_700001_2026-01-15_10-00-00"]
    assert job.asset_name == ["ecephys_700001_2026-01-15_10-00-00"]
    assert job.docdb_record_id == ["0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"]
    assert job.file_location is None
    assert job.distributed_parameters is None
    assert job.group_metadata is None
    assert job.query is None
    assert job.analysis_code is None
    assert job.base_parameters == {}
    assert job.analysis_name is None

    built = build_analysis_job(job, isi, source=str(path))
    assert built.inputs == job.s3_location
    assert built.parameters == IsiViolationsParams().model_dump(mode="json")


def test_asset_id_is_accepted_and_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = json.loads(MINIMAL_DISPATCHER_JOB)
    data["asset_id"] = ["legacy-id"]
    path = write_job(tmp_path / "legacy.json", data)

    with caplog.at_level(logging.WARNING, logger=DISPATCH_LOGGER):
        job = load_job_file(path)

    assert "asset_id" not in job.model_dump()
    assert not hasattr(job, "asset_id")
    assert job.docdb_record_id == ["0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == DISPATCH_LOGGER]
    assert any("asset_id" in r.getMessage() for r in warnings)
    # asset_id is not reported as an unknown key as well.
    assert not any("unknown" in r.getMessage() for r in warnings)


def test_unknown_keys_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = json.loads(MINIMAL_DISPATCHER_JOB)
    data["s3_locaton"] = ["typo"]
    path = write_job(tmp_path / "typo.json", data)
    with caplog.at_level(logging.WARNING, logger=DISPATCH_LOGGER):
        load_job_file(path)
    assert any("s3_locaton" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------- broken files

S3 = '"s3_location": ["s3://bucket/a"]'

BROKEN_FILES: list[tuple[str, str | bytes, str | None, str]] = [
    ("missing_s3_location", '{"asset_name": ["a"]}', "s3_location", "required"),
    ("s3_location_not_a_list", '{"s3_location": 5}', "s3_location", "list"),
    (
        "input_data_item_not_object",
        "{" + S3 + ', "analysis_code": {"url": "u", "input_data": ["s3://bucket/a"]}}',
        "analysis_code.input_data[0]",
        "",
    ),
    (
        "distributed_parameters_list",
        "{" + S3 + ', "distributed_parameters": []}',
        "distributed_parameters",
        "",
    ),
    ("empty_s3_location", '{"s3_location": []}', "s3_location", ""),
    ("top_level_array", '[{"s3_location": ["s3://bucket/a"]}]', None, "object"),
    ("not_utf8", b'{"s3_location": ["s3://bucket/caf\xe9"]}', None, "UTF-8"),
]


@pytest.mark.parametrize(
    ("content", "field", "words"),
    [pytest.param(c, f, w, id=i) for i, c, f, w in BROKEN_FILES],
)
def test_broken_job_file_is_rejected_naming_file_and_field(
    tmp_path: Path, content: str | bytes, field: str | None, words: str
) -> None:
    path = write(tmp_path / "inbox" / "broken job.json", content)
    with pytest.raises(JobFileError) as info:
        load_job_file(path)
    err = info.value
    message = str(err)
    assert err.source == str(path)
    assert message.startswith(str(path))
    assert err.field == field
    if field is not None:
        assert f"field '{field}'" in message
    assert words.lower() in message.lower()


def test_invalid_json_reports_the_line(tmp_path: Path) -> None:
    text = '{\n  "s3_location": ["s3://bucket/a"],\n  "asset_name": [oops]\n}\n'
    path = write(tmp_path / "bad.json", text)
    with pytest.raises(JobFileError) as info:
        load_job_file(path)
    assert info.value.line == 3
    assert f"{path}, line 3" in str(info.value)
    assert "invalid JSON" in str(info.value)


def test_missing_file_is_rejected_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "job.json"
    with pytest.raises(JobFileError) as info:
        load_job_file(path)
    assert info.value.source == str(path)
    assert str(path) in str(info.value)
    assert "cannot read" in str(info.value)


def test_several_problems_are_counted(tmp_path: Path) -> None:
    path = write(tmp_path / "j.json", '{"s3_location": 5, "asset_name": 7, "query": []}')
    with pytest.raises(JobFileError, match=r"and 2 more problems"):
        load_job_file(path)


@pytest.mark.parametrize(
    ("value", "key"),
    [
        # Valid JSON for Python's json module, accepted by the Params model, but not canonical JSON.
        ("Infinity", "isi_violations_cutoff"),
        ("1e400", "isi_violations_cutoff"),
        ('"\\ud800"', "analysis_tag"),  # a lone surrogate: valid JSON escape, not encodable as UTF-8
    ],
    ids=["Infinity", "overflowing_float", "lone_surrogate"],
)
def test_job_value_without_canonical_form_is_a_job_file_error(tmp_path: Path, value: str, key: str) -> None:
    """Registration only catches JobFileError: any other error from one bad file stops the whole batch."""
    text = (
        '{"s3_location": ["s3://bucket/a"], "analysis_code": {"parameters": {"' + key + '": ' + value + "}}}"
    )
    path = write(tmp_path / "odd.json", text)
    with pytest.raises(JobFileError) as info:
        build_analysis_job(load_job_file(path), isi, source=str(path))
    assert str(path) in str(info.value)
    assert key in str(info.value)


# ------------------------------------------------------------------------------------------- locations


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "job dir"  # a space, so file:// URIs carry %20
    folder.mkdir()
    return folder


def location_spellings(job_dir: Path) -> dict[str, str]:
    target = job_dir.resolve() / "data" / "units.nwb"
    return {
        "relative": "data/units.nwb",
        "dot_relative": "./data/units.nwb",
        "absolute": str(target),
        "file_uri": target.as_uri(),
        "padded": f"  {target}  ",
    }


@pytest.mark.parametrize("spelling", ["relative", "dot_relative", "absolute", "file_uri", "padded"])
def test_local_locations_normalise_to_the_same_absolute_path(job_dir: Path, spelling: str) -> None:
    location = location_spellings(job_dir)[spelling]
    path = write_job(job_dir / "job.json", {"s3_location": [location], "file_location": [location]})
    job = load_job_file(path)
    expected = (job_dir.resolve() / "data" / "units.nwb").as_posix()
    assert job.s3_location == [expected]
    assert job.file_location == [expected]


def test_all_local_spellings_give_the_same_fingerprint(job_dir: Path) -> None:
    built = []
    for name, location in location_spellings(job_dir).items():
        path = write_job(job_dir / f"{name}.json", {"s3_location": [location]})
        built.append(build_analysis_job(load_job_file(path), isi, source=str(path)))
    assert len({job.fingerprint for job in built}) == 1
    assert len({job.partition_key for job in built}) == 1
    assert built[0].inputs == [(job_dir.resolve() / "data" / "units.nwb").as_posix()]


def test_relative_location_through_parent_folder_normalises_to_the_same_path(tmp_path: Path) -> None:
    """``../data/x.nwb`` from an inbox folder is the same file as its absolute path: same fingerprint."""
    inbox = tmp_path / "inbox"
    target = (tmp_path / "data" / "units.nwb").resolve()
    via_parent = load_job_file(write_job(inbox / "a.json", {"s3_location": ["../data/units.nwb"]}))
    absolute = load_job_file(write_job(inbox / "b.json", {"s3_location": [str(target)]}))
    assert via_parent.s3_location == [target.as_posix()]
    assert build_analysis_job(via_parent, isi).fingerprint == build_analysis_job(absolute, isi).fingerprint


@pytest.mark.parametrize(
    "uri",
    ["s3://bucket/asset_a/units.nwb", "s3://bucket/asset_a", "s3://bucket/with space/x.nwb"],
)
def test_s3_uris_are_kept(tmp_path: Path, uri: str) -> None:
    path = write_job(tmp_path / "job.json", {"s3_location": [uri], "file_location": [uri]})
    job = load_job_file(path)
    assert job.s3_location == [uri]
    assert job.file_location == [uri]
    assert normalize_location(uri, tmp_path) == uri


# ----------------------------------------------------------------------------------------------- merge


def dispatch_with(
    base: dict[str, Any] | None = None, distributed: dict[str, Any] | None = None, **extra: Any
) -> DispatchJob:
    data: dict[str, Any] = {"s3_location": ["s3://bucket/asset_a"], **extra}
    if base is not None:
        data["analysis_code"] = {"url": "https://example.org/code", "parameters": base}
    if distributed is not None:
        data["distributed_parameters"] = distributed
    return parse_job_text(json.dumps(data), "test-job")


def test_merge_order_base_then_overrides_then_distributed() -> None:
    job = dispatch_with(
        base={"all_three": "base", "base_and_override": "base", "only_base": "base", "none_override": "base"},
        distributed={"all_three": "distributed", "only_distributed": "distributed"},
    )
    overrides = {
        "all_three": "override",
        "base_and_override": "override",
        "only_override": "override",
        "none_override": None,
    }
    merged = merge_parameters(job, overrides)
    assert merged == {
        "all_three": "distributed",
        "base_and_override": "override",
        "only_base": "base",
        "none_override": "base",
        "only_override": "override",
        "only_distributed": "distributed",
    }
    # The job itself is not changed by merging.
    assert job.base_parameters["all_three"] == "base"


def test_merge_without_any_parameters() -> None:
    assert merge_parameters(dispatch_with()) == {}
    assert merge_parameters(dispatch_with(), {"a": None}) == {}
    assert merge_parameters(dispatch_with(), {"a": 1}) == {"a": 1}


def test_build_analysis_job_applies_the_merge_order() -> None:
    job = dispatch_with(
        base={"isi_threshold_ms": 3.0, "min_isi_ms": 0.1, "isi_violations_cutoff": 0.9},
        distributed={"isi_threshold_ms": 2.5},
    )
    built = build_analysis_job(
        job, isi, overrides={"isi_threshold_ms": 4.0, "min_isi_ms": 0.2, "analysis_tag": None}
    )
    assert built.parameters["isi_threshold_ms"] == 2.5
    assert built.parameters["min_isi_ms"] == 0.2
    assert built.parameters["isi_violations_cutoff"] == 0.9
    assert built.parameters["analysis_tag"] is None


def test_describe_parameter_changes_reports_defaulted_coerced_and_ignored() -> None:
    merged = {"isi_threshold_ms": "2", "analysis_name": "isi_violations", "not_a_param": 7}
    validated = isi.validate_params(dict(merged)).model_dump(mode="json")
    lines = describe_parameter_changes(merged, validated)
    by_key = {line.split(":", 1)[0]: line for line in lines}
    assert set(by_key) == {
        "isi_threshold_ms",
        "min_isi_ms",
        "analysis_tag",
        "isi_violations_cutoff",
        "not_a_param",
    }
    assert len(lines) == 5
    assert "'2'" in by_key["isi_threshold_ms"] and "2.0" in by_key["isi_threshold_ms"]
    assert "became" in by_key["isi_threshold_ms"]
    for name, default in (("min_isi_ms", "0.0"), ("analysis_tag", "None"), ("isi_violations_cutoff", "0.5")):
        assert "default" in by_key[name] and default in by_key[name]
    assert "ignored" in by_key["not_a_param"]


def test_describe_parameter_changes_is_silent_when_nothing_changed() -> None:
    validated = IsiViolationsParams().model_dump(mode="json")
    assert describe_parameter_changes(dict(validated), validated) == []
    # An int that validates to the equal float is not a change.
    assert (
        describe_parameter_changes(
            {**validated, "isi_threshold_ms": 2}, {**validated, "isi_threshold_ms": 2.0}
        )
        == []
    )


def test_build_analysis_job_logs_parameter_changes(caplog: pytest.LogCaptureFixture) -> None:
    # dry_run is a key of the job format (the capsule's switch), not a parameter: ignored, as before.
    job = dispatch_with(base={"isi_threshold_ms": "2", "dry_run": True})
    with caplog.at_level(logging.INFO, logger=MAKE_JOB_LOGGER):
        built = build_analysis_job(job, isi, source="inbox/j.json")
    messages = [r.getMessage() for r in caplog.records if r.name == MAKE_JOB_LOGGER]
    assert any("isi_threshold_ms" in m and "'2'" in m and "2.0" in m for m in messages)
    assert any("dry_run" in m and "ignored" in m for m in messages)
    assert any("min_isi_ms" in m and "default" in m for m in messages)
    assert all("inbox/j.json" in m and "isi_violations" in m for m in messages)
    assert built.parameters["isi_threshold_ms"] == 2.0
    assert "dry_run" not in built.parameters


def test_a_parameter_the_analysis_does_not_know_is_rejected() -> None:
    # It used to be logged as "not a parameter of this analysis, ignored" (issue 19).
    job = dispatch_with(base={"isi_threshold_ms": "2", "surplus": True})
    with pytest.raises(JobFileError, match="not a parameter of isi_violations") as info:
        build_analysis_job(job, isi, source="inbox/j.json")
    assert info.value.field == "analysis_code.parameters.surplus"


def test_build_analysis_job_logs_to_the_given_logger(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test_dispatch.run_log")
    with caplog.at_level(logging.INFO, logger=logger.name):
        build_analysis_job(dispatch_with(base={"isi_threshold_ms": "2"}), isi, logger=logger)
    assert any(r.name == logger.name and "isi_threshold_ms" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------- build_analysis_job


def test_inputs_are_file_location_when_given() -> None:
    job = dispatch_with(asset_name=["asset_a"], file_location=["s3://bucket/asset_a/units.nwb"])
    built = build_analysis_job(job, isi)
    assert built.inputs == ["s3://bucket/asset_a/units.nwb"]
    assert built.partition_key.startswith("asset_a-")


def test_inputs_are_s3_location_otherwise() -> None:
    built = build_analysis_job(dispatch_with(), isi)
    assert built.inputs == ["s3://bucket/asset_a"]
    # Without asset names the label is the input's last path part.
    assert built.partition_key.startswith("asset_a-")
    assert built.fingerprint == fingerprint(
        "isi_violations", ["s3://bucket/asset_a"], IsiViolationsParams().model_dump(mode="json"), "1.0.0"
    )


def test_file_location_changes_the_fingerprint() -> None:
    plain = build_analysis_job(dispatch_with(), isi)
    with_file = build_analysis_job(dispatch_with(file_location=["s3://bucket/asset_a/units.nwb"]), isi)
    assert plain.fingerprint != with_file.fingerprint
    assert plain.partition_key != with_file.partition_key


def test_rejected_parameter_type_names_the_parameter_and_source() -> None:
    job = dispatch_with(base={"isi_threshold_ms": "abc"})
    with pytest.raises(JobFileError) as info:
        build_analysis_job(job, isi, source="inbox/job-17.json")
    err = info.value
    assert err.field == "parameters.isi_threshold_ms"
    assert err.source == "inbox/job-17.json"
    assert str(err).startswith("inbox/job-17.json")
    assert "field 'parameters.isi_threshold_ms'" in str(err)
    assert "'abc'" in str(err)


def test_rejected_override_names_the_parameter_and_source() -> None:
    with pytest.raises(JobFileError) as info:
        build_analysis_job(dispatch_with(), isi, overrides={"isi_violations_cutoff": -1}, source="registry")
    assert info.value.field == "parameters.isi_violations_cutoff"
    assert str(info.value).startswith("registry")


def test_min_isi_not_below_threshold_names_the_parameter_and_source() -> None:
    job = dispatch_with(base={"isi_threshold_ms": 1.5}, distributed={"min_isi_ms": 1.5})
    with pytest.raises(JobFileError) as info:
        build_analysis_job(job, isi, source="inbox/job-18.json")
    err = info.value
    assert str(err).startswith("inbox/job-18.json")
    assert "min_isi_ms" in str(err)
    # The field is one of the two parameters in conflict, not the whole parameter set.
    assert err.field in ("parameters.min_isi_ms", "parameters.isi_threshold_ms")
    assert f"field '{err.field}'" in str(err)


# --------------------------------------------------------------------------------------- select_analysis


class _OtherParams(BaseModel):
    window_s: float = 1.0


class _OtherOutputs(BaseModel):
    n: int = 0


def _other_run(job: Any, params: _OtherParams, results_dir: Path, logger: logging.Logger) -> _OtherOutputs:
    return _OtherOutputs()


OTHER = Analysis(
    name="firing_rate", version="0.1.0", params=_OtherParams, outputs=_OtherOutputs, run=_other_run
)
BOTH = {"isi_violations": isi, "firing_rate": OTHER}


def test_select_by_the_jobs_analysis_name() -> None:
    assert select_analysis(dispatch_with(base={"analysis_name": "firing_rate"}), BOTH, "j") is OTHER
    assert select_analysis(dispatch_with(base={"analysis_name": "isi_violations"}), BOTH, "j") is isi


def test_select_by_distributed_analysis_name() -> None:
    assert select_analysis(dispatch_with(distributed={"analysis_name": "firing_rate"}), BOTH, "j") is OTHER


def test_select_override_beats_the_job() -> None:
    job = dispatch_with(base={"analysis_name": "isi_violations"})
    assert select_analysis(job, BOTH, "j", override="firing_rate") is OTHER
    assert select_analysis(dispatch_with(), BOTH, "j", override="isi_violations") is isi


def test_select_the_only_analysis_by_default() -> None:
    assert select_analysis(dispatch_with(), {"isi_violations": isi}, "j") is isi


def test_select_unknown_name_is_an_error() -> None:
    job = dispatch_with(base={"analysis_name": "spike_sorting"})
    with pytest.raises(UnknownAnalysisError) as info:
        select_analysis(job, BOTH, "inbox/j.json")
    err = info.value
    assert isinstance(err, JobFileError)
    assert err.field == "analysis_code.parameters.analysis_name"
    assert str(err).startswith("inbox/j.json")
    assert "field 'analysis_code.parameters.analysis_name'" in str(err)
    assert "spike_sorting" in str(err)
    assert "firing_rate" in str(err) and "isi_violations" in str(err)


def test_select_unknown_override_is_an_error_even_with_one_analysis() -> None:
    with pytest.raises(UnknownAnalysisError, match="nope"):
        select_analysis(dispatch_with(), {"isi_violations": isi}, "j", override="nope")


def test_select_missing_name_with_two_analyses_is_an_error() -> None:
    with pytest.raises(UnknownAnalysisError) as info:
        select_analysis(dispatch_with(), BOTH, "inbox/k.json")
    err = info.value
    assert err.field == "analysis_code.parameters.analysis_name"
    assert str(err).startswith("inbox/k.json")
    assert "missing" in str(err)
    assert "firing_rate" in str(err) and "isi_violations" in str(err)


# ---- strict JSON and per-asset checks (issue 11, items 4, 7 and 9) ----------------------------------
def _job_text(**changes: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "s3_location": ["s3://bucket/asset"],
        "asset_name": ["asset"],
        "docdb_record_id": ["rec-1"],
        "analysis_code": {"parameters": {"analysis_name": "isi_violations"}},
    }
    job.update(changes)
    return job


def _rejection(text: str | bytes) -> JobFileError:
    with pytest.raises(JobFileError) as caught:
        parse_job_text(text, "/inbox/job.json")
    assert str(caught.value).startswith("/inbox/job.json")  # names the file
    return caught.value


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ('{"s3_location": ["s3://b/k"], "group_metadata": {"x": NaN}}', "group_metadata.x", "NaN"),
        ('{"s3_location": ["s3://b/k"], "distributed_parameters": {"v": -Infinity}}', None, "-Infinity"),
        ('{"s3_location": ["s3://b/k"], "distributed_parameters": {"v": 1e999}}', None, "out of range"),
        ('{"s3_location": ["s3://b/k"], "s3_location": ["s3://b/other"]}', "(top level)", "duplicate key"),
        (
            '{"s3_location": ["s3://b/k"], "query": "{}", "distributed_parameters": {"a": 1, "a": 2}}',
            None,
            "'a'",
        ),
        ('{"s3_location": ["s3://b/k"], "group_metadata": {"n": ' + "9" * 5000 + "}}", None, "5000 digits"),
    ],
)
def test_values_plain_json_has_no_way_to_say_are_refused_naming_the_field(
    text: str, field: str | None, problem: str
) -> None:
    error = _rejection(text)
    assert problem in error.problem
    if field:
        assert error.field == field
    else:
        assert error.field  # always named


def test_deep_nesting_is_a_clean_rejection_whatever_the_stack_depth() -> None:
    # Written as text: json.dumps itself cannot go 990 levels deep under pytest.
    nested = '{"a": ' * 990 + "1" + "}" * 990
    text = json.dumps(_job_text(group_metadata="NESTED")).replace('"NESTED"', nested)
    error = _rejection(text)
    assert (
        error.field is not None
        and error.field.startswith("group_metadata.a")
        and "64 levels" in error.problem
    )

    def deep(levels: int) -> JobFileError:  # the CLI's stack is deeper than the sensor's: same answer
        return _rejection(text) if levels == 0 else deep(levels - 1)

    assert deep(900).problem == error.problem
    assert "nested" in _rejection("[" * 100_000 + "]" * 100_000).problem  # beyond json's own limit


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("\ufeff" + json.dumps(_job_text()), "byte order mark"),
        (json.dumps(_job_text()).encode("utf-16"), "not UTF-8"),
        (json.dumps(_job_text()).encode("utf-16-le"), "invalid JSON"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8"),
    ],
)
def test_other_encodings_are_refused(content: str | bytes, problem: str) -> None:
    if isinstance(content, str):
        content = content.encode("utf-8")
    assert problem in str(_rejection(content))


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        # The case: 3 asset names, 2 record ids, 1 s3_location, 2 file_location.
        (
            {"asset_name": ["a", "b", "c"], "docdb_record_id": ["r1", "r2"], "file_location": ["/x", "/y"]},
            "asset_name",
            "3 entries but s3_location has 1",
        ),
        ({"docdb_record_id": ["r1", "r2"]}, "docdb_record_id", "2 entries"),
        (
            {"file_location": ["s3://bucket/other/a.nwb"]},
            "file_location[0]",
            "is not inside any s3_location",
        ),
        ({"file_location": ["s3://bucket/assets/a.nwb"]}, "file_location[0]", "is not inside"),
        (
            {"file_location": ["s3://bucket/asset/a.nwb", "s3://bucket/asset/a.nwb/"]},
            "file_location[1]",
            "repeats file_location[0]",
        ),
        ({"s3_location": ["http://example.org/a.nwb"]}, "s3_location[0]", "scheme http://"),
        ({"s3_location": ["ftp://example.org/a.nwb"]}, "s3_location[0]", "scheme ftp://"),
        ({"file_location": ["https://example.org/a.nwb"]}, "file_location[0]", "scheme https://"),
        ({"s3_location": ["S3://bucket/a"]}, "s3_location[0]", "not an s3:// URI"),
        ({"s3_location": ["s3:bucket/a"]}, "s3_location[0]", "not an s3:// URI"),
        ({"s3_location": ["file://otherhost/data/a.nwb"]}, "s3_location[0]", "host 'otherhost'"),
        ({"s3_location": [""]}, "s3_location[0]", "is empty"),
        ({"s3_location": ["  "]}, "s3_location[0]", "is empty"),
        ({"file_location": [""]}, "file_location[0]", "is empty"),
        ({"asset_name": [""]}, "asset_name[0]", "is empty"),
        ({"docdb_record_id": [" "]}, "docdb_record_id[0]", "is empty"),
        ({"s3_location": ["s3://inputs//tmp/x/evil.nwb"]}, "s3_location[0]", "starts with '/'"),
        ({"s3_location": ["s3://inputs/trav/../../../../tmp/x/evil.nwb"]}, "s3_location[0]", "'..'"),
        ({"s3_location": ["s3://../x"]}, "s3_location[0]", "bucket name"),
        ({"s3_location": ["s3:///key"]}, "s3_location[0]", "bucket name"),
        ({"s3_location": ["/data/a\x00.nwb"]}, "s3_location[0]", "NUL"),
    ],
)
def test_per_asset_lists_and_locations_are_checked(changes: dict[str, Any], field: str, problem: str) -> None:
    error = _rejection(json.dumps(_job_text(**changes)))
    assert error.field == field and problem in error.problem, str(error)


@pytest.mark.parametrize(
    "location",
    [
        "s3://bucket",
        "s3://bucket/",
        "s3://bucket/a/b.nwb",
        "s3://bucket/prefix/",
        "/abs/x.nwb",
        "rel/x.nwb",
        "../up/x.nwb",
        "file:///abs/x.nwb",
        "file://localhost/abs/x.nwb",
        "session:1.nwb",
    ],
)
def test_usable_locations_still_pass(location: str) -> None:
    job = parse_job_text(json.dumps(_job_text(s3_location=[location])), "job.json")
    assert job.s3_location == [location]


@pytest.mark.parametrize(
    ("assets", "files"),
    [
        # The dispatcher without split_files: every matching file of the asset in one job.
        (["s3://bucket/asset"], ["s3://bucket/asset/a.nwb", "s3://bucket/asset/sub/b.nwb"]),
        # Grouped assets, their files together (fewer files than assets is fine too).
        (
            ["s3://bucket/s1", "s3://bucket/s2"],
            ["s3://bucket/s1/x.nwb", "s3://bucket/s2/y.nwb", "s3://bucket/s2/z.nwb"],
        ),
        (["s3://bucket/s1/", "s3://bucket/s2"], ["s3://bucket/s1/x.nwb"]),
        (["/data/session"], ["/data/session/units.nwb", "file:///data/session/more/units2.nwb"]),
        (["/data/session.nwb"], ["/data/session.nwb"]),
    ],
)
def test_files_of_the_listed_assets_in_any_number(assets: list[str], files: list[str]) -> None:
    names = [f"asset{i}" for i in range(len(assets))]
    ids = [f"rec-{i}" for i in range(len(assets))]
    text = json.dumps(
        _job_text(s3_location=assets, asset_name=names, docdb_record_id=ids, file_location=files)
    )
    job = parse_job_text(text, "job.json")
    assert job.file_location == files and job.s3_location == assets


def test_lists_may_be_left_empty_as_before() -> None:
    job = parse_job_text(json.dumps(_job_text(asset_name=[], docdb_record_id=[], file_location=[])), "j")
    assert job.asset_name == [] and job.file_location == []


def test_a_job_file_over_the_size_limit_is_rejected_without_being_read(tmp_path: Path) -> None:
    import tracemalloc

    huge = tmp_path / "huge.json"
    with huge.open("wb") as f:
        f.truncate(1 << 30)  # 1 GiB, sparse: costs no disk
    tracemalloc.start()
    try:
        with pytest.raises(JobFileError, match="larger than MAX_JOB_FILE_BYTES") as caught:
            load_job_file(huge, max_bytes=1 << 20)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(caught.value).startswith(str(huge)) and "1,073,741,824 bytes" in str(caught.value)
    assert peak < 1 << 20


def test_entries_that_are_no_files_are_rejected_not_waited_on(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # no writer: a plain open() would block forever
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop.name)
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere.json")
    folder = tmp_path / "folder.json"
    folder.mkdir()
    expected = {
        fifo: "FIFO",
        loop: "symbolic link loop",
        dangling: "symbolic link to nothing",
        folder: "directory",
    }
    for path, problem in expected.items():
        with pytest.raises(JobFileError, match=problem) as caught:
            load_job_file(path)
        assert str(caught.value).startswith(str(path))
