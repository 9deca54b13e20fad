"""What the sensors know about Dagster runs of an analysis, and what a run's end means for its jobs.

A run of one partition carries the fingerprint and attempt it computes (tags); a batch run carries
its partition keys in its run config. :func:`apply_run_end` turns "run X failed / was canceled /
died" into the lifecycle's ``run lost`` (or ``found recorded``) for the jobs it held, when that is
news; stale events never undo newer state.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence

from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus

from analysis_wrapper.batch import batch_keys
from analysis_wrapper.errors import one_line
from analysis_wrapper.lifecycle import JobLifecycle
from analysis_wrapper.store.base import JobEntry, JobState, Store
from analysis_wrapper.tags import ATTEMPT_TAG, FINGERPRINT_TAG, PARTITION_TAG

log = logging.getLogger(__name__)

UNFINISHED_RUN = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]
FINISHED = (JobState.DONE, JobState.SKIPPED, JobState.DRY_RUN)


def run_key(fingerprint: str, attempt: int) -> str:
    """A new key per attempt: Dagster dedupes run keys per sensor forever."""
    return f"{fingerprint}:{attempt}"


def batch_run_key(entries: Sequence[JobEntry]) -> str:
    """A batch's run key: its jobs, their attempts and when each last changed state. A tick evaluated
    again after a crash sees the same jobs unchanged and gets the same key (Dagster dedupes it); jobs
    sent back to ``pending`` by the audit or a retry changed, so their next batch gets a new key
    (Dagster never runs a sensor's run key twice)."""
    text = "\n".join(f"{e.fingerprint}:{e.attempts + 1}:{e.updated_at.isoformat()}" for e in entries)
    return "batch:" + hashlib.sha256(text.encode()).hexdigest()[:40]


def attempt_of(run_tags: Mapping[str, str]) -> int | None:
    try:
        return int(run_tags[ATTEMPT_TAG])
    except (KeyError, ValueError):
        return None


def run_partition_keys(run: DagsterRun) -> list[str]:
    """The partitions a run of an analysis works on: a batch's keys, or the run's partition."""
    keys = batch_keys(run)
    if keys is not None:
        return keys
    key = run.tags.get(PARTITION_TAG)
    return [key] if key else []


def apply_run_end(store: Store, entry: JobEntry, run_id: str, tags: Mapping[str, str], error: str) -> bool:
    """Record that run ``run_id`` of ``entry``'s job failed, was canceled or died, when that is news.

    The asset marks the failures it sees itself; a run can also die before the asset starts (launch
    failure, bad config), or with it (worker killed). A job that finished, was re-registered (other
    fingerprint), or moved on to a later attempt is left alone. A job whose fingerprint is recorded
    (killed after its commit) is done. Returns True when the job was marked failed.
    """
    fingerprint = tags.get(FINGERPRINT_TAG)
    if fingerprint is not None and fingerprint != entry.fingerprint:
        return False
    attempt = attempt_of(tags)
    if entry.state in FINISHED or entry.state == JobState.FAILED:
        return False
    if entry.state == JobState.RUNNING and entry.run_id != run_id:
        return False
    if entry.state in (JobState.PENDING, JobState.QUEUED) and not (attempt and entry.attempts < attempt):
        return False  # only the failure of the attempt it waits for is news
    lifecycle = JobLifecycle(store)
    if store.existing_fingerprints(entry.analysis, [entry.fingerprint]):
        lifecycle.found_recorded(entry.analysis, entry.partition_key, entry.fingerprint, run_id)
        return False
    return lifecycle.run_lost(entry, run_id, error, attempt)


def apply_run_end_to_jobs(store: Store, analysis: str, run: DagsterRun, error: str) -> int:
    """:func:`apply_run_end` for every job of the failed or canceled ``run``; how many were marked
    failed. In a batch only the job the run was working on is news: the others are finished, failed
    already, or still queued (the audit gives those back to the sensor once no run holds them)."""
    keys = run_partition_keys(run)
    entries = store.get_jobs(analysis, keys) if keys else {}
    return sum(apply_run_end(store, entry, run.run_id, run.tags, error) for entry in entries.values())


def run_error(instance: DagsterInstance, run_id: str, fallback: str) -> str:
    """The first step failure of a run, else ``fallback`` (the run failure's own message)."""
    try:
        for record in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
            event = record.dagster_event
            data = event.step_failure_data if event else None
            if data and data.error:
                return f"run {run_id}: {one_line(data.error.message)}"
    except Exception:  # the message is a courtesy; never fail a tick over it
        log.debug("cannot read the step failures of run %s", run_id, exc_info=True)
    return f"run {run_id}: {fallback}"
