"""A job's parameters: merged from the job's layers and run config, their names checked against the
analysis's ``Params`` model.

A name the model does not take is refused (:func:`check_parameter_names`), naming where it was set
and the closest known name: left at its default, a misspelt parameter would run, or count as done,
with parameters nobody asked for. A model that keeps extra fields (``extra="allow"``) takes any name.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import AliasChoices, BaseModel

from analysis_wrapper.job_file import ANALYSIS_NAME_PARAMETER, DispatchJob, JobFileError

FILE_LOCATION_PARAMETER = "file_location"
FORMAT_PARAMETERS = frozenset({ANALYSIS_NAME_PARAMETER, FILE_LOCATION_PARAMETER, "dry_run"})
"""Keys the job format itself puts among the parameters: the analysis's name (which analysis a job is
for), ``file_location`` (AIND's dispatcher and capsule add the job's files) and ``dry_run`` (the
capsule's run switch, which it removes). They are parameters only of an analysis whose ``Params``
declares them; any other name a ``Params`` model does not know is a mistake
(:func:`check_parameter_names`)."""


def merge_parameters(job: DispatchJob, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge parameters, lowest precedence first: ``analysis_code.parameters`` < run-config
    overrides < ``distributed_parameters`` (the capsule's order, so results stay comparable)."""
    merged = job.base_parameters
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    merged.update(job.distributed_parameters or {})
    return merged


def parameter_names(model: type[BaseModel]) -> set[str]:
    """The names ``model`` takes: its fields' names and their aliases (validation aliases included)."""
    names = set(model.model_fields)
    for info in model.model_fields.values():
        for alias in (info.alias, info.validation_alias):
            if isinstance(alias, str):
                names.add(alias)
            elif isinstance(alias, AliasChoices):
                names.update(a for a in alias.choices if isinstance(a, str))
    return names


def keeps_extra_parameters(model: type[BaseModel]) -> bool:
    """Whether ``model`` keeps fields it does not declare (``extra="allow"``, as aind-data-schema's
    ``GenericModel`` does): then every name is a parameter, and enters the fingerprint and the record."""
    return model.model_config.get("extra") == "allow"


def check_parameter_names(
    job: DispatchJob,
    overrides: Mapping[str, Any] | None,
    model: type[BaseModel],
    analysis: str,
    source: str,
) -> None:
    """Refuse a parameter name ``model`` does not take, naming where it was set and the closest
    known name: a misspelt parameter silently left at its default would run, or count as done, with
    parameters nobody asked for. :data:`FORMAT_PARAMETERS` pass (the merge leaves them to ``model``)."""
    if keeps_extra_parameters(model):
        return
    known = parameter_names(model)
    layers = (
        ("analysis_code.parameters", job.base_parameters),
        ("run_config", {k: v for k, v in (overrides or {}).items() if v is not None}),
        ("distributed_parameters", job.distributed_parameters or {}),
    )
    for layer, values in layers:
        for name in values:
            if name in known or name in FORMAT_PARAMETERS:
                continue
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"did you mean {close[0]}?" if close else f"its parameters: {', '.join(sorted(known))}"
            raise JobFileError(source, f"{layer}.{name}", f"not a parameter of {analysis} ({hint})")


def parameters_to_validate(merged: Mapping[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """``merged`` without the :data:`FORMAT_PARAMETERS` ``model`` does not take (a model that keeps
    extra fields keeps them all, as it always has)."""
    if keeps_extra_parameters(model):
        return dict(merged)
    known = parameter_names(model)
    return {k: v for k, v in merged.items() if k in known or k not in FORMAT_PARAMETERS}


def describe_parameter_changes(merged: Mapping[str, Any], validated: Mapping[str, Any]) -> list[str]:
    """Human-readable lines for every value the Params model defaulted, coerced or did not take
    (only :data:`FORMAT_PARAMETERS` get that far: other unknown names are refused before)."""
    lines = []
    for name, value in validated.items():
        if name not in merged:
            lines.append(f"{name}: not given, default {value!r} used")
        elif merged[name] != value:
            lines.append(f"{name}: {merged[name]!r} became {value!r} after validation")
    for name in merged:
        if name not in validated:
            lines.append(f"{name}: not a parameter of this analysis, ignored")
    return lines
