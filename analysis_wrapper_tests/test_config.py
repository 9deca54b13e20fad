"""Tests for the typed Dagster run config generated from an analysis's Params model.

No ``from __future__ import annotations`` here: Dagster reads the ``config: <class>`` annotation of the
test assets at definition time, and the classes are local variables.
"""

import datetime as dt
import enum
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import dagster as dg
import pytest
from pydantic import BaseModel, Field, create_model

from analysis_wrapper.analyses.isi_violations import IsiViolationsParams
from analysis_wrapper.analyses.isi_violations import analysis as isi
from analysis_wrapper.analysis import Analysis
from analysis_wrapper.config import build_config_class, overrides_from_config

# ------------------------------------------------------------------------------------------ helpers


class _Outputs(BaseModel):
    n: int = 0


def _run(job: Any, params: Any, results_dir: Path, logger: Any) -> _Outputs:
    return _Outputs()


def make_analysis(params: type[BaseModel], name: str = "typed") -> Analysis[Any, Any]:
    return Analysis(name=name, version="1", params=params, outputs=_Outputs, run=_run)


def probe_asset(config_class: type[dg.Config], analysis: Analysis[Any, Any], name: str, seen: dict[str, Any]):
    """An asset that records the config it got and the overrides derived from it."""

    @dg.asset(name=name)
    def probe(config: config_class) -> None:  # type: ignore[valid-type]
        seen["config"] = config
        seen["overrides"] = overrides_from_config(config, analysis)

    return probe


def config_fields(asset: dg.AssetsDefinition) -> dict[str, Any]:
    return asset.op.config_schema.config_type.fields


def materialize_with(
    asset: dg.AssetsDefinition, name: str, config: dict[str, Any]
) -> dg.ExecuteInProcessResult:
    return dg.materialize([asset], run_config={"ops": {name: {"config": config}}})


def is_optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


# ------------------------------------------------------------------------------ the isi_violations config


@pytest.fixture(scope="module")
def isi_config() -> type[dg.Config]:
    return build_config_class(isi)


def test_every_param_is_an_optional_override_with_description_and_default(
    isi_config: type[dg.Config],
) -> None:
    fields = isi_config.model_fields
    assert set(IsiViolationsParams.model_fields) <= set(fields)
    for name, info in IsiViolationsParams.model_fields.items():
        field = fields[name]
        assert not field.is_required(), name
        assert field.default is None, name
        assert is_optional(field.annotation), name
        assert info.description is not None
        assert info.description.rstrip(".") in field.description, name
        assert f"Analysis default: {info.default!r}" in field.description, name
    assert "Analysis default: 1.5" in fields["isi_threshold_ms"].description
    assert "Analysis default: None" in fields["analysis_tag"].description
    assert float in typing.get_args(fields["isi_threshold_ms"].annotation)


def test_dry_run_and_force_are_added(isi_config: type[dg.Config]) -> None:
    fields = isi_config.model_fields
    assert set(fields) == set(IsiViolationsParams.model_fields) | {"dry_run", "force"}
    assert not fields["dry_run"].is_required() and fields["dry_run"].default is None
    assert is_optional(fields["dry_run"].annotation)
    assert not fields["force"].is_required() and fields["force"].default is False
    empty = isi_config()
    assert empty.force is False and empty.dry_run is None
    assert all(getattr(empty, name) is None for name in IsiViolationsParams.model_fields)


def test_dagster_passes_an_isi_override_through(isi_config: type[dg.Config]) -> None:
    seen: dict[str, Any] = {}
    asset = probe_asset(isi_config, isi, "isi_probe", seen)
    fields = config_fields(asset)
    assert not fields["isi_threshold_ms"].is_required
    assert "Analysis default: 1.5" in fields["isi_threshold_ms"].description
    assert fields["force"].default_value is False

    result = materialize_with(asset, "isi_probe", {"isi_threshold_ms": 2.0})

    assert result.success
    assert seen["config"].isi_threshold_ms == 2.0
    assert seen["config"].min_isi_ms is None
    assert seen["config"].force is False
    assert seen["overrides"] == {"isi_threshold_ms": 2.0}


def test_dagster_passes_force_and_dry_run_but_they_are_no_overrides(isi_config: type[dg.Config]) -> None:
    seen: dict[str, Any] = {}
    asset = probe_asset(isi_config, isi, "isi_probe_flags", seen)
    result = materialize_with(
        asset, "isi_probe_flags", {"force": True, "dry_run": True, "analysis_tag": "t", "min_isi_ms": 0.2}
    )
    assert result.success
    assert seen["config"].force is True and seen["config"].dry_run is True
    assert seen["overrides"] == {"analysis_tag": "t", "min_isi_ms": 0.2}


def test_dagster_rejects_a_wrong_type_at_launch(isi_config: type[dg.Config]) -> None:
    seen: dict[str, Any] = {}
    asset = probe_asset(isi_config, isi, "isi_probe_bad", seen)
    with pytest.raises(dg.DagsterInvalidConfigError, match="isi_threshold_ms"):
        materialize_with(asset, "isi_probe_bad", {"isi_threshold_ms": "abc"})
    assert seen == {}


def test_dagster_rejects_an_unknown_key_at_launch(isi_config: type[dg.Config]) -> None:
    seen: dict[str, Any] = {}
    asset = probe_asset(isi_config, isi, "isi_probe_typo", seen)
    with pytest.raises(dg.DagsterInvalidConfigError, match="isi_treshold_ms"):
        materialize_with(asset, "isi_probe_typo", {"isi_treshold_ms": 2.0})
    assert seen == {}


# ------------------------------------------------------------------------------------ overrides_from_config


def test_overrides_leave_out_unset_fields_and_flags(isi_config: type[dg.Config]) -> None:
    assert overrides_from_config(isi_config(), isi) == {}
    assert overrides_from_config(isi_config(force=True, dry_run=False), isi) == {}
    config = isi_config(isi_threshold_ms=2.0, analysis_tag="x", force=True, dry_run=True)
    overrides = overrides_from_config(config, isi)
    assert overrides == {"isi_threshold_ms": 2.0, "analysis_tag": "x"}
    assert "force" not in overrides and "dry_run" not in overrides


# ------------------------------------------------------------------------------------------ type mapping


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Window(BaseModel):
    start_s: float = 0.0
    stop_s: float = Field(10.0, description="End of the window in seconds.")
    label: str = "all"
    count: int = 3


class TypedParams(BaseModel):
    path: Path = Field(Path("/data/in.nwb"), description="An input path.")
    when: dt.datetime = dt.datetime(2026, 1, 1, 12, 0, 0)
    pair: tuple[int, int] = (1, 2)
    tags: set[str] = Field(default_factory=set)
    window: Window = Window()
    color: Color = Color.RED
    mode: Literal["fast", "slow"] = "fast"
    either: int | str = 0
    values: list[float] = [1.0]
    counts: dict[str, int] = {}
    maybe: Optional[Path] = None  # noqa: UP045 - the Optional spelling is what is under test


TYPED_CONFIG = {
    "path": "/x/y.nwb",
    "when": "2026-02-03T04:05:06",
    "pair": [3, 4],
    "tags": ["a", "b"],
    "window": {"start_s": 1.5, "label": "early"},
    "color": "BLUE",
    "mode": "slow",
    "either": "text",
    "values": [0.5, 2],
    "counts": {"a": 1, "b": 2},
    "maybe": "/m/n",
}

TYPED_EXPECTED = {
    "path": Path("/x/y.nwb"),
    "when": dt.datetime(2026, 2, 3, 4, 5, 6),
    "pair": (3, 4),
    "tags": {"a", "b"},
    "window": Window(start_s=1.5, stop_s=10.0, label="early", count=3),
    "color": Color.BLUE,
    "mode": "slow",
    "either": "text",
    "values": [0.5, 2.0],
    "counts": {"a": 1, "b": 2},
    "maybe": Path("/m/n"),
}


def check_round_trip(params: type[BaseModel], overrides: dict[str, Any], expected: dict[str, Any]) -> None:
    validated = params.model_validate(overrides)
    for name, value in expected.items():
        got = getattr(validated, name)
        assert got == value, name
        assert type(got) is type(value), name


def test_typed_params_config_class_constructs() -> None:
    config_class = build_config_class(make_analysis(TypedParams))
    fields = config_class.model_fields
    assert set(fields) == set(TypedParams.model_fields) | {"dry_run", "force"}
    for name in TypedParams.model_fields:
        assert fields[name].default is None and not fields[name].is_required(), name
    assert "An input path" in fields["path"].description
    assert "Analysis default: {'start_s': 0.0, 'stop_s': 10.0, 'label': 'all', 'count': 3}" in (
        fields["window"].description
    )


def test_typed_params_are_accepted_by_dagster_and_round_trip() -> None:
    analysis = make_analysis(TypedParams)
    config_class = build_config_class(analysis)
    seen: dict[str, Any] = {}
    asset = probe_asset(config_class, analysis, "typed_probe", seen)
    dg.Definitions(assets=[asset]).resolve_asset_graph()

    result = materialize_with(asset, "typed_probe", TYPED_CONFIG)

    assert result.success
    assert set(seen["overrides"]) == set(TYPED_CONFIG)
    check_round_trip(TypedParams, seen["overrides"], TYPED_EXPECTED)


# Each mapped type alone, so one unsupported type does not hide the others:
# (annotation, model default, value given in run config, value the Params model must end with)
FIELD_CASES: dict[str, tuple[Any, Any, Any, Any]] = {
    "path": (Path, Path("/data"), "/x/y", Path("/x/y")),
    "datetime": (
        dt.datetime,
        dt.datetime(2026, 1, 1),
        "2026-02-03T04:05:06",
        dt.datetime(2026, 2, 3, 4, 5, 6),
    ),
    "tuple": (tuple[int, int], (1, 2), [3, 4], (3, 4)),
    "set": (set[str], {"z"}, ["a", "b", "a"], {"a", "b"}),
    "nested_model": (Window, Window(), {"stop_s": 5.0}, Window(stop_s=5.0)),
    "enum": (Color, Color.RED, "BLUE", Color.BLUE),
    "literal": (Literal["fast", "slow"], "fast", "slow", "slow"),
    "union_str": (int | str, 0, "text", "text"),
    "union_int": (int | str, "x", 7, 7),
    "list_float": (list[float], [1.0], [0.5, 2], [0.5, 2.0]),
    "dict_str_int": (dict[str, int], {}, {"a": 1}, {"a": 1}),
    "optional_path": (Optional[Path], None, "/m", Path("/m")),  # noqa: UP045
    "timedelta": (dt.timedelta, dt.timedelta(seconds=1), 2.5, dt.timedelta(seconds=2.5)),
}


@pytest.mark.parametrize("case", list(FIELD_CASES))
def test_each_mapped_type_is_accepted_by_dagster_and_round_trips(case: str) -> None:
    annotation, default, given, expected = FIELD_CASES[case]
    params = create_model(f"Params_{case}", value=(annotation, default))
    analysis = make_analysis(params, name=f"typed_{case}")
    config_class = build_config_class(analysis)
    seen: dict[str, Any] = {}
    asset = probe_asset(config_class, analysis, f"probe_{case}", seen)
    dg.Definitions(assets=[asset]).resolve_asset_graph()
    assert not config_fields(asset)["value"].is_required

    result = materialize_with(asset, f"probe_{case}", {"value": given})

    assert result.success
    assert list(seen["overrides"]) == ["value"]
    check_round_trip(params, seen["overrides"], {"value": expected})

    # Unset, the field is no override at all (the job's own value applies).
    unset_seen: dict[str, Any] = {}
    unset_asset = probe_asset(config_class, analysis, f"probe_{case}_unset", unset_seen)
    assert materialize_with(unset_asset, f"probe_{case}_unset", {}).success
    assert unset_seen["overrides"] == {}


def test_mapped_type_rejected_by_params_is_caught_by_the_real_model() -> None:
    """A plain union becomes Any in Dagster: the Params model is what rejects a wrong value."""
    params = create_model("Params_union_check", value=(int | str, 0))
    config_class = build_config_class(make_analysis(params, name="union_check"))
    overrides = overrides_from_config(config_class(value=[1, 2]), make_analysis(params, name="union_check"))
    assert overrides == {"value": [1, 2]}
    with pytest.raises(ValueError, match="value"):
        params.model_validate(overrides)


# A nested model's own defaults of mapped types: the nested Config must carry them in the mapped form.
NESTED_DEFAULT_CASES: dict[str, tuple[Any, Any]] = {
    "path": (Path, Path("results")),
    "datetime": (dt.datetime, dt.datetime(2026, 1, 1, 8, 30)),
    "tuple": (tuple[int, int], (2, 3)),
    "set": (set[str], {"a"}),
    "timedelta": (dt.timedelta, dt.timedelta(seconds=3)),
}


@pytest.mark.parametrize("case", list(NESTED_DEFAULT_CASES))
def test_nested_model_defaults_of_mapped_types_are_accepted(case: str) -> None:
    annotation, default = NESTED_DEFAULT_CASES[case]
    inner = create_model(f"Inner_{case}", value=(annotation, default), scale=(float, 1.0))
    params = create_model(f"Outer_{case}", inner=(inner, inner()))
    analysis = make_analysis(params, name=f"nested_{case}")
    config_class = build_config_class(analysis)
    seen: dict[str, Any] = {}
    asset = probe_asset(config_class, analysis, f"nested_probe_{case}", seen)
    dg.Definitions(assets=[asset]).resolve_asset_graph()

    result = materialize_with(asset, f"nested_probe_{case}", {"inner": {"scale": 2.0}})

    assert result.success
    validated = params.model_validate(seen["overrides"])
    assert validated.inner.scale == 2.0
    assert validated.inner.value == default
