"""The capsule's records carried over: a job the AIND capsule already recorded counts as done.

A team switching from the capsule keeps the records it wrote (DocumentDB's, or copied into our SQLite
store): an analysis naming the capsule it replaces (``Analysis.capsule_code_url`` /
``capsule_code_version``, a capsule module's ``CAPSULE_CODE_URL`` / ``CAPSULE_CODE_VERSION``) treats a
job as recorded when a record of that capsule in the analysis's record collection matches it as the
capsule would have recorded it (analysis-pipeline-utils 0.2.8, ``update_analysis_process``):

* ``processing.data_processes[0].code.url`` and ``.version`` equal the capsule's;
* its ``input_data`` (``DataAsset(url=s3_location)``, plus any data the capsule had attached) names
  every ``s3_location`` of the job: AIND's own ``get_docdb_records_partial`` matches inputs with
  ``$all`` the same way;
* its ``parameters`` equal the job's as the capsule merged them: ``analysis_code.parameters``, then
  ``file_location`` (the job's files), then ``distributed_parameters``; the capsule's ``dry_run`` switch
  never enters. The job's own parameters must also be those (no run-config override changed them).

Such a job is not computed and is marked found recorded (:mod:`analysis_wrapper.lifecycle`); the
capsule's record is only read, never changed. The lookup is one store query per batch of jobs
(:meth:`~analysis_wrapper.store.base.RecordStore.capsule_records`), like the fingerprint skip check.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from analysis_wrapper.job_file import DispatchJob, normalize_location
from analysis_wrapper.parameters import FILE_LOCATION_PARAMETER, merge_parameters, parameters_to_validate

if TYPE_CHECKING:
    from analysis_wrapper.analysis import Analysis
    from analysis_wrapper.job_file import AnalysisJob
    from analysis_wrapper.store.base import RecordStore

RECORDED_BY_CAPSULE = "recorded by the capsule"


@dataclass(frozen=True)
class CapsuleRecord:
    """The capsule's record a job defers to."""

    record_id: str
    location: str

    def describe(self) -> str:
        return f"{RECORDED_BY_CAPSULE}, record {self.record_id}"

    def metadata(self) -> dict[str, str]:
        """What the partition's skip observation shows of it."""
        return {"recorded_by": "capsule", "capsule_record_id": self.record_id}


def capsule_parameters(dispatch: DispatchJob) -> dict[str, Any]:
    """The job's parameters as the capsule recorded them (``update_analysis_process``), JSON mode."""
    added = {FILE_LOCATION_PARAMETER: list(dispatch.file_location)} if dispatch.file_location else {}
    merged = dispatch.base_parameters | added | (dispatch.distributed_parameters or {})
    return dict(json.loads(json.dumps(merged)))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _urls(urls: Iterable[str]) -> set[str]:
    return {normalize_location(url) for url in urls}


def _takes_dispatch_parameters(analysis: Analysis[Any, Any], job: AnalysisJob) -> bool:
    """Whether the job's parameters are its dispatch's alone (the capsule knew no run-config override)."""
    merged = parameters_to_validate(merge_parameters(job.dispatch), analysis.params)
    try:
        return analysis.validate_params(merged).model_dump(mode="json") == job.parameters
    except ValidationError:
        return False


def _code(record: Mapping[str, Any]) -> Mapping[str, Any]:
    processes = (record.get("processing") or {}).get("data_processes") or [{}]
    return processes[0].get("code") or {}


def capsule_recorded(
    store: RecordStore, analysis: Analysis[Any, Any], jobs: Sequence[AnalysisJob]
) -> dict[str, CapsuleRecord]:
    """The capsule's record of each of ``jobs`` (of ``analysis``) it recorded, by fingerprint; one query.
    Nothing is asked of the store for an analysis that names no capsule."""
    url, version = analysis.capsule_code_url, analysis.capsule_code_version
    jobs = [job for job in jobs if job.analysis == analysis.name]
    if not (url and version and jobs):
        return {}
    asked = sorted({spelt for job in jobs for u in job.dispatch.s3_location for spelt in (u, u + "/")})
    by_parameters: dict[str, list[tuple[set[str], CapsuleRecord]]] = {}
    for record in store.capsule_records(analysis.name, url, version, asked):
        code = _code(record)
        inputs = _urls(str(asset.get("url")) for asset in code.get("input_data") or [] if asset.get("url"))
        found = CapsuleRecord(str(record.get("_id")), str(record.get("location") or ""))
        by_parameters.setdefault(_canonical(code.get("parameters") or {}), []).append((inputs, found))
    recorded: dict[str, CapsuleRecord] = {}
    for job in jobs:
        reads = _urls(job.dispatch.s3_location)
        candidates = by_parameters.get(_canonical(capsule_parameters(job.dispatch)), [])
        match = next((found for inputs, found in candidates if reads <= inputs), None)
        if match is not None and _takes_dispatch_parameters(analysis, job):
            recorded[job.fingerprint] = match
    return recorded


def recorded_jobs(
    store: RecordStore, analyses: Mapping[str, Analysis[Any, Any]], jobs: Sequence[AnalysisJob]
) -> dict[str, CapsuleRecord | None]:
    """Which of ``jobs`` are recorded, by fingerprint: ``None`` for our own record, the capsule's record
    for a job only the capsule recorded. One fingerprint query per analysis, and one capsule query for
    the rest of an analysis that names a capsule: the skip check of every path (registration, ``run``,
    a partition's run)."""
    found: dict[str, CapsuleRecord | None] = {}
    for name in sorted({job.analysis for job in jobs}):
        of_analysis = [job for job in jobs if job.analysis == name]
        found.update(
            dict.fromkeys(store.existing_fingerprints(name, [job.fingerprint for job in of_analysis]))
        )
        if name in analyses:
            rest = [job for job in of_analysis if job.fingerprint not in found]
            found.update(capsule_recorded(store, analyses[name], rest))
    return found
