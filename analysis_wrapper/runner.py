"""Registered jobs run in this process, as ``analysis-wrapper run`` does it (notebooks and tests too).

The jobs of one analysis go in runs of ``batch_size`` (one job: a run of the result asset's partition,
as the UI does; several: the batch job); each job's outcome is read from its run's events. The run's
heartbeat lease says this process is alive: killed, its run is failed by any daemon's lost-run check.
After recording, the analyses' summaries are brought up to date here too (:func:`update_summaries`).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, ExecuteInProcessResult

from analysis_wrapper.batch import batch_run_config
from analysis_wrapper.capsule_records import recorded_jobs
from analysis_wrapper.errors import one_line
from analysis_wrapper.job_file import AnalysisJob, JobFileError
from analysis_wrapper.lifecycle import JobLifecycle
from analysis_wrapper.ownership import end_heartbeat, fingerprint_key, heartbeat, lease_dead, this_host
from analysis_wrapper.partition_run import job_of_entry
from analysis_wrapper.provenance import check_may_post
from analysis_wrapper.registration import Rejected
from analysis_wrapper.result_metadata import LOCATION_METADATA_KEY
from analysis_wrapper.session import Session
from analysis_wrapper.store.base import JobState, StoreError
from analysis_wrapper.tags import ANALYSIS_TAG, BATCH_SIZE_TAG, HOST_TAG, PID_TAG, SOURCE_TAG

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 20
"""Jobs per in-process run: a Dagster run costs about 0.2 s of its own."""
OUTCOMES = ("done", "already done", "elsewhere", "dry run", "failed")
"""What may become of a job (:class:`Outcome`)."""


@dataclass(frozen=True)
class RunOptions:
    """How to run: ``force`` even recorded jobs; ``dry_run`` (None: the ``DRY_RUN`` setting);
    ``verbose``: Dagster's console log on; ``batch_size`` jobs per Dagster run; ``summaries``: bring the
    summaries of the analyses that recorded a job up to date in this process too (the daemon's
    automation does it otherwise; off by default, as it costs a Dagster run per analysis)."""

    force: bool = False
    dry_run: bool | None = None
    verbose: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    summaries: bool = False


@dataclass(frozen=True)
class Outcome:
    """What became of one job (one of :data:`OUTCOMES`); ``detail`` says where or why (None: the job
    was found recorded before anything ran)."""

    job: AnalysisJob
    outcome: str
    detail: str | None = None


def registered_jobs(session: Session, analysis: str | None) -> tuple[list[AnalysisJob], list[Rejected]]:
    """Every registered job, rebuilt with the current analysis version (its fingerprint may change),
    and the entries that cannot be rebuilt any more."""
    jobs, broken = [], []
    for entry in session.store.list_jobs(analysis):
        spec = session.analyses.get(entry.analysis)
        if spec is None:
            continue
        try:
            jobs.append(job_of_entry(entry, spec))
        except (JobFileError, ValueError) as exc:
            broken.append(Rejected(entry.partition_key, str(exc)))
    return jobs, broken


def is_dry_run(session: Session, asked: bool | None) -> bool:
    """Whether a run is a dry run: ``asked`` (``--dry-run`` / ``--no-dry-run``), else ``DRY_RUN``."""
    return bool(session.resources["runtime"].dry_run if asked is None else asked)


def check_may_run(session: Session, options: RunOptions, analyses: Iterable[str]) -> None:
    """Fail fast, before any job runs, when the run would post from dirty code (every job of that
    analysis would fail); ``analyses`` are the names of the analyses the run's jobs are for."""
    runtime = session.resources["runtime"]
    dry_run = is_dry_run(session, options.dry_run)
    for name in sorted(analyses):
        check_may_post(runtime.code_state(session.analyses[name]), dry_run, runtime.allow_dirty)


def run_jobs(session: Session, jobs: Sequence[AnalysisJob], options: RunOptions) -> Iterator[Outcome]:
    """Run ``jobs`` (one per analysis and partition key), yielding each job's outcome as it is known:
    first the jobs found recorded (unless ``force``), then the others, by analysis, in batches."""
    recorded = recorded_jobs(session.store, session.analyses, jobs)
    due: dict[str, list[AnalysisJob]] = {}
    for job in jobs:
        if job.fingerprint in recorded and not options.force:
            by_capsule = recorded[job.fingerprint]
            yield Outcome(job, "already done", f"({by_capsule.describe()})" if by_capsule else None)
        else:
            due.setdefault(job.analysis, []).append(job)
    size = max(1, options.batch_size)
    recorded_now: set[str] = set()
    for name, of_analysis in due.items():
        for start in range(0, len(of_analysis), size):
            chunk = of_analysis[start : start + size]
            outcomes = _materialize(session, name, chunk, options)
            for job in chunk:
                outcome = Outcome(job, *outcomes[job.partition_key])
                if outcome.outcome == "done":
                    recorded_now.add(name)
                yield outcome
    if options.summaries:
        update_summaries(session, recorded_now, options.verbose)


def update_summaries(session: Session, analyses: Iterable[str], verbose: bool = False) -> None:
    """Materialize the ``<analysis>_summary`` of each of ``analyses`` in this process (it reads only
    the jobs new to it), so a summary exists as soon as a job is recorded, with no daemon running (the
    demo). A summary that fails is a warning: the jobs are recorded, and the summary's automation
    condition (or the next run) updates it."""
    for name in sorted(analyses):
        summary = session.built[name].summary
        if summary is None:
            continue
        # The job the daemon's automation runs it in (``__ASSET_JOB``), so the run looks the same.
        job_def = session.defs.resolve_implicit_job_def_def_for_assets([summary.key])
        assert job_def is not None, summary.key
        result = job_def.execute_in_process(
            instance=session.instance,
            asset_selection=[summary.key],
            run_config={"loggers": run_loggers(verbose)},
            tags={SOURCE_TAG: "cli", HOST_TAG: this_host(), PID_TAG: str(os.getpid()), ANALYSIS_TAG: name},
            raise_on_error=False,
        )
        if not result.success:
            reason, where = _root_failure(result), log_location(session.instance, result.run_id)
            log.warning("%s_summary was not updated: %s [%s]", name, reason, where)


def _materialize(
    session: Session, analysis: str, jobs: Sequence[AnalysisJob], options: RunOptions
) -> dict[str, tuple[str, str]]:
    """Run ``jobs`` of ``analysis`` in one in-process Dagster run; each job's outcome and detail."""
    spec, one = session.built[analysis].analysis, len(jobs) == 1
    if one:
        dry_run = {} if options.dry_run is None else {"dry_run": options.dry_run}
        run_config = {"ops": {spec.asset_name: {"config": {"force": options.force, **dry_run}}}}
    else:
        run_config = batch_run_config(spec, [j.partition_key for j in jobs], options.force, options.dry_run)
    run_id, ttl_s = str(uuid.uuid4()), session.resources["store"].lease_ttl_s
    tags = {SOURCE_TAG: "cli", HOST_TAG: this_host(), PID_TAG: str(os.getpid())}
    job_def = session.defs.resolve_job_def(spec.job_name if one else spec.batch_job_name)
    heartbeat(session.store, run_id, ttl_s)
    try:
        result = job_def.execute_in_process(
            instance=session.instance,
            partition_key=jobs[0].partition_key if one else None,
            run_config={**run_config, "loggers": run_loggers(options.verbose)},
            raise_on_error=False,
            run_id=run_id,
            tags=tags if one else {**tags, BATCH_SIZE_TAG: str(len(jobs))},
        )
    finally:
        _end_heartbeat(run_id, ttl_s)
    statuses = _statuses(result)
    outcomes: dict[str, tuple[str, str]] = {}
    for job in jobs:
        status, location = statuses.get(job.partition_key, ("", ""))
        if status == "recorded":
            outcomes[job.partition_key] = ("done", location)
        elif status.startswith("dry run"):
            outcomes[job.partition_key] = ("dry run", "(nothing posted; DRY_RUN=0 to post)")
        elif status.startswith("skipped"):
            outcomes[job.partition_key] = wait_for_other_run(session, job, status, options)
        else:
            reason = _failure_reason(session, analysis, job.partition_key, result)
            outcomes[job.partition_key] = ("failed", f"{reason} [{log_location(session.instance, run_id)}]")
    return outcomes


def _end_heartbeat(run_id: str, ttl_s: float) -> None:
    """Release the run's heartbeat lease; a store that does not answer now (locked, unreachable) does not
    stop the command: the lease expires by itself after ``ttl_s`` and this process is gone by then."""
    try:
        end_heartbeat(run_id)
    except StoreError as exc:
        log.warning(
            "run %s: its heartbeat lease was not released (%s); it expires in %.0f s", run_id, exc, ttl_s
        )


def run_loggers(verbose: bool) -> dict[str, Any]:
    """Run config of an in-process run's loggers: Dagster's console logger prints only under
    ``verbose``. Every event (stack traces included) is stored in the run's event log in the
    instance either way (the Dagster UI and :func:`log_location` show it)."""
    return {"console": {"config": {"log_level": "DEBUG" if verbose else "CRITICAL"}}}


def log_location(instance: DagsterInstance, run_id: str) -> str:
    """Where the full log of run ``run_id`` is: its run page in the Dagster UI (``dagster dev`` on the
    same DAGSTER_HOME) and, for local compute logs, the folder of its captured output."""
    where = f"full log: Dagster run {run_id}, UI /runs/{run_id}"
    folder = Path(instance.storage_directory()) / run_id / "compute_logs"
    return f"{where}, output {folder}" if folder.is_dir() else where


def _failure_reason(session: Session, analysis: str, key: str, result: ExecuteInProcessResult) -> str:
    """Why ``key`` failed in ``result``'s run: its registry entry's error when this run wrote it, else
    the run's root cause. A job the run left ``running`` (its failure could not be written, e.g. the
    store was locked) is failed now, through the lifecycle, with that cause; if the store still does not
    answer, the line says so and the inbox sensor's lost-run check fails it later."""
    cause = _root_failure(result)
    try:
        entry = session.store.get_job(analysis, key)
        if entry is not None and entry.run_id == result.run_id:
            if entry.state == JobState.RUNNING:
                JobLifecycle(session.store).failed(analysis, key, result.run_id, cause)
                return cause
            if entry.last_error:
                return one_line(entry.last_error)
    except StoreError as exc:
        return (
            f"{cause}; the job could not be marked failed ({exc}): once the store answers, the inbox "
            "sensor fails it as lost (or `analysis-wrapper retry` re-queues it)"
        )
    return cause


def _root_failure(result: ExecuteInProcessResult) -> str:
    """The root cause of the first failed step of ``result``'s run (else of the run), in one line."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            return error_line(event.step_failure_data.error)
    for event in result.all_events:
        if event.is_run_failure and event.job_failure_data and event.job_failure_data.error:
            return error_line(event.job_failure_data.error)
    return "run failed (see the Dagster run log)"


def error_line(error: Any) -> str:
    """The root cause of a Dagster error (a ``SerializableErrorInfo``) in one line: the innermost
    ``cause`` (Dagster wraps a failing IO manager in DagsterExecutionHandleOutputError, a failing step
    in DagsterExecutionStepExecutionError), as ``ClassName: message`` (:func:`one_line`)."""
    while error.cause is not None:
        error = error.cause
    text = (error.message or "").strip()
    head, sep, rest = text.partition(": ")
    if sep and head.rsplit(".", 1)[-1] == error.cls_name:  # "module.Class: message"
        text = f"{error.cls_name}: {rest}"
    elif error.cls_name and not text.startswith(error.cls_name):
        text = f"{error.cls_name}: {text}"
    return one_line(text) if text else (error.cls_name or "unknown error")


def _statuses(result: ExecuteInProcessResult) -> dict[str, tuple[str, str]]:
    """Per partition, the ``status`` and results location of its materialization in ``result``."""
    found: dict[str, tuple[str, str]] = {}
    for event in result.all_events:
        if event.is_step_materialization:
            materialization: Any = event.step_materialization_data.materialization
        elif event.is_asset_observation:  # a skip or a dry run: reported as an observation
            materialization = event.asset_observation_data.asset_observation
        else:
            continue
        status = materialization.metadata.get("status")
        location = materialization.metadata.get(LOCATION_METADATA_KEY)
        found[str(materialization.partition)] = (
            str(getattr(status, "value", status) or ""),
            str(getattr(location, "value", location) or ""),
        )
    return found


def wait_for_other_run(
    session: Session, job: AnalysisJob, status: str, options: RunOptions
) -> tuple[str, str]:
    """A job skipped because another run holds its fingerprint: wait while that run's claim lives,
    then say whether it was recorded (by whom) or not.

    Without ``force`` a record ends the wait (the other run committed it). Under ``force`` the record
    being replaced is there all along: the wait lasts while a claim lives, and only a record of a run
    seen holding the claim counts. The record is read once the claim is gone (a run commits before it
    releases), so a record committed just before the release is not missed."""
    store, force = session.store, options.force
    holders: set[str] = set()
    if "being computed" in status:
        key = fingerprint_key(job.fingerprint, dry_run=is_dry_run(session, options.dry_run))
        holders.add(status.rsplit(" ", 1)[-1])
        while force or not store.existing_fingerprints(job.analysis, [job.fingerprint]):
            lease = store.get_leases([key]).get(key)
            if lease is None or lease_dead(lease):
                break
            holders.add(lease.run_id)
            time.sleep(0.2)
    record = store.get_record(job.analysis, job.fingerprint)
    by = str((record or {}).get("analysis_wrapper", {}).get("run_id", "?"))
    if record is None or (force and holders and by not in holders):
        ended = "; that run ended without a record (it is retried there)" if holders else ""
        return ("elsewhere", f"{status}{ended}")
    return ("already done", f"{record.get('location')} (recorded by run {by[:8]})")
