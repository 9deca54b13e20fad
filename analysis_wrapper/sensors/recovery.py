"""Recovery of lost runs: runs that died without anyone marking them, and jobs that lost their run.

Dagster's run monitoring cannot see a run of its default run launcher die, nor an in-process run of
the CLI; so the inbox sensor asks, each tick, of every in-progress run of its analysis:

* does the run's heartbeat lease (``run:<run id>``, :mod:`analysis_wrapper.ownership`) still live?
  Expired, or held by a process of this host that is gone: the run is dead, wherever it ran;
* for a CLI run without a lease yet: is its process (host and pid tags) gone from this host?
* for a run launched by a code server (the ``dagster/grpc_info`` tag), older than
  ``SENSOR_AUDIT_AFTER_S``: does that code server still answer? A refused connection means it and
  its child run workers are gone. A code server that answers may be a new one on the same address
  (restarted by its supervisor, or a Kubernetes service's new pod), so a started run that holds no
  lease and has logged nothing for ``SILENT_LEASES`` lease lifetimes is gone too: a live run worker
  takes its lease as soon as its step starts and holds it until the step ends.

A dead run is marked failed in Dagster (so it frees its slot of the run queue) and its jobs follow
(:func:`~analysis_wrapper.sensors.runs.apply_run_end_to_jobs`). Then a few queued/running jobs
unchanged for ``SENSOR_AUDIT_AFTER_S`` are checked against their run (:meth:`Recovery.audit_in_flight`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

import grpc
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunRecord, RunsFilter
from grpc_health.v1.health_pb2 import HealthCheckRequest
from grpc_health.v1.health_pb2_grpc import HealthStub

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.batch import batch_keys
from analysis_wrapper.lifecycle import JobLifecycle
from analysis_wrapper.ownership import lease_dead, pid_alive, run_lease_key, this_host
from analysis_wrapper.sensors.runs import (
    UNFINISHED_RUN,
    apply_run_end,
    apply_run_end_to_jobs,
    attempt_of,
    run_error,
)
from analysis_wrapper.settings import SensorSettings
from analysis_wrapper.store.base import JobEntry, JobState, Store
from analysis_wrapper.tags import (
    ANALYSIS_TAG,
    FINGERPRINT_TAG,
    GRPC_INFO_TAG,
    HOST_TAG,
    PARTITION_TAG,
    PID_TAG,
)

log = logging.getLogger(__name__)

AUDIT_LIMIT = 100
"""In-progress runs one tick checks, and queued/running jobs one tick audits."""
BATCHES_AUDITED = 1000
"""Unfinished batch runs one audit reads (their keys are the queued jobs that still have a run)."""
IN_FLIGHT = (JobState.QUEUED, JobState.RUNNING)
SILENT_LEASES = 3
"""A started run with no heartbeat lease that logged nothing for this many lease lifetimes is dead."""


def code_server_gone(run: DagsterRun, timeout_s: int = 5) -> str | None:
    """Why the code server that launched ``run`` is certainly gone, or None when it may be alive.

    Runs of Dagster's default run launcher are child processes of that code server (the run's
    ``dagster/grpc_info`` tag). It is asked through the standard gRPC health service, which Dagster's
    code server serves (as ``DagsterApi``). Only a refused connection counts (no server there); a slow
    or busy server does not. Runs of other launchers carry no such tag and are left to run monitoring.
    """
    info_text = run.tags.get(GRPC_INFO_TAG)
    if not info_text:
        return None
    try:
        info = json.loads(info_text)
        socket = info.get("socket")
        address = (
            f"unix:{os.path.abspath(socket)}"
            if socket
            else f"{info.get('host', 'localhost')}:{int(info['port'])}"
        )
        use_ssl = bool(info.get("use_ssl", False))
    except Exception:  # an unexpected tag: leave the run to run monitoring
        log.debug("cannot read grpc_info %r", info_text, exc_info=True)
        return None
    channel = (
        grpc.secure_channel(address, grpc.ssl_channel_credentials())
        if use_ssl
        else grpc.insecure_channel(address)
    )
    try:
        with channel:
            HealthStub(channel).Check(HealthCheckRequest(service="DagsterApi"), timeout=timeout_s)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
            log.debug("code server %s did not answer, but may be alive", info_text, exc_info=True)
            return None
        return (
            f"its run worker is gone: the code server that launched it ({info_text[:200]}) is not "
            "running any more"
        )
    return None


def cli_process_gone(run: DagsterRun) -> str | None:
    """Why the in-process (CLI) run ``run`` is certainly gone: its process left this host's table."""
    host, pid_text = run.tags.get(HOST_TAG), run.tags.get(PID_TAG)
    if host != this_host() or not (pid_text or "").isdigit():
        return None
    if pid_alive(int(pid_text or 0)):
        return None
    return f"its process (pid {pid_text} on {host}, an in-process run of the CLI) is gone"


@dataclass
class Recovery:
    """One tick's recovery work for one analysis; counts go into the tick's summary."""

    analysis: Analysis[Any, Any]
    store: Store
    instance: DagsterInstance
    config: SensorSettings
    now: dt.datetime
    counts: Counter[str]
    logger: Any = log

    @property
    def name(self) -> str:
        return self.analysis.name

    def sweep_lost_runs(self) -> None:
        """Fail the in-progress runs of this analysis that are dead (whatever their job's state: a run
        killed after its record was written still holds a slot of the run queue)."""
        in_progress = self.instance.get_run_records(
            RunsFilter(
                tags={ANALYSIS_TAG: self.name},
                statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED],
            ),
            limit=AUDIT_LIMIT,
        )
        if not in_progress:
            return
        leases = self.store.get_leases(run_lease_key(r.dagster_run.run_id) for r in in_progress)
        quiet_since = self.now - dt.timedelta(seconds=self.config.audit_after_s)
        verdicts: dict[str, str | None] = {}  # one ping per code server per tick
        lost: list[tuple[DagsterRun, str]] = []
        for record in in_progress:
            run = record.dagster_run
            lease = leases.get(run_lease_key(run.run_id))
            if lease is not None:
                reason = lease_dead(lease, self.now)
            else:
                reason = cli_process_gone(run)
                info = run.tags.get(GRPC_INFO_TAG)
                if reason is None and info and record.update_timestamp.timestamp() < quiet_since.timestamp():
                    if info not in verdicts:
                        verdicts[info] = code_server_gone(run)
                    reason = verdicts[info] or self._silent_without_lease(record)
            if reason is not None:
                message = f"Run {run.run_id} of {self.name} is lost: {reason}."
                self.logger.warning(message)
                self.instance.report_run_failed(run, message)
                lost.append((run, f"run {run.run_id}: {reason}"))
        for run, error in lost:
            self.counts["recovered"] += apply_run_end_to_jobs(self.store, self.name, run, error)
        self.counts["lost runs failed"] += len(lost)

    def _silent_without_lease(self, record: RunRecord) -> str | None:
        """Why the started run of ``record``, which holds no heartbeat lease, is dead: it logged nothing
        for :data:`SILENT_LEASES` lease lifetimes (at least ``SENSOR_AUDIT_AFTER_S``); None if it may live."""
        run = record.dagster_run
        if run.status != DagsterRunStatus.STARTED:
            return None  # still being launched: Dagster's run monitoring bounds that (start_timeout_seconds)
        silent_s = max(SILENT_LEASES * self.config.lease_ttl_s, self.config.audit_after_s)
        if record.update_timestamp.timestamp() > self.now.timestamp() - silent_s:
            return None  # it started within that time (its last event is newer still): no query needed
        last = self.instance.get_records_for_run(run.run_id, ascending=False, limit=1).records
        last_seen = last[0].timestamp if last else record.update_timestamp.timestamp()
        if last_seen > self.now.timestamp() - silent_s:
            return None
        return (
            f"it holds no heartbeat lease and has logged nothing for {silent_s:.0f} s (its run worker is "
            "gone, though a code server answers on the address that launched it)"
        )

    def audit_in_flight(self) -> None:
        """Queued/running jobs unchanged for a while, checked against their run: one that ended
        without the job hearing of it, or never came to be."""
        stale = self.store.find_jobs(
            self.name,
            states=IN_FLIGHT,
            updated_before=self.now - dt.timedelta(seconds=self.config.audit_after_s),
            order="updated",
            limit=AUDIT_LIMIT,
        )
        if not stale:
            return
        fingerprints = [e.fingerprint for e in stale]
        run_ids = [e.run_id for e in stale if e.run_id]
        records: dict[str, RunRecord] = {}
        for filters in (
            RunsFilter(tags={FINGERPRINT_TAG: fingerprints}),
            RunsFilter(run_ids=run_ids) if run_ids else None,
        ):
            if filters is not None:
                for record in self.instance.get_run_records(filters=filters):
                    records[record.dagster_run.run_id] = record
        by_attempt: dict[tuple[str, int | None], RunRecord] = {}
        for record in sorted(records.values(), key=lambda r: r.create_timestamp):
            tags = record.dagster_run.tags
            if tags.get(PARTITION_TAG):
                by_attempt[(tags[PARTITION_TAG], attempt_of(tags))] = record
        recorded = self.store.existing_fingerprints(self.name, fingerprints)
        batched: set[str] | None = None  # keys of unfinished batch runs, read when first needed
        for entry in stale:
            found = (
                records.get(entry.run_id)
                if entry.state == JobState.RUNNING and entry.run_id
                else by_attempt.get((entry.partition_key, entry.attempts + 1))
            )
            if found is None and entry.state == JobState.QUEUED:
                if batched is None:
                    batched = self._keys_in_unfinished_batches()
                if entry.partition_key in batched:
                    continue  # its batch run is queued or under way
            self._audit_one(entry, found, entry.fingerprint in recorded)

    def _keys_in_unfinished_batches(self) -> set[str]:
        runs = self.instance.get_runs(
            RunsFilter(job_name=self.analysis.batch_job_name, statuses=UNFINISHED_RUN), limit=BATCHES_AUDITED
        )
        return {key for run in runs for key in batch_keys(run) or []}

    def _audit_one(self, entry: JobEntry, record: RunRecord | None, recorded: bool) -> None:
        lifecycle = JobLifecycle(self.store)
        if recorded:
            if lifecycle.found_recorded(self.name, entry.partition_key, entry.fingerprint):
                self.counts["recovered"] += 1
            return
        if record is None:
            # Queued, but its run never came to be (or was deleted): request it again.
            if entry.state == JobState.QUEUED and lifecycle.sent_back([entry]):
                self.counts["recovered"] += 1
            return
        run = record.dagster_run
        if run.status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
            verb = "failed" if run.status == DagsterRunStatus.FAILURE else "was canceled"
            error = run_error(self.instance, run.run_id, f"the run {verb}")
            if apply_run_end(self.store, entry, run.run_id, run.tags, error):
                self.counts["recovered"] += 1
        elif run.status == DagsterRunStatus.SUCCESS and lifecycle.sent_back([entry]):
            # Succeeded without a record and without telling the registry: due again.
            self.counts["recovered"] += 1
        # Still queued or in progress: fine (runs that are dead were failed by sweep_lost_runs).
