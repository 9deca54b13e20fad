"""Turn job files into registered jobs and dynamic partitions (shared by the CLI and the sensor).

inbox file -> DispatchJob -> AnalysisJob (fingerprint, partition key) -> job registry entry +
dynamic partition. Bad files never stop the others: each is reported with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import DagsterInstance

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.dispatch import (
    AnalysisJob,
    DispatchJob,
    JobFileError,
    build_analysis_job,
    load_job_file,
    select_analysis,
)
from analysis_wrapper.resources.store_base import JobEntry, RecordStore, RegisterOutcome

log = logging.getLogger(__name__)

# Dagster issue 16260: adding tens of thousands of keys at once overflows SQLite's variable limit.
PARTITION_BATCH_SIZE = 1000


@dataclass
class Rejected:
    """A job file that was not registered; ``message`` names the file and, where known, field and line."""

    source: str
    message: str


@dataclass
class Prepared:
    """Jobs made concrete, grouped by analysis, and the files rejected on the way."""

    jobs: dict[str, list[AnalysisJob]] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)

    def all_jobs(self) -> list[AnalysisJob]:
        return [job for jobs in self.jobs.values() for job in jobs]


def find_job_files(paths: Iterable[Path]) -> tuple[list[Path], list[Rejected]]:
    """Expand files and folders (``*.json`` inside, recursively, sorted) into job files."""
    files: list[Path] = []
    missing: list[Rejected] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.json") if p.is_file() and "rejected" not in p.parts))
        elif path.is_file():
            files.append(path)
        else:
            missing.append(Rejected(str(path), f"{path}: no such file or folder"))
    return files, missing


def prepare_job(
    dispatch: DispatchJob,
    source: str,
    analyses: Mapping[str, Analysis[Any, Any]],
    analysis_override: str | None = None,
) -> AnalysisJob:
    analysis = select_analysis(dispatch, analyses, source, analysis_override)
    return build_analysis_job(dispatch, analysis, source=source)


def prepare_files(
    files: Sequence[Path], analyses: Mapping[str, Analysis[Any, Any]], analysis_override: str | None = None
) -> Prepared:
    prepared = Prepared()
    for path in files:
        try:
            job = prepare_job(load_job_file(path), str(path), analyses, analysis_override)
        except JobFileError as exc:
            prepared.rejected.append(Rejected(str(path), str(exc)))
            continue
        prepared.jobs.setdefault(job.analysis, []).append(job)
    return prepared


def entry_for(job: AnalysisJob) -> JobEntry:
    return JobEntry(
        analysis=job.analysis,
        partition_key=job.partition_key,
        fingerprint=job.fingerprint,
        job=job.dispatch.model_dump(mode="json"),
        source=job.source,
    )


def add_partitions(instance: DagsterInstance, partitions_name: str, keys: Sequence[str]) -> None:
    """Add dynamic partition keys in batches small enough for SQLite run storage."""
    for start in range(0, len(keys), PARTITION_BATCH_SIZE):
        instance.add_dynamic_partitions(partitions_name, list(keys[start : start + PARTITION_BATCH_SIZE]))


def register(
    jobs: Sequence[AnalysisJob],
    analysis: Analysis[Any, Any],
    store: RecordStore,
    instance: DagsterInstance,
) -> RegisterOutcome:
    """Register ``jobs`` of one analysis in the job registry and as dynamic partitions.

    Duplicates within ``jobs`` (same partition key) collapse to the first. Every key is (re-)added as
    a partition, so a registry that outlived its Dagster instance heals itself.
    """
    unique: dict[str, AnalysisJob] = {}
    for job in jobs:
        unique.setdefault(job.partition_key, job)
    outcome = store.register_jobs([entry_for(job) for job in unique.values()])
    add_partitions(instance, analysis.partitions_name, list(unique))
    return outcome
