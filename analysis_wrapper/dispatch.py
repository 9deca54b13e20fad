"""Dispatched jobs: the AIND job-file format, loading with precise errors, and parameter merge.

A job file is what the AIND analysis dispatcher writes today (its ``AnalysisDispatchModel``): the
data assets to analyse (``s3_location``, ``asset_name``, ``docdb_record_id``, optional
``file_location``), ``distributed_parameters`` from the dispatcher, and ``analysis_code`` (an AIND
``Code`` object whose ``parameters`` carry the analysis's base parameters). We accept that format
unchanged, so a dispatcher pointed at us needs no change.

:class:`DispatchJob` is the file as written; :class:`AnalysisJob` is one job made concrete for one
analysis: parameters merged and validated, inputs normalised, fingerprint and partition key fixed
(built by :mod:`analysis_wrapper.make_job`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

log = logging.getLogger(__name__)

ANALYSIS_NAME_PARAMETER = "analysis_name"


class JobFileError(ValueError):
    """A job file that cannot be used. The message names the file, the field and, for JSON, the line."""

    def __init__(self, source: str, field: str | None, problem: str, line: int | None = None):
        self.source = source
        self.field = field
        self.problem = problem
        self.line = line
        where = source if line is None else f"{source}, line {line}"
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{problem}")


class UnknownAnalysisError(JobFileError):
    """The job names an analysis this code location does not serve (or names none when it must)."""


class AindInputData(BaseModel):
    """An AIND ``DataAsset`` (or other input reference) inside ``analysis_code.input_data``."""

    model_config = ConfigDict(extra="allow")

    object_type: str | None = None
    name: str | None = None
    url: str | None = None


class AindCode(BaseModel):
    """The AIND ``Code`` object in ``analysis_code``: which code the dispatcher asked for, with what
    base parameters. Unknown keys are kept, so a newer AIND schema passes through unchanged."""

    model_config = ConfigDict(extra="allow")

    object_type: str | None = "Code"
    url: str | None = None
    name: str | None = None
    version: str | None = None
    commit_hash: str | None = None
    container: dict[str, Any] | None = None
    run_script: str | None = None
    language: str | None = None
    language_version: str | None = None
    input_data: list[AindInputData] | None = None
    parameters: dict[str, Any] | None = None
    core_dependency: dict[str, Any] | None = None


class DispatchJob(BaseModel):
    """One dispatched job, exactly the AIND ``AnalysisDispatchModel`` JSON.

    ``asset_id`` (an older key) is accepted and dropped with a warning; other unknown keys are kept
    out of the model and logged, so a typo is visible without breaking a newer dispatcher.
    """

    model_config = ConfigDict(extra="ignore")

    s3_location: list[str] = Field(
        min_length=1, description="Location of each asset: s3:// URI, local path or file:// URI"
    )
    asset_name: list[str] = Field(default_factory=list, description="Name of each asset")
    docdb_record_id: list[str] = Field(default_factory=list, description="DocDB record id of each asset")
    file_location: list[str] | None = Field(None, description="Specific file within each asset")
    distributed_parameters: dict[str, Any] | None = Field(
        None, description="Parameters distributed by the dispatcher (highest precedence)"
    )
    group_metadata: dict[str, Any] | None = None
    query: str | None = None
    analysis_code: AindCode | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_legacy_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "asset_id" in data:
            data = dict(data)
            data.pop("asset_id")
            log.warning("job key 'asset_id' is obsolete and ignored (use 'docdb_record_id')")
        return data

    @property
    def base_parameters(self) -> dict[str, Any]:
        if self.analysis_code and self.analysis_code.parameters:
            return dict(self.analysis_code.parameters)
        return {}

    @property
    def analysis_name(self) -> str | None:
        # The same precedence as the parameter merge: distributed_parameters win.
        name = (self.distributed_parameters or {}).get(ANALYSIS_NAME_PARAMETER)
        if name is None:
            name = self.base_parameters.get(ANALYSIS_NAME_PARAMETER)
        return str(name) if name is not None else None


def field_path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def parse_job(data: Any, source: str) -> DispatchJob:
    """Validate already-parsed JSON as a :class:`DispatchJob`; errors name ``source`` and the field."""
    if not isinstance(data, dict):
        raise JobFileError(source, None, f"a job must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(DispatchJob.model_fields) - {"asset_id"})
    if unknown:
        log.warning("%s: ignoring unknown job keys %s", source, ", ".join(unknown))
    try:
        return DispatchJob.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        extra = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise JobFileError(source, field_path(first["loc"]), f"{first['msg']}{extra}") from None


def parse_job_text(text: str | bytes, source: str) -> DispatchJob:
    """Parse job JSON text; broken JSON is reported with its line and column."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobFileError(
            source, None, f"invalid JSON: {exc.msg} (column {exc.colno})", exc.lineno
        ) from None
    except UnicodeDecodeError as exc:
        raise JobFileError(source, None, f"not UTF-8 text: {exc.reason}") from None
    return parse_job(data, source)


def load_job_file(path: Path) -> DispatchJob:
    """Read and validate one job file. Relative local locations are resolved against its folder."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise JobFileError(str(path), None, f"cannot read file: {exc.strerror}") from None
    job = parse_job_text(text, str(path))
    return resolve_relative_locations(job, path.parent)


def normalize_location(location: str, base: Path | None = None) -> str:
    """One spelling per location: ``s3://`` URIs stay, ``file://`` URIs and paths become absolute paths."""
    location = location.strip()
    if location.startswith("s3://"):
        return location.rstrip("/") if location.count("/") > 3 else location
    if location.startswith("file://"):
        parsed = urlparse(location)
        location = unquote(parsed.path)
    path = Path(location).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    return Path(os.path.normpath(path)).as_posix()


def resolve_relative_locations(job: DispatchJob, base: Path) -> DispatchJob:
    """Return ``job`` with every location normalised, relative paths taken from ``base``."""
    base = base.resolve()
    return job.model_copy(
        update={
            "s3_location": [normalize_location(loc, base) for loc in job.s3_location],
            "file_location": (
                [normalize_location(loc, base) for loc in job.file_location] if job.file_location else None
            ),
        }
    )


def merge_parameters(job: DispatchJob, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge parameters, lowest precedence first: ``analysis_code.parameters`` < run-config
    overrides < ``distributed_parameters`` (the capsule's order, so results stay comparable)."""
    merged = job.base_parameters
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    merged.update(job.distributed_parameters or {})
    return merged


def describe_parameter_changes(merged: Mapping[str, Any], validated: Mapping[str, Any]) -> list[str]:
    """Human-readable lines for every value the Params model defaulted, coerced or dropped."""
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


class AnalysisJob(BaseModel):
    """One job made concrete for one analysis: what runs, on what, with which parameters.

    ``input_paths`` is filled in just before the analysis runs: local paths to ``inputs``.
    """

    model_config = ConfigDict(frozen=True)

    analysis: str
    version: str
    source: str = Field(description="Where the job came from: the job file, or 'registry'")
    dispatch: DispatchJob
    inputs: list[str] = Field(description="Normalised locations the analysis reads")
    parameters: dict[str, Any] = Field(description="Validated parameters, JSON mode")
    fingerprint: str
    partition_key: str
    input_paths: list[Path] = Field(default_factory=list, exclude=True)

    @property
    def label(self) -> str | None:
        names = self.dispatch.asset_name
        if names:
            return names[0]
        return Path(self.inputs[0]).name if self.inputs else None
