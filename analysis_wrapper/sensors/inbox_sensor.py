"""The inbox sensor of one analysis (``<analysis>_inbox_sensor``): each tick, every step bounded
whatever the registry holds:

1. marks the runs requested by the previous tick ``queued`` (the cursor names them: a tick's run
   requests exist in Dagster once its cursor is stored, so a crash between the two leaves the jobs
   ``pending`` and the next tick re-requests them under the same run keys, which Dagster dedupes);
2. reads new inbox files into registered jobs (:mod:`~analysis_wrapper.sensors.intake`);
3. after a new analysis version (``RERUN_ON_NEW_VERSION``), walks one page of the registry by partition
   key and re-registers the jobs whose fingerprint changed (they become ``pending``);
4. sends failed jobs whose retry is due (``attempts < MAX_ATTEMPTS``, ``RETRY_DELAY_S * 2**(attempts-1)``
   after their last failure; one indexed query per attempt count) back to ``pending``;
5. fails the lost runs of its analysis and audits jobs that lost their run
   (:mod:`~analysis_wrapper.sensors.recovery`);
6. requests runs for the oldest ``pending`` jobs without a record (one ``LIMIT`` query), at most
   ``SENSOR_MAX_RUNS_PER_TICK`` and never more than ``SENSOR_MAX_QUEUED_RUNS`` waiting in Dagster's queue:
   the backlog stays in the registry, not in the run queue. ``run_key`` = ``<fingerprint>:<attempt>``
   for one job, ``batch:<hash>`` for a batch.

Every state change goes through :class:`~analysis_wrapper.lifecycle.JobLifecycle`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    MAX_RUNTIME_SECONDS_TAG,
    DagsterInstance,
    DagsterRunStatus,
    DynamicPartitionsDefinition,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)
from dagster_aws.s3 import S3Resource

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.batch import batch_run_config
from analysis_wrapper.factory import AnalysisDefinitions
from analysis_wrapper.inbox import Inbox, open_inbox
from analysis_wrapper.job_file import JobFileError
from analysis_wrapper.lifecycle import JobLifecycle
from analysis_wrapper.partition_run import job_of_entry
from analysis_wrapper.registration import PARTITION_BATCH_SIZE, entry_for
from analysis_wrapper.resources.record_store import StoreResource
from analysis_wrapper.sensors.intake import Intake
from analysis_wrapper.sensors.recovery import Recovery
from analysis_wrapper.sensors.runs import batch_run_key, run_key
from analysis_wrapper.settings import SensorSettings
from analysis_wrapper.store.base import JobEntry, JobState, Store, utcnow
from analysis_wrapper.tags import ANALYSIS_TAG, ATTEMPT_TAG, BATCH_SIZE_TAG, FINGERPRINT_TAG, SOURCE_TAG

log = logging.getLogger(__name__)


@dataclass
class InboxCursor:
    """The inbox sensor's cursor: small, whatever the inbox or registry holds."""

    last_tick: str = ""
    """What the last tick did (its summary): first in the cursor, which the UI shows in full on the
    sensor's page and at the start of each tick's row, so it is read without hovering. Never read back."""
    requested: list[str] = field(default_factory=list)
    """Partition keys the last tick requested runs for; the next tick marks them queued."""
    version: str | None = None
    """The analysis version the registry was last reconciled with."""
    reconcile_after: str | None = None
    """Where the walk after a version change stopped (a partition key); None: no walk under way."""

    @classmethod
    def parse(cls, text: str | None) -> InboxCursor:
        if not text:
            return cls()
        try:
            data = json.loads(text)
            return cls(
                requested=[str(k) for k in data.get("requested", [])],
                version=data.get("version"),
                reconcile_after=data.get("reconcile_after"),
            )
        except (ValueError, AttributeError, TypeError):
            log.warning("unreadable inbox sensor cursor %r: starting afresh", text[:200])
            return cls()

    def dump(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))


def add_requests(partitions: DynamicPartitionsDefinition, keys: Iterable[str]) -> list[Any]:
    unique = list(dict.fromkeys(keys))
    return [
        partitions.build_add_request(unique[start : start + PARTITION_BATCH_SIZE])
        for start in range(0, len(unique), PARTITION_BATCH_SIZE)
    ]


@dataclass
class Tick:
    """Everything one inbox tick needs; :meth:`run` does the work and returns the sensor result."""

    analysis: Analysis[Any, Any]
    partitions: DynamicPartitionsDefinition
    served: Mapping[str, Analysis[Any, Any]]
    store: Store
    inbox: Inbox
    instance: DagsterInstance
    config: SensorSettings
    cursor: InboxCursor
    logger: Any = log
    counts: Counter[str] = field(default_factory=Counter)
    add_keys: list[str] = field(default_factory=list)
    now: dt.datetime = field(default_factory=lambda: utcnow())

    @property
    def name(self) -> str:
        return self.analysis.name

    @property
    def lifecycle(self) -> JobLifecycle:
        return JobLifecycle(self.store)

    # 1 -------------------------------------------------------------------------------------------
    def mark_requested_queued(self) -> None:
        if self.cursor.requested:
            self.lifecycle.requested(self.name, self.cursor.requested)
        self.cursor.requested = []

    # 3 -------------------------------------------------------------------------------------------
    def reconcile_version(self) -> None:
        if not self.config.rerun_on_new_version or self.cursor.version == self.analysis.version:
            return
        page = self.store.find_jobs(
            self.name,
            limit=self.config.reconcile_page,
            order="key",
            after_key=self.cursor.reconcile_after or "",
        )
        changed: list[tuple[JobEntry, JobEntry]] = []
        for entry in page:
            try:
                job = job_of_entry(entry, self.analysis)
            except (JobFileError, ValueError) as exc:
                reason = f"cannot be built with {self.name} {self.analysis.version}: {exc}"
                self.lifecycle.refused(entry, "", reason)
                continue
            if job.fingerprint != entry.fingerprint:
                changed.append((entry, entry_for(job)))
        if changed:
            self.counts["new version"] += self.lifecycle.reregister_many(changed)
        if len(page) < self.config.reconcile_page:
            self.cursor.version = self.analysis.version
            self.cursor.reconcile_after = None
        else:
            self.cursor.reconcile_after = page[-1].partition_key

    # 4 -------------------------------------------------------------------------------------------
    def schedule_retries(self) -> None:
        due: list[JobEntry] = []
        for attempts in range(self.config.max_attempts):
            due.extend(
                entry
                for entry in self.store.find_jobs(
                    self.name,
                    states=[JobState.FAILED],
                    attempts=attempts,
                    updated_before=self.now - self.config.retry_delay(attempts),
                    order="updated",
                    limit=self.config.max_runs_per_tick,
                )
            )
        if due:
            self.counts["retried"] += self.lifecycle.retry_due(due)

    # 5 -------------------------------------------------------------------------------------------
    def request_runs(self) -> list[RunRequest]:
        budget = self.config.max_runs_per_tick
        if self.config.max_queued_runs:
            waiting = self.instance.get_runs_count(
                RunsFilter(
                    tags={ANALYSIS_TAG: self.name},
                    statuses=[DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED],
                )
            )
            budget = min(budget, self.config.max_queued_runs - waiting)
            if budget <= 0:
                self.counts["held back (queue full)"] += 1
        if budget <= 0:
            return []
        size = max(1, self.config.batch_size)
        wanted = budget * size
        # A little more than the budget: jobs recorded meanwhile (e.g. by a CLI run) drop out.
        page = self.store.find_jobs(self.name, states=[JobState.PENDING], limit=wanted + 20, order="created")
        recorded = self.store.existing_fingerprints(self.name, [e.fingerprint for e in page])
        done = [(e.partition_key, e.fingerprint) for e in page if e.fingerprint in recorded]
        if done:
            self.lifecycle.already_recorded(self.name, done)
        chosen = [e for e in page if e.fingerprint not in recorded][:wanted]
        if len(page) > wanted and len(chosen) == wanted:
            self.counts["backlog"] += 1
        # As few runs as batches of `size` need, but one per run slot at the least, the jobs shared
        # evenly between them (two slots, batches of 250: 500 jobs make two runs of 250, which end
        # together; 150 jobs two of 75; 3 jobs two, of 2 and 1): every slot busy, no half-empty wave.
        runs = max(-(-len(chosen) // size), min(self.config.run_slots, len(chosen)))
        small, extra = divmod(len(chosen), max(runs, 1))
        bounds = list(itertools.accumulate([0] + [small + (i < extra) for i in range(runs)]))
        requests = [
            self._single_request(group[0]) if len(group) == 1 else self._batch_request(group)
            for group in (chosen[start:end] for start, end in itertools.pairwise(bounds))
        ]
        self.cursor.requested = [e.partition_key for e in chosen]
        self.add_keys.extend(self.cursor.requested)
        self.counts["requested"] += len(chosen)
        if len(requests) < len(chosen):
            self.counts["runs"] += len(requests)
        return requests

    def _run_tags(self, runtime_jobs: int) -> dict[str, str]:
        tags = {ANALYSIS_TAG: self.name, SOURCE_TAG: "sensor"}
        if self.config.run_max_runtime_s:
            tags[MAX_RUNTIME_SECONDS_TAG] = str(self.config.run_max_runtime_s * runtime_jobs)
        return tags

    def _single_request(self, entry: JobEntry) -> RunRequest:
        """One job, one run of the result asset's partition (its own run page, logs and retries)."""
        attempt = entry.attempts + 1
        tags = {**self._run_tags(1), FINGERPRINT_TAG: entry.fingerprint, ATTEMPT_TAG: str(attempt)}
        return RunRequest(
            run_key=run_key(entry.fingerprint, attempt),
            job_name=self.analysis.job_name,
            partition_key=entry.partition_key,
            tags=tags,
        )

    def _batch_request(self, entries: Sequence[JobEntry]) -> RunRequest:
        """Several jobs, one batch run (see :mod:`analysis_wrapper.batch`)."""
        return RunRequest(
            run_key=batch_run_key(entries),
            job_name=self.analysis.batch_job_name,
            run_config=batch_run_config(self.analysis, [e.partition_key for e in entries]),
            tags={**self._run_tags(len(entries)), BATCH_SIZE_TAG: str(len(entries))},
        )

    def summary(self) -> str:
        c = self.counts
        text = (
            f"{self.name}: {c['new']} new file(s), {c['rejected']} rejected, "
            f"{c['already done']} already done, {c['registered']} registered, {c['requested']} requested"
        )
        if c["runs"]:
            text += f" in {c['runs']} run(s)"
        extras = [
            f"{c[k]} {k}"
            for k in (
                "known",
                "routed",
                "deferred",
                "unreadable",
                "unmovable",
                "rewritten while read",
                "left for next tick",
                "retried",
                "new version",
                "recovered",
                "lost runs failed",
            )
            if c[k]
        ]
        if c["backlog"]:
            extras.append("more pending jobs wait for later ticks")
        if c["held back (queue full)"]:
            extras.append(f"none requested: {self.config.max_queued_runs} runs already queued")
        if self.cursor.reconcile_after is not None:
            extras.append(f"version {self.analysis.version}: registry walk at {self.cursor.reconcile_after}")
        return text + (f" ({'; '.join(extras)})" if extras else "")

    def run(self) -> SensorResult:
        deadline = time.monotonic() + self.config.tick_budget_s
        self.mark_requested_queued()
        intake = Intake(
            self.analysis,
            self.served,
            self.store,
            self.inbox,
            self.config,
            self.counts,
            self.logger,
            self.add_keys,
        )
        intake.read(deadline)
        self.reconcile_version()
        self.schedule_retries()
        recovery = Recovery(
            self.analysis, self.store, self.instance, self.config, self.now, self.counts, self.logger
        )
        recovery.sweep_lost_runs()
        recovery.audit_in_flight()
        requests = self.request_runs()
        summary = self.summary()
        self.cursor.last_tick = summary
        if requests or any(self.counts.values()):  # a quiet tick says it in its skip reason only
            self.logger.info(summary)
        return SensorResult(
            run_requests=requests,
            skip_reason=None if requests else summary,
            cursor=self.cursor.dump(),
            dynamic_partitions_requests=add_requests(self.partitions, self.add_keys),
        )


def build_inbox_sensor(
    definitions: AnalysisDefinitions,
    served: Mapping[str, Analysis[Any, Any]],
    config: SensorSettings,
) -> SensorDefinition:
    """The inbox sensor of one analysis."""
    analysis = definitions.analysis

    @sensor(
        name=analysis.sensor_name,
        jobs=[definitions.job, definitions.batch_job],
        minimum_interval_seconds=config.interval_s,
        default_status=config.default_status,
        description=(
            f"Registers {analysis.name} job files dropped into the dispatch inbox ({config.inbox}) as "
            f"partitions and requests a run for every job not yet recorded (at most "
            f"{config.max_runs_per_tick} per tick, {config.batch_size} job(s) per run), retrying failures "
            f"up to {config.max_attempts} times."
        ),
    )
    def inbox_sensor(context: SensorEvaluationContext, store: StoreResource, s3: S3Resource) -> SensorResult:
        tick = Tick(
            analysis=analysis,
            partitions=definitions.partitions,
            served=served,
            store=store.get_store(),
            inbox=open_inbox(config.inbox, s3.get_client, config.max_job_file_bytes),
            instance=context.instance,
            config=config,
            cursor=InboxCursor.parse(context.cursor),
            logger=context.log,
        )
        return tick.run()

    return inbox_sensor
