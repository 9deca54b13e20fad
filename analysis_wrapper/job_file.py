"""Dispatched jobs: the AIND job-file format and loading with precise errors (the parameter merge is
:mod:`analysis_wrapper.parameters`).

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

import logging
import os
import posixpath
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from analysis_wrapper.errors import AnalysisWrapperError
from analysis_wrapper.job_bytes import DEFAULT_MAX_JOB_FILE_BYTES, BadJobFileError, read_job_bytes
from analysis_wrapper.s3_uri import S3Uri
from analysis_wrapper.safe_paths import bucket_problem, key_problem
from analysis_wrapper.strict_json import StrictJSONError, loads_strict

log = logging.getLogger(__name__)

ANALYSIS_NAME_PARAMETER = "analysis_name"


class JobFileError(AnalysisWrapperError, ValueError):
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
        job = DispatchJob.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        extra = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise JobFileError(source, field_path(first["loc"]), f"{first['msg']}{extra}") from None
    check_assets(job, source)
    return job


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
LOCATION_FORMS = "s3://bucket/key, file:///absolute/path or a local path"


def location_problem(location: str) -> str | None:
    """Why ``location`` cannot be an input location (see :data:`LOCATION_FORMS`); None if it can."""
    text = location.strip()
    if not text:
        return "is empty"
    if "\x00" in text:
        return "holds a NUL character"
    match = _SCHEME.match(text)
    if match is None:
        return None  # a local path (absolute, or relative to the job file's folder)
    scheme = match.group(1)
    rest = text[len(scheme) + 1 :]
    if scheme.lower() == "s3":
        if scheme != "s3" or not rest.startswith("//"):
            return f"{text!r} is not an s3:// URI: write s3://bucket/key"
        uri = S3Uri.parse(text)
        return bucket_problem(uri.bucket) or (
            f"S3 key {uri.key!r} {problem}" if (problem := key_problem(uri.key)) else None
        )
    if scheme.lower() == "file":
        parsed = urlparse(text)
        if scheme != "file" or not rest.startswith("//"):
            return f"{text!r} is not a file:// URI: write file:///absolute/path"
        if parsed.netloc not in ("", "localhost"):
            return f"file URI names the host {parsed.netloc!r}: only local files (file:///path)"
        if not parsed.path:
            return "file URI names no path"
        return None
    if rest.startswith("//"):
        return f"scheme {scheme}:// is not supported: use {LOCATION_FORMS}"
    return None  # e.g. "session:1.nwb", a relative path with a colon in its name


def check_assets(job: DispatchJob, source: str) -> None:
    """The per-asset lists of the AIND ``AnalysisDispatchModel`` are parallel: ``asset_name`` and
    ``docdb_record_id`` (when given) hold one entry per ``s3_location``. ``file_location`` holds the
    files the analysis reads, any number per asset (the dispatcher puts every matching file of an
    asset there unless it splits them), each inside one of the ``s3_location`` assets: the record
    names the assets (``input_data``), so a file of no listed asset, or one listed twice, would
    make the record and what the analysis read disagree. Also refused: locations that cannot be
    read (empty, an unsupported scheme, an S3 key leading out of a folder)."""
    count = len(job.s3_location)
    lists: dict[str, list[str]] = {"s3_location": job.s3_location, "file_location": job.file_location or []}
    for name in ("asset_name", "docdb_record_id"):
        values = getattr(job, name) or []
        if values and len(values) != count:
            raise JobFileError(
                source,
                name,
                f"has {len(values)} entries but s3_location has {count}: each asset needs exactly one "
                "(the lists are parallel, as in AIND's AnalysisDispatchModel)",
            )
        lists[name] = values
    for name in ("s3_location", "file_location"):
        for i, location in enumerate(lists[name]):
            problem = location_problem(location)
            if problem:
                raise JobFileError(source, f"{name}[{i}]", problem)
    for name in ("asset_name", "docdb_record_id"):
        for i, value in enumerate(lists[name]):
            if not value.strip():
                raise JobFileError(source, f"{name}[{i}]", "is empty")
    _check_files_in_assets(lists["file_location"], job.s3_location, source)


def _comparable(location: str) -> str:
    """A location spelt for comparing containment: ``s3://`` as written (no trailing slash),
    ``file://`` URIs as their path, paths normalised (``a/./b`` = ``a/b``)."""
    text = location.strip()
    if S3Uri.matches(text):
        return text.rstrip("/")
    if text.startswith("file://"):
        text = unquote(urlparse(text).path)
    return posixpath.normpath(text)


def _check_files_in_assets(files: Sequence[str], assets: Sequence[str], source: str) -> None:
    tops = [_comparable(asset) for asset in assets]
    seen: dict[str, int] = {}
    for i, location in enumerate(files):
        here = _comparable(location)
        if here in seen:
            raise JobFileError(source, f"file_location[{i}]", f"repeats file_location[{seen[here]}]")
        seen[here] = i
        if not any(here == top or here.startswith(top + "/") for top in tops):
            raise JobFileError(
                source,
                f"file_location[{i}]",
                f"{location!r} is not inside any s3_location ({', '.join(assets)}): the record names the "
                "assets a job reads, so each file must belong to one of them",
            )


def parse_job_text(text: str | bytes, source: str) -> DispatchJob:
    """Parse job JSON text strictly (:func:`~analysis_wrapper.strict_json.loads_strict`); broken JSON
    is reported with its line and column, NaN, duplicate keys and deep nesting with their field."""
    try:
        data = loads_strict(text)
    except StrictJSONError as exc:
        raise JobFileError(source, exc.field, exc.problem, exc.line) from None
    except UnicodeDecodeError as exc:
        raise JobFileError(source, None, f"not UTF-8 text: {exc.reason}") from None
    return parse_job(data, source)


def load_job_file(path: Path, max_bytes: int = DEFAULT_MAX_JOB_FILE_BYTES) -> DispatchJob:
    """Read (at most ``max_bytes``) and validate one job file. Relative local locations are resolved
    against its folder."""
    try:
        text = read_job_bytes(path, max_bytes)
    except BadJobFileError as exc:
        raise JobFileError(str(path), None, str(exc)) from None
    except OSError as exc:
        raise JobFileError(str(path), None, f"cannot read file: {exc.strerror or exc}") from None
    job = parse_job_text(text, str(path))
    return resolve_relative_locations(job, path.parent)


def normalize_location(location: str, base: Path | None = None) -> str:
    """One spelling per location: ``s3://`` URIs stay, ``file://`` URIs and paths become absolute paths."""
    location = location.strip()
    if S3Uri.matches(location):  # a trailing "/" dropped, but never the one after the bucket
        return location.rstrip("/") if S3Uri.parse(location).key else location
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
