"""Making a job concrete: a dispatched job and the analysis it is for become an :class:`AnalysisJob`.

The analysis is picked by name (:func:`select_analysis`); its ``Params`` validate the merged
parameters; inputs, fingerprint and partition key are fixed (:func:`build_analysis_job`). Every path
to a job passes here: job files (CLI, inbox sensor) and registry entries
(:func:`analysis_wrapper.partition_run.job_of_entry`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.fingerprint import CanonicalJSONError, fingerprint, partition_key
from analysis_wrapper.job_file import (
    ANALYSIS_NAME_PARAMETER,
    AnalysisJob,
    DispatchJob,
    JobFileError,
    UnknownAnalysisError,
    field_path,
)
from analysis_wrapper.parameters import (
    check_parameter_names,
    describe_parameter_changes,
    merge_parameters,
    parameters_to_validate,
)

log = logging.getLogger(__name__)


def build_analysis_job(
    dispatch: DispatchJob,
    analysis: Analysis[Any, Any],
    overrides: Mapping[str, Any] | None = None,
    source: str = "registry",
    logger: logging.Logger | None = None,
) -> AnalysisJob:
    """Merge and validate parameters, then fix inputs, fingerprint and partition key.

    Raises :class:`JobFileError` naming the parameter when the ``Params`` model rejects a value or
    does not know its name (:func:`~analysis_wrapper.parameters.check_parameter_names`).
    """
    check_parameter_names(dispatch, overrides, analysis.params, analysis.name, source)
    merged = merge_parameters(dispatch, overrides)
    distributed = dispatch.distributed_parameters or {}
    for name, value in (overrides or {}).items():
        if value is not None and name in distributed and distributed[name] != value:
            (logger or log).warning(
                "%s [%s]: override %s=%r has no effect: the job's distributed_parameters set %r, which take "
                "precedence",
                analysis.name,
                source,
                name,
                value,
                distributed[name],
            )
    try:
        params = analysis.validate_params(parameters_to_validate(merged, analysis.params))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise JobFileError(
            source, f"parameters.{field_path(first['loc'])}", f"{first['msg']} (got {first.get('input')!r})"
        ) from None
    validated = params.model_dump(mode="json")
    changes = describe_parameter_changes(merged, validated)
    if changes:
        # One message, not one per parameter: in a Dagster run every log call is an event written to storage.
        (logger or log).info("%s [%s]: parameters: %s", analysis.name, source, "; ".join(changes))
    inputs = list(dispatch.file_location or dispatch.s3_location)
    label = dispatch.asset_name[0] if dispatch.asset_name else Path(inputs[0]).name
    try:
        job_fingerprint = fingerprint(analysis.name, inputs, validated, analysis.version)
        key = partition_key(analysis.name, inputs, validated, label)
    except CanonicalJSONError as exc:
        raise JobFileError(source, None, f"cannot fingerprint this job: {exc}") from None
    return AnalysisJob(
        analysis=analysis.name,
        version=analysis.version,
        source=source,
        dispatch=dispatch,
        inputs=inputs,
        parameters=validated,
        fingerprint=job_fingerprint,
        partition_key=key,
    )


def select_analysis(
    dispatch: DispatchJob,
    analyses: Mapping[str, Analysis[Any, Any]],
    source: str,
    override: str | None = None,
) -> Analysis[Any, Any]:
    """Pick the analysis a job is for: ``override`` (``--analysis``), else the job's
    ``analysis_code.parameters.analysis_name``, else the only registered analysis."""
    name = override or dispatch.analysis_name
    if name is None:
        if len(analyses) == 1:
            return next(iter(analyses.values()))
        raise UnknownAnalysisError(
            source,
            f"analysis_code.parameters.{ANALYSIS_NAME_PARAMETER}",
            f"missing, and this code location serves several analyses ({', '.join(sorted(analyses))}); "
            "set it in the job or pass --analysis",
        )
    if name not in analyses:
        raise UnknownAnalysisError(
            source,
            f"analysis_code.parameters.{ANALYSIS_NAME_PARAMETER}",
            f"no analysis named {name!r} here (known: {', '.join(sorted(analyses))})",
        )
    return analyses[name]
