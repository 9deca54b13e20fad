"""One partition's work, whoever runs it: the result asset (one partition per run) or a batch run.

:func:`compute_partition` loads the partition's job from the registry (with run-config overrides),
skips a fingerprint already recorded, runs the analysis into a scratch folder and builds the
provenance record; it returns the :class:`AnalysisResult` for the results IO manager and the
materialization metadata.

Before it computes, the run claims the fingerprint (:mod:`analysis_wrapper.ownership`): a second run
of the same fingerprint sees the claim and ends this partition skipped, never failed, and the record
is checked again under the claim (the first run may have committed meanwhile). State changes go
through :class:`~analysis_wrapper.lifecycle.JobLifecycle` (started, refused, failed); the IO manager
records the job once its record is committed, and releases the claim.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import Config, Failure, MetadataValue
from pydantic import ValidationError

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.config import overrides_from_config
from analysis_wrapper.inputs import InputNotFoundError, resolve_inputs
from analysis_wrapper.job_file import AnalysisJob, DispatchJob, JobFileError
from analysis_wrapper.lifecycle import TRANSITIONS, JobEvent, JobLifecycle
from analysis_wrapper.make_job import build_analysis_job
from analysis_wrapper.ownership import Claim, Held, claim, fingerprint_key, release
from analysis_wrapper.provenance import CodeState, DirtyTreeError, build_record, check_may_post
from analysis_wrapper.resources.record_store import StoreResource
from analysis_wrapper.resources.results_io import AnalysisResult
from analysis_wrapper.resources.results_storage import result_files
from analysis_wrapper.resources.runtime import AnalysisRuntime
from analysis_wrapper.resources.s3_input_cache import S3InputCache
from analysis_wrapper.result_metadata import figure_from_file, inputs_table, outputs_table
from analysis_wrapper.scratch import make_scratch, remove_scratch
from analysis_wrapper.store.base import JobEntry, StoreError


@dataclass(frozen=True)
class PartitionContext:
    """Where a partition runs: its run, the asset it materializes, the log to tell."""

    run_id: str
    asset_key: str
    log: Any


@dataclass
class PartitionOutcome:
    result: AnalysisResult
    metadata: dict[str, Any]


def job_of_entry(
    entry: JobEntry, analysis: Analysis[Any, Any], overrides: dict[str, Any] | None = None, log: Any = None
) -> AnalysisJob:
    """The :class:`AnalysisJob` of a registry entry, built with the analysis as it is now (its
    fingerprint may differ from the entry's after a new version). The one way back from the registry."""
    dispatch = DispatchJob.model_validate(dict(entry.job))
    return build_analysis_job(dispatch, analysis, overrides, source=entry.source or "registry", logger=log)


def load_job(
    analysis: Analysis[Any, Any], store: StoreResource, key: str, config: Config, log: Any
) -> tuple[JobEntry, AnalysisJob]:
    """The partition's registry entry and its job, with run-config overrides applied and validated."""
    entry = store.get_store().get_job(analysis.name, key)
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


def _start(
    lifecycle: JobLifecycle, store: StoreResource, entry: JobEntry, run_id: str, dry_run: bool = False
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
        fresh = store.get_store().get_job(entry.analysis, entry.partition_key)
        if fresh is None:
            return "left the job registry while starting"
        if fresh.fingerprint != read:
            return "re-registered with another fingerprint while starting (that job runs next)"
        entry = fresh
    return "kept changing while starting (five tries)"


def compute_partition(
    analysis: Analysis[Any, Any],
    key: str,
    config: Any,
    store: StoreResource,
    runtime: AnalysisRuntime,
    where: PartitionContext,
    run_script: str,
    code_state: Callable[[], CodeState] | None = None,
) -> PartitionOutcome:
    """Run ``analysis`` on partition ``key`` (or skip it when its fingerprint is recorded or is
    being computed by another run).

    ``config`` is the analysis's generated ``Config`` (overrides, ``dry_run``, ``force``). Raises
    :class:`~dagster.Failure` for a job that cannot run (not registered, bad overrides, dirty tree)
    and re-raises the analysis's own exception after marking the job failed. ``code_state`` (default:
    ``runtime.code_state``) lets a batch read the git state once for all its partitions.
    """
    records = store.get_store()
    lifecycle = store.lifecycle()
    log = where.log
    entry, job = load_job(analysis, store, key, config, log)
    source = entry.source or "registry"
    dry_run = runtime.dry_run if config.dry_run is None else bool(config.dry_run)
    log.info(
        f"{analysis.name} {analysis.version} on partition {key}: fingerprint {job.fingerprint}, "
        f"{len(job.inputs)} input(s), dry run {'on' if dry_run else 'off'}."
    )
    common_metadata: dict[str, Any] = {
        "fingerprint": job.fingerprint,
        "inputs": inputs_table(list(job.inputs)),
        "parameters": MetadataValue.json(job.parameters),
        "analysis_version": analysis.version,
        "job_source": source,
    }

    def skip(reason: str) -> PartitionOutcome:
        skipped = AnalysisResult(
            job=job, outputs=analysis.outputs.model_construct(), dry_run=dry_run, skipped=reason
        )
        return PartitionOutcome(skipped, common_metadata)

    def recorded_already() -> bool:
        if config.force or not records.existing_fingerprints(analysis.name, [job.fingerprint]):
            return False
        log.info(
            f"Skipping {key}: fingerprint {job.fingerprint} is already recorded. "
            "Set force: true in run config to run it again."
        )
        lifecycle.found_recorded(analysis.name, key, job.fingerprint, where.run_id)
        return True

    if recorded_already():
        return skip("already recorded")
    code = (code_state or runtime.code_state)()
    try:
        check_may_post(code, dry_run, runtime.allow_dirty)
    except DirtyTreeError as exc:
        lifecycle.refused(entry, where.run_id, str(exc))
        raise Failure(str(exc)) from None
    made = claim(records, fingerprint_key(job.fingerprint, dry_run), where.run_id, store.lease_ttl_s)
    if isinstance(made, Held):
        log.info(
            f"Skipping {key}: fingerprint {job.fingerprint} is being computed by {made.lease.describe()}; "
            "that run records it."
        )
        return skip(f"being computed by run {made.lease.run_id}")
    try:
        if recorded_already():  # committed by another run between our first look and our claim
            release(made)
            return skip("already recorded")
        refused = _start(lifecycle, store, entry, where.run_id, dry_run)
        if refused is not None:
            release(made)
            if refused.startswith("re-registered"):
                return skip(refused)
            raise Failure(f"Partition {key} of {analysis.name} {refused}.")
    except BaseException:
        release(made)
        raise
    return _run_claimed(
        analysis, job, config, runtime, where, run_script, code, dry_run, made, common_metadata, store
    )


def _run_claimed(
    analysis: Analysis[Any, Any],
    job: AnalysisJob,
    config: Any,
    runtime: AnalysisRuntime,
    where: PartitionContext,
    run_script: str,
    code: CodeState,
    dry_run: bool,
    made: Claim,
    common_metadata: dict[str, Any],
    store: StoreResource,
) -> PartitionOutcome:
    """The analysis itself, under the fingerprint's claim (handed on to the IO manager)."""
    log = where.log
    key = job.partition_key
    source = job.source
    # Under this process's folder of the host's scratch root, swept of killed processes' folders
    # (analysis_wrapper.scratch); named after the run and the fingerprint, for whoever looks in there.
    scratch = make_scratch(
        Path(runtime.scratch_root) if runtime.scratch_root else None,
        f"{analysis.name}-{job.fingerprint[:12]}-{where.run_id[:8]}-",
    )
    cache: S3InputCache | None = None
    try:
        cache = S3InputCache(runtime.s3_client, scratch.with_name(scratch.name + "-inputs"))
        started = dt.datetime.now(dt.UTC)
        clock = time.perf_counter()
        job = job.model_copy(update={"input_paths": resolve_inputs(job.inputs, source, cache)})
        outputs = analysis.run(job, analysis.params.model_validate(job.parameters), scratch, log)
        outputs = analysis.outputs.model_validate(outputs)
        cache.cleanup()
        duration = time.perf_counter() - clock
        record = build_record(
            job=job,
            outputs=outputs,
            location="",
            started=started,
            finished=dt.datetime.now(dt.UTC),
            code=code,
            run_id=where.run_id,
            asset_key=where.asset_key,
            run_script=run_script,
            experimenters=runtime.people(),
            dry_run=dry_run,
            files=[(p.relative_to(scratch).as_posix(), p.stat().st_size) for p in result_files(scratch)],
        )
        metadata: dict[str, Any] = {
            **common_metadata,
            "git_commit": code.commit or "unknown",
            "git_dirty": code.dirty,
            "duration_s": round(duration, 3),
            "outputs": outputs_table(outputs.model_dump(mode="json")),
            "dry_run": dry_run,
        }
        if analysis.figure:
            figure = figure_from_file(scratch / analysis.figure)
            if figure is not None:
                metadata["figure"] = figure
    except Exception as exc:  # nothing half-done is kept: the scratch folder goes, the job is failed
        if cache is not None:
            cache.cleanup()
        remove_scratch(scratch)
        reason = f"{type(exc).__name__}: {exc}"
        try:
            store.lifecycle().failed(analysis.name, key, where.run_id, reason)
        except StoreError:
            log.warning(f"cannot mark {key} failed in the job registry (the store is unreachable)")
        release(made)
        if isinstance(exc, InputNotFoundError):
            raise Failure(str(exc)) from None
        raise
    except BaseException:
        if cache is not None:
            cache.cleanup()
        remove_scratch(scratch)
        release(made)
        raise
    log.info(f"{analysis.name} finished {key} in {duration:.2f} s.")
    result = AnalysisResult(
        job=job,
        outputs=outputs,
        dry_run=dry_run,
        force=bool(config.force),
        scratch=scratch,
        record=record,
        claim=made,
    )
    return PartitionOutcome(result, metadata)
