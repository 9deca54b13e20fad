"""One partition's computation: its job from the registry, its start, the analysis in a scratch folder.

:mod:`analysis_wrapper.commit` drives these steps (under the fingerprint's claim) and stores what
:func:`compute` returns; nothing here stores, claims or decides a skip. :func:`job_of_entry` is the one
way back from a registry entry to its job (the sensors and the CLI use it too).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import Config, Failure
from pydantic import BaseModel, ValidationError

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.config import overrides_from_config
from analysis_wrapper.inputs import resolve_inputs
from analysis_wrapper.job_file import AnalysisJob, DispatchJob, JobFileError
from analysis_wrapper.lifecycle import TRANSITIONS, JobEvent, JobLifecycle
from analysis_wrapper.make_job import build_analysis_job
from analysis_wrapper.provenance import CodeState, build_record
from analysis_wrapper.resources.results_storage import result_files
from analysis_wrapper.resources.runtime import AnalysisRuntime
from analysis_wrapper.resources.s3_input_cache import S3InputCache
from analysis_wrapper.result_metadata import figure_from_file, outputs_table
from analysis_wrapper.store.base import JobEntry, Store


@dataclass(frozen=True)
class RunPlace:
    """Where a partition runs: its run, the asset it materializes, the script its record names, and
    the run's log."""

    run_id: str
    asset_key: str
    run_script: str
    log: Any


@dataclass(frozen=True)
class Computed:
    """What the analysis made in its scratch folder: outputs, the record (``location`` still empty)
    and the metadata the partition's page shows."""

    job: AnalysisJob
    outputs: BaseModel
    record: dict[str, Any]
    metadata: dict[str, Any]
    dry_run: bool


def job_of_entry(
    entry: JobEntry, analysis: Analysis[Any, Any], overrides: dict[str, Any] | None = None, log: Any = None
) -> AnalysisJob:
    """The :class:`AnalysisJob` of a registry entry, built with the analysis as it is now (its
    fingerprint may differ from the entry's after a new version). The one way back from the registry."""
    dispatch = DispatchJob.model_validate(dict(entry.job))
    return build_analysis_job(dispatch, analysis, overrides, source=entry.source or "registry", logger=log)


def load_job(
    analysis: Analysis[Any, Any], store: Store, key: str, config: Config, log: Any
) -> tuple[JobEntry, AnalysisJob]:
    """The partition's registry entry and its job, with run-config overrides applied and validated."""
    entry = store.get_job(analysis.name, key)
    if entry is None:
        raise Failure(
            f"Partition {key!r} of {analysis.name} is not in the job registry. Register its job file first "
            "(`analysis-wrapper submit FILE`, or drop it in the dispatch inbox)."
        )
    try:
        job = job_of_entry(entry, analysis, overrides_from_config(config, analysis), log)
    except (JobFileError, ValidationError) as exc:
        raise Failure(f"Invalid parameters for partition {key}, nothing was run: {exc}") from None
    if job.partition_key != key:
        log.info(
            f"Run-config overrides change this job's parameters: it runs and is recorded under partition "
            f"{key} with fingerprint {job.fingerprint} (a job file with these parameters would get key "
            f"{job.partition_key})."
        )
        job = job.model_copy(update={"partition_key": key})
    return entry, job


def start(
    lifecycle: JobLifecycle, store: Store, entry: JobEntry, run_id: str, dry_run: bool = False
) -> str | None:
    """STARTED, re-reading the job when another writer changed its state between our read and our
    update (e.g. the inbox sensor marking it queued); None once started, else why not: the job is
    gone, or was re-registered with another fingerprint (its new job runs next; this run must not
    mark it done with a record of the old one). A dry run of a recorded job (``done``,
    ``skipped``) or of one another run is computing (``running``: dry runs hold their own lease, so
    that run may be posting it) changes nothing: it runs, and the job keeps its state."""
    read = entry.fingerprint
    for _ in range(5):
        if dry_run and entry.state not in TRANSITIONS[JobEvent.DRY_RUN_STARTED].sources:
            return None
        if lifecycle.started(entry, run_id, dry_run=dry_run):
            return None
        fresh = store.get_job(entry.analysis, entry.partition_key)
        if fresh is None:
            return "left the job registry while starting"
        if fresh.fingerprint != read:
            return "re-registered with another fingerprint while starting (that job runs next)"
        entry = fresh
    return "kept changing while starting (five tries)"


def compute(
    analysis: Analysis[Any, Any],
    job: AnalysisJob,
    runtime: AnalysisRuntime,
    place: RunPlace,
    code: CodeState,
    dry_run: bool,
    scratch: Path,
) -> Computed:
    """Run the analysis into ``scratch`` (its S3 inputs fetched beside it, removed after) and build
    its provenance record and page metadata. Raises whatever the analysis raises."""
    cache = S3InputCache(runtime.s3_client, scratch.with_name(scratch.name + "-inputs"))
    try:
        started = dt.datetime.now(dt.UTC)
        clock = time.perf_counter()
        job = job.model_copy(update={"input_paths": resolve_inputs(job.inputs, job.source, cache)})
        outputs = analysis.run(job, analysis.params.model_validate(job.parameters), scratch, place.log)
        outputs = analysis.outputs.model_validate(outputs)
    finally:
        cache.cleanup()
    duration = time.perf_counter() - clock
    record = build_record(
        job=job,
        outputs=outputs,
        location="",
        started=started,
        finished=dt.datetime.now(dt.UTC),
        code=code,
        run_id=place.run_id,
        asset_key=place.asset_key,
        run_script=place.run_script,
        experimenters=runtime.people(),
        dry_run=dry_run,
        files=[(p.relative_to(scratch).as_posix(), p.stat().st_size) for p in result_files(scratch)],
    )
    metadata: dict[str, Any] = {
        "git_commit": code.commit or "unknown",
        "git_dirty": code.dirty,
        "source_digest": code.source_digest or "unknown",
        "duration_s": round(duration, 3),
        "outputs": outputs_table(outputs.model_dump(mode="json")),
        "dry_run": dry_run,
    }
    figure = figure_from_file(scratch / analysis.figure) if analysis.figure else None
    if figure is not None:
        metadata["figure"] = figure
    return Computed(job, outputs, record, metadata, dry_run)
