"""One dispatch: query -> jobs -> fingerprints -> skip what is done -> register the rest -> report.

The same pass behind the CLI, ``<analysis>_dispatch_job`` and the saved-query sensors:

1. the query (or CSV) is validated and run once against the metadata collection (:mod:`.grouping`);
2. its results, in a stable order (record ids), are taken in batches of ``batch_size``; for each batch:
   the files are listed (``file_extension``), the jobs built (:mod:`.jobs`) and made concrete for the
   analysis (:func:`~analysis_wrapper.make_job.build_analysis_job`: parameters validated, fingerprint,
   partition key);
3. ONE registry lookup per batch finds jobs registered already with the same fingerprint, ONE record
   lookup (``existing_fingerprints``) those recorded under another key: both are skipped, nothing
   is registered for them;
4. the new ones, up to ``max_number_of_tasks_dispatched``, get their dynamic partitions (first, so a
   registered job never lacks its partition) and are registered through
   :func:`~analysis_wrapper.registration.register_jobs`, the one path from a job to a partition; the
   inbox sensor of the analysis then runs them like any other pending job;
5. optionally written as files (:mod:`.output`).

With a ``deadline`` (a sensor tick) the pass stops after the batch that crosses it and says where
(``next_after``), so the next tick goes on from there.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.capsule_records import recorded_jobs
from analysis_wrapper.dispatching.dispatch_config import DispatchSettings
from analysis_wrapper.dispatching.files import find_files_of
from analysis_wrapper.dispatching.grouping import build_pipeline
from analysis_wrapper.dispatching.jobs import (
    AssetGroup,
    JobSpec,
    Unusable,
    groups_from_results,
    jobs_of_group,
)
from analysis_wrapper.dispatching.metadata_db import MetadataDatabase
from analysis_wrapper.dispatching.output import write_job_files
from analysis_wrapper.dispatching.query import DispatchQueryError, csv_query, load_query
from analysis_wrapper.job_file import AnalysisJob, JobFileError, parse_job
from analysis_wrapper.make_job import build_analysis_job
from analysis_wrapper.registration import add_partitions, register_jobs
from analysis_wrapper.store.base import JobState, Store

log = logging.getLogger(__name__)

BATCH_SIZE = 1000
"""Pipeline results per batch: one registry and one record lookup, one registration each."""
DONE_STATES = frozenset({JobState.DONE, JobState.SKIPPED})


@dataclass
class DispatchReport:
    """What one dispatch found and did; the CLI prints it, the dispatch record stores it."""

    analysis: str
    dispatch_id: str
    origin: str
    query: dict[str, Any]
    query_source: str
    settings: dict[str, Any]
    started_at: str
    finished_at: str = ""
    found: int = 0
    jobs: int = 0
    already_recorded: int = 0
    already_registered: int = 0
    registered: int = 0
    reregistered: int = 0
    left_out: int = 0
    unusable: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    next_after: str | None = None
    store_queries: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    def counts(self) -> dict[str, int]:
        return {
            "found": self.found,
            "jobs": self.jobs,
            "already recorded": self.already_recorded,
            "already registered": self.already_registered,
            "registered": self.registered,
            "re-registered": self.reregistered,
            "left out by the cap": self.left_out,
            "unusable": len(self.unusable),
            "rejected": len(self.rejected),
            "written": len(self.written),
        }

    def summary(self) -> str:
        verb = "would register" if self.dry_run else "registered"
        text = (
            f"{self.analysis} dispatch {self.dispatch_id}: {self.found} asset(s)/group(s) found, "
            f"{self.jobs} job(s); {self.already_recorded} already recorded, {self.already_registered} "
            f"already registered, {verb} {self.registered}"
        )
        if self.reregistered:
            text += f" (+{self.reregistered} re-registered with a new fingerprint)"
        text += f", {self.left_out} left out by max_number_of_tasks_dispatched"
        if self.unusable:
            text += f"; {len(self.unusable)} left out as unusable"
        if self.rejected:
            text += f"; {len(self.rejected)} rejected by the analysis"
        if self.next_after is not None:
            text += "; the pass stopped at its time budget and goes on next time"
        return text


def resolve_query(settings: DispatchSettings) -> tuple[dict[str, Any], str, str | None]:
    """(filter, where it came from, the text jobs carry in ``query``: None for a CSV, as the dispatcher)."""
    if settings.docdb_query.strip():
        query, source = load_query(settings.docdb_query)
        return query, source, json.dumps(query)
    path = Path(settings.data_asset_csv).expanduser()
    return csv_query(path), f"data_asset_csv {path}", None


def parameter_sets(settings: DispatchSettings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(fixed parameters, parameter sets) from the settings and ``parameters_file``."""
    fixed = dict(settings.fixed_parameters)
    sets = [dict(s) for s in settings.distributed_parameters]
    if settings.parameters_file:
        path = Path(settings.parameters_file).expanduser()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise DispatchQueryError(f"parameters_file {path}: cannot read it: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise DispatchQueryError(
                f"parameters_file {path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
            ) from None
        if isinstance(data, dict):
            fixed.update(data.get("fixed_parameters") or {})
            data = data.get("distributed_parameters") or []
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise DispatchQueryError(
                f"parameters_file {path}: distributed_parameters must be a JSON list of objects "
                "(one parameter set each)"
            )
        sets.extend(data)
    return fixed, sets


@dataclass
class Dispatcher:
    """Everything one dispatch needs; :meth:`run` does it."""

    analysis: Analysis[Any, Any]
    settings: DispatchSettings
    store: Store
    metadata: MetadataDatabase
    instance: Any = None  # DagsterInstance; None only for dry runs
    s3_client: Callable[[], Any] | None = None
    origin: str = "cli"
    batch_size: int = BATCH_SIZE
    logger: logging.Logger | Any = log

    def run(self, after: str | None = None, deadline: float | None = None) -> DispatchReport:
        began = time.monotonic()
        queries_before = self.store.query_count
        query, query_source, query_text = resolve_query(self.settings)
        fixed, sets = parameter_sets(self.settings)
        report = DispatchReport(
            analysis=self.analysis.name,
            dispatch_id=uuid.uuid4().hex[:12],
            origin=self.origin,
            query=query,
            query_source=query_source,
            settings=self.settings.model_dump(mode="json"),
            started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            dry_run=self.settings.dry_run,
        )
        if self.instance is None and not self.settings.dry_run:
            raise ValueError("a dispatch that registers jobs needs the Dagster instance (for partitions)")
        spec = JobSpec(
            analysis=self.analysis.name,
            code_url=f"{self.analysis.run.__module__}",
            code_version=self.analysis.version,
            fixed_parameters=fixed,
            parameter_sets=sets,
            query=query_text,
            file_extension=self.settings.file_extension,
            split_files=self.settings.split_files,
        )
        results = self.metadata.aggregate(build_pipeline(query, self.settings))
        unusable = Unusable()
        groups = groups_from_results(results, unusable)
        report.found = len(groups)
        if after is not None:
            groups = [g for g in groups if g.key > after]
        self.logger.info(
            "%s: %d result(s) from %s (%s)",
            self.analysis.name,
            report.found,
            self.metadata.where,
            query_source,
        )
        for start in range(0, len(groups), self.batch_size):
            batch = groups[start : start + self.batch_size]
            self._batch(spec, batch, unusable, report)
            if deadline is not None and time.monotonic() > deadline and start + self.batch_size < len(groups):
                report.next_after = batch[-1].key
                break
        report.unusable = unusable.reasons
        report.store_queries = self.store.query_count - queries_before
        report.seconds = round(time.monotonic() - began, 3)
        report.finished_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.logger.info(report.summary())
        return report

    # ---- one batch ----------------------------------------------------------------------------
    def _batch(
        self, spec: JobSpec, batch: Sequence[AssetGroup], unusable: Unusable, report: DispatchReport
    ) -> None:
        files: Callable[[str], list[str]] | None = None
        if spec.file_extension:
            listed = find_files_of(
                [loc for g in batch for loc in g.s3_location], spec.file_extension, self.s3_client
            )
            files = listed.__getitem__
        source = f"dispatch {report.dispatch_id} ({self.origin})"
        jobs: dict[str, AnalysisJob] = {}
        for group in batch:
            for data in jobs_of_group(spec, group, files, unusable):
                report.jobs += 1
                try:
                    job = build_analysis_job(parse_job(data, source), self.analysis, source=source)
                except JobFileError as exc:
                    report.rejected.append(f"{', '.join(group.docdb_record_id)}: {exc.problem} ({exc.field})")
                    continue
                jobs.setdefault(job.partition_key, job)
        new = self._not_done(list(jobs.values()), report)
        room = max(0, self.settings.max_number_of_tasks_dispatched - report.registered - report.reregistered)
        chosen, report.left_out = new[:room], report.left_out + max(0, len(new) - room)
        if self.settings.dry_run or not chosen:
            report.registered += len(chosen) if self.settings.dry_run else 0
            report.keys.extend(job.partition_key for job in chosen)
            return
        keys = [job.partition_key for job in chosen]
        add_partitions(self.instance, self.analysis.partitions_name, keys)  # retries a concurrent adder
        registration = register_jobs(chosen, self.store, checked_unrecorded=True)  # by _not_done
        report.registered += len(registration.outcome.added)
        report.reregistered += len(registration.outcome.changed)
        report.already_registered += len(registration.outcome.unchanged)  # registered meanwhile by another
        report.keys.extend(keys)
        if self.settings.output_directory:
            report.written.extend(
                write_job_files(
                    chosen,
                    self.settings.output_directory,
                    self.settings.tasks_per_job,
                    self.s3_client,
                    first_index=len(report.written),
                )
            )

    def _not_done(self, jobs: list[AnalysisJob], report: DispatchReport) -> list[AnalysisJob]:
        """The jobs neither registered with their fingerprint nor recorded: one registry lookup, one
        record lookup."""
        if not jobs:
            return []
        name = self.analysis.name
        registered = self.store.get_jobs(name, [job.partition_key for job in jobs])
        rest = []
        for job in jobs:
            entry = registered.get(job.partition_key)
            if entry is not None and entry.fingerprint == job.fingerprint:
                if entry.state in DONE_STATES:
                    report.already_recorded += 1
                else:
                    report.already_registered += 1
            else:
                rest.append(job)
        recorded = recorded_jobs(self.store, {name: self.analysis}, rest) if rest else {}
        report.already_recorded += sum(1 for job in rest if job.fingerprint in recorded)
        return [job for job in rest if job.fingerprint not in recorded]


def dispatch(
    analysis: Analysis[Any, Any],
    settings: DispatchSettings,
    store: Store,
    metadata: MetadataDatabase,
    instance: Any = None,
    *,
    s3_client: Callable[[], Any] | None = None,
    origin: str = "cli",
    after: str | None = None,
    deadline: float | None = None,
    batch_size: int = BATCH_SIZE,
    logger: Any = None,
) -> DispatchReport:
    """One dispatch (see the module docstring)."""
    return Dispatcher(
        analysis, settings, store, metadata, instance, s3_client, origin, batch_size, logger or log
    ).run(after, deadline)


def report_json(report: DispatchReport) -> Mapping[str, Any]:
    data = dict(report.__dict__)
    data["counts"] = report.counts()
    return data
