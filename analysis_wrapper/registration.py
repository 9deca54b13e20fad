"""How a job file becomes a partition: the one path, shared by the CLI and the inbox sensor.

job file -> DispatchJob -> AnalysisJob (fingerprint, partition key) -> job registry entry
(:meth:`~analysis_wrapper.lifecycle.JobLifecycle.register`; those already recorded are marked
skipped) -> dynamic partition (added by the CLI here, by the sensor through its ``SensorResult``).
Bad files never stop the others: each is reported with its reason, whatever went wrong with it
(a job file is read through :func:`~analysis_wrapper.job_file.load_job_file`: bounded, strict JSON).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import DagsterInstance

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.capsule_records import recorded_jobs
from analysis_wrapper.inbox import is_job_file_name
from analysis_wrapper.job_bytes import DEFAULT_MAX_JOB_FILE_BYTES
from analysis_wrapper.job_file import AnalysisJob, DispatchJob, JobFileError, load_job_file
from analysis_wrapper.lifecycle import JobLifecycle, RegisterOutcome
from analysis_wrapper.make_job import build_analysis_job, select_analysis
from analysis_wrapper.store.base import JobEntry, Store

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
    """Expand files and folders (``*.json`` inside, recursively, sorted) into job files.

    Entries of a folder named like job files that are not files (a FIFO, a symlink loop, a dangling
    link) are returned as files too, so each is reported with its reason by :func:`prepare_files`
    rather than skipped unseen; folders (even one named ``x.json``) are walked."""
    files: list[Path] = []
    missing: list[Rejected] = []
    for path in paths:
        if path.is_dir():
            found = (
                p
                for p in path.rglob("*.json")
                if is_job_file_name(p.name) and "rejected" not in p.parts and not p.is_dir()
            )
            files.extend(sorted(found))
        elif path.is_file() or os.path.lexists(path):
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
    files: Sequence[Path],
    analyses: Mapping[str, Analysis[Any, Any]],
    analysis_override: str | None = None,
    max_bytes: int = DEFAULT_MAX_JOB_FILE_BYTES,
) -> Prepared:
    """Jobs of ``files``; files larger than ``max_bytes`` (the CLI passes its ``MAX_JOB_FILE_BYTES``
    setting) are rejected unread. A file failing in any way is rejected with the reason; the others go on."""
    prepared = Prepared()
    for path in files:
        try:
            job = prepare_job(load_job_file(path, max_bytes), str(path), analyses, analysis_override)
        except JobFileError as exc:
            prepared.rejected.append(Rejected(str(path), str(exc)))
            continue
        except Exception as exc:  # never let one file stop the others: report it, with the reason
            reason = f"{path}: cannot be used as a job: {type(exc).__name__}: {exc}"
            prepared.rejected.append(Rejected(str(path), reason))
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


@dataclass(frozen=True)
class Registration:
    """What registering some jobs did: the registry's outcome, and the keys whose fingerprint is
    recorded already (marked skipped: nothing to run)."""

    outcome: RegisterOutcome
    recorded: set[str]
    keys: list[str]


def register_jobs(
    jobs: Sequence[AnalysisJob],
    store: Store,
    *,
    checked_unrecorded: bool = False,
    analyses: Mapping[str, Analysis[Any, Any]] | None = None,
) -> Registration:
    """Register ``jobs`` (of any analyses) in the job registry: one batched registration and one
    batched skip check per analysis (:func:`~analysis_wrapper.capsule_records.recorded_jobs`: also the
    records of the capsule an analysis of ``analyses`` replaces). Duplicates (same analysis and
    partition key) collapse to the first.

    ``checked_unrecorded``: the caller has just found none of these fingerprints recorded (the
    dispatch pass does, before it picks what to register), so the skip check is not repeated. A
    record written in between is still found: every run checks the record store before it runs."""
    unique: dict[tuple[str, str], AnalysisJob] = {}
    for job in jobs:
        unique.setdefault((job.analysis, job.partition_key), job)
    lifecycle = JobLifecycle(store)
    outcome = lifecycle.register([entry_for(job) for job in unique.values()])
    keys = [key for _a, key in unique]
    if checked_unrecorded:
        return Registration(outcome, set(), keys)
    found = recorded_jobs(store, analyses or {}, list(unique.values()))
    recorded: set[str] = set()
    for name in {a for a, _k in unique}:
        done = [
            (k, job.fingerprint) for (a, k), job in unique.items() if a == name and job.fingerprint in found
        ]
        if done:
            lifecycle.already_recorded(name, done)
        recorded.update(key for key, _fp in done)
    return Registration(outcome, recorded, keys)


ADD_PARTITIONS_ATTEMPTS = 5


def add_partitions(instance: DagsterInstance, partitions_name: str, keys: Sequence[str]) -> None:
    """Add dynamic partition keys in batches small enough for SQLite run storage, also while another
    process adds the same new keys: Dagster reads which keys exist, then inserts the others, so two
    processes may both insert a key and the second fails on Dagster's unique index. Adding again
    finds that key there and inserts only what is still missing."""
    from sqlalchemy.exc import IntegrityError

    for start in range(0, len(keys), PARTITION_BATCH_SIZE):
        batch = list(keys[start : start + PARTITION_BATCH_SIZE])
        for attempt in range(1, ADD_PARTITIONS_ATTEMPTS + 1):
            try:
                instance.add_dynamic_partitions(partitions_name, batch)
                break
            except IntegrityError:
                if attempt == ADD_PARTITIONS_ATTEMPTS:
                    raise
                log.info("another process added some of these partitions at the same time; adding the rest")


def register(
    jobs: Sequence[AnalysisJob],
    analysis: Analysis[Any, Any],
    store: Store,
    instance: DagsterInstance,
) -> Registration:
    """Register ``jobs`` of one analysis (:func:`register_jobs`) and add their dynamic partitions.
    Every key is (re-)added, so a registry that outlived its Dagster instance heals itself."""
    registration = register_jobs(jobs, store, analyses={analysis.name: analysis})
    add_partitions(instance, analysis.partitions_name, registration.keys)
    return registration
