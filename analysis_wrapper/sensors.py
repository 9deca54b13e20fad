"""Sensor-driven automatic runs: one inbox sensor per analysis, and one sensor that follows run events.

**Inbox sensor** (``<analysis>_inbox_sensor``), each tick, every step bounded whatever the registry holds:

1. marks the runs requested by the previous tick ``queued`` (the cursor names them: a tick's run
   requests exist in Dagster once its cursor is stored, so a crash between the two leaves the jobs
   ``pending`` and the next tick re-requests them under the same run keys, which Dagster dedupes);
2. reads at most ``SENSOR_MAX_FILES_PER_TICK`` new files of its analysis (``<inbox>/<analysis>/`` and
   the top level; see :mod:`analysis_wrapper.inbox`), rejects bad ones into ``rejected/`` with their
   reason, hands top-level files of other analyses to their folder, registers the rest in one batch
   (``register_jobs``, one ``existing_fingerprints``), moves their files to ``registered/`` and adds
   their partitions (``SensorResult`` add requests of at most 1,000 keys);
3. after a new analysis version (``RERUN_ON_NEW_VERSION``), walks one page of the registry by partition
   key and re-registers the jobs whose fingerprint changed (they become ``pending``);
4. moves failed jobs whose retry is due (``attempts < MAX_ATTEMPTS``, ``RETRY_DELAY_S * 2**(attempts-1)``
   after their last failure; one indexed query per attempt count) back to ``pending``;
5. fails the in-progress runs of its job whose run worker is gone (the code server that launched them
   no longer answers, e.g. after ``kill -9`` of ``dagster dev``: Dagster's run monitoring cannot see
   that for its default run launcher) and their jobs; then checks a few queued/running jobs unchanged
   for ``SENSOR_AUDIT_AFTER_S`` against their run (one that ended without the job hearing of it);
6. requests runs for the oldest ``pending`` jobs without a record (one ``LIMIT`` query), at most
   ``SENSOR_MAX_RUNS_PER_TICK`` and never more than ``SENSOR_MAX_QUEUED_RUNS`` waiting in Dagster's queue:
   the backlog stays in the registry, not in the run queue. ``run_key`` = ``<fingerprint>:<attempt>``.

**Run events sensor** (``analysis_wrapper_run_events``): reads run failure and cancel events after its
cursor and marks the job ``failed`` with the error, when the event is news to the registry (the asset
already marks the failures it sees; this catches runs that die before or around it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)
from dagster._core.event_api import RunStatusChangeRecordsFilter
from dagster._core.storage.dagster_run import DagsterRun, RunRecord
from dagster._core.storage.tags import GRPC_INFO_TAG, MAX_RUNTIME_SECONDS_TAG, PARTITION_NAME_TAG
from dagster_aws.s3 import S3Resource

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.batch import batch_keys, batch_run_config
from analysis_wrapper.dispatch import (
    AnalysisJob,
    DispatchJob,
    JobFileError,
    build_analysis_job,
    parse_job_text,
    resolve_relative_locations,
    select_analysis,
)
from analysis_wrapper.factory import AnalysisDefinitions
from analysis_wrapper.inbox import RESERVED_FOLDERS, Inbox, InboxFile, open_inbox
from analysis_wrapper.registration import PARTITION_BATCH_SIZE, entry_for
from analysis_wrapper.resources.records import RecordStoreResource
from analysis_wrapper.resources.store_base import JobEntry, JobState, RecordStore, utcnow
from analysis_wrapper.settings import Settings
from analysis_wrapper.tags import ANALYSIS_TAG, ATTEMPT_TAG, BATCH_SIZE_TAG, FINGERPRINT_TAG, SOURCE_TAG

log = logging.getLogger(__name__)

RUN_EVENTS_SENSOR_NAME = "analysis_wrapper_run_events"
RECONCILE_PAGE = 5000
"""Registry jobs one tick re-fingerprints after a version change (about 0.3 s)."""
AUDIT_LIMIT = 100
"""Queued/running jobs one tick checks against their runs."""
RUN_EVENTS_PER_TICK = 500
RUN_EVENTS_LOOKBACK_S = 24 * 3600
"""On its first tick the run events sensor reads the last day's events (handling them is idempotent)."""
IN_FLIGHT = (JobState.QUEUED, JobState.RUNNING)
UNFINISHED_RUN = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]
BATCHES_AUDITED = 1000
"""Unfinished batch runs one audit reads (their keys are the queued jobs that still have a run)."""
FINISHED = (JobState.DONE, JobState.SKIPPED, JobState.DRY_RUN)


@dataclass(frozen=True)
class SensorSettings:
    """What the sensors take from :class:`~analysis_wrapper.settings.Settings`."""

    inbox: str = "dispatch_inbox"
    interval_s: int = 30
    start_stopped: bool = False
    max_runs_per_tick: int = 50
    batch_size: int = 25
    max_queued_runs: int = 200
    max_files_per_tick: int = 1000
    tick_budget_s: float = 30.0
    settle_s: float = 10.0
    max_attempts: int = 3
    retry_delay_s: float = 60.0
    rerun_on_new_version: bool = True
    run_max_runtime_s: int | None = None
    audit_after_s: float = 60.0
    reconcile_page: int = RECONCILE_PAGE

    @classmethod
    def from_settings(cls, settings: Settings) -> SensorSettings:
        return cls(
            inbox=settings.DISPATCH_INBOX,
            interval_s=settings.SENSOR_INTERVAL_S,
            start_stopped=settings.SENSOR_START_STOPPED,
            max_runs_per_tick=settings.SENSOR_MAX_RUNS_PER_TICK,
            batch_size=settings.SENSOR_BATCH_SIZE,
            max_queued_runs=settings.SENSOR_MAX_QUEUED_RUNS,
            max_files_per_tick=settings.SENSOR_MAX_FILES_PER_TICK,
            tick_budget_s=settings.SENSOR_TICK_BUDGET_S,
            settle_s=settings.INBOX_SETTLE_S,
            max_attempts=settings.MAX_ATTEMPTS,
            retry_delay_s=settings.RETRY_DELAY_S,
            rerun_on_new_version=settings.RERUN_ON_NEW_VERSION,
            run_max_runtime_s=settings.RUN_MAX_RUNTIME_S,
            audit_after_s=settings.SENSOR_AUDIT_AFTER_S,
        )

    @property
    def default_status(self) -> DefaultSensorStatus:
        return DefaultSensorStatus.STOPPED if self.start_stopped else DefaultSensorStatus.RUNNING

    def retry_delay(self, attempts: int) -> dt.timedelta:
        """How long a job that failed after ``attempts`` attempts waits: doubling from RETRY_DELAY_S."""
        return dt.timedelta(seconds=self.retry_delay_s * 2 ** max(attempts - 1, 0))


# ---- cursor -------------------------------------------------------------------------------------
@dataclass
class InboxCursor:
    """The inbox sensor's cursor: small, whatever the inbox or registry holds."""

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
        return json.dumps(
            {"requested": self.requested, "version": self.version, "reconcile_after": self.reconcile_after},
            separators=(",", ":"),
        )


# ---- helpers ------------------------------------------------------------------------------------
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


def add_requests(partitions: DynamicPartitionsDefinition, keys: Iterable[str]) -> list[Any]:
    unique = list(dict.fromkeys(keys))
    return [
        partitions.build_add_request(unique[start : start + PARTITION_BATCH_SIZE])
        for start in range(0, len(unique), PARTITION_BATCH_SIZE)
    ]


def _attempt_of(run_tags: Mapping[str, str]) -> int | None:
    try:
        return int(run_tags[ATTEMPT_TAG])
    except (KeyError, ValueError):
        return None


def apply_run_end(
    store: RecordStore, entry: JobEntry, run_id: str, tags: Mapping[str, str], error: str
) -> bool:
    """Record that run ``run_id`` of ``entry``'s job failed (or was canceled), when that is news.

    The asset marks the failures it sees itself; a run can also die before the asset starts (launch
    failure, bad config), or with it (worker killed). Stale events never undo newer state: a job that
    finished, was re-registered (other fingerprint), or moved on to a later attempt is left alone.
    Returns True when the job was marked failed.
    """
    fingerprint = tags.get(FINGERPRINT_TAG)
    attempt = _attempt_of(tags)
    if fingerprint is not None and fingerprint != entry.fingerprint:
        return False
    behind = attempt is not None and entry.attempts < attempt  # the asset never counted this attempt
    if entry.state in FINISHED:
        return False
    if entry.state == JobState.RUNNING:
        if entry.run_id != run_id:
            return False
    elif entry.state == JobState.FAILED or not behind:
        # Failed: the run marked it itself, attempt counted. Pending / queued: only the failure of the
        # attempt they wait for is news.
        return False
    if store.existing_fingerprints(entry.analysis, [entry.fingerprint]):
        # Killed after it committed its record: done, nothing to retry.
        store.update_job(entry.analysis, entry.partition_key, state=JobState.DONE, run_id=run_id)
        return False
    store.update_job(
        entry.analysis,
        entry.partition_key,
        state=JobState.FAILED,
        run_id=run_id,
        error=error,
        count_attempt=behind,
    )
    return True


def run_partition_keys(run: DagsterRun) -> list[str]:
    """The partitions a run of an analysis works on: a batch's keys, or the run's partition."""
    keys = batch_keys(run)
    if keys is not None:
        return keys
    key = run.tags.get(PARTITION_NAME_TAG)
    return [key] if key else []


def apply_run_end_to_jobs(store: RecordStore, analysis: str, run: DagsterRun, error: str) -> int:
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
                return f"run {run_id}: {data.error.message.strip().splitlines()[0]}"
    except Exception:  # the message is a courtesy; never fail a tick over it
        log.debug("cannot read the step failures of run %s", run_id, exc_info=True)
    return f"run {run_id}: {fallback}"


def run_worker_gone(run_record: RunRecord, timeout_s: int = 5) -> str | None:
    """Why the run worker of an in-progress run is certainly gone, or None when it may be alive.

    Runs of Dagster's default run launcher are child processes of the code server that launched them
    (the run's ``grpc_info`` tag); Dagster's run monitoring cannot check them. When that code server no
    longer answers, it and its children are gone (``dagster dev`` killed, machine restarted): the run
    will never finish. Runs of other launchers carry no such tag and are left to run monitoring.
    Only a refused connection counts (no server there); a slow or busy server does not.
    """
    info_text = run_record.dagster_run.tags.get(GRPC_INFO_TAG)
    if not info_text:
        return None
    try:
        import grpc
        from dagster._grpc.__generated__ import dagster_api_pb2
        from dagster._grpc.client import DagsterGrpcClient

        info = json.loads(info_text)
        client = DagsterGrpcClient(
            port=info.get("port"),
            socket=info.get("socket"),
            host=info.get("host", "localhost"),
            use_ssl=bool(info.get("use_ssl", False)),
        )
    except Exception:  # an unexpected tag: leave the run to run monitoring
        log.debug("cannot read grpc_info %r", info_text, exc_info=True)
        return None
    try:
        client._get_response("Ping", request=dagster_api_pb2.PingRequest(echo=""), timeout=timeout_s)
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        if code != grpc.StatusCode.UNAVAILABLE:
            return None
        return (
            f"its run worker is gone: the code server that launched it ({info_text[:200]}) is not "
            "running any more"
        )
    except Exception:
        log.debug("ping of %s failed", info_text, exc_info=True)
        return None
    return None


# ---- the inbox tick -----------------------------------------------------------------------------
@dataclass
class Tick:
    """Everything one inbox tick needs; :meth:`run` does the work and returns the sensor result."""

    analysis: Analysis[Any, Any]
    partitions: DynamicPartitionsDefinition
    served: Mapping[str, Analysis[Any, Any]]
    store: RecordStore
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

    # 1 -------------------------------------------------------------------------------------------
    def mark_requested_queued(self) -> None:
        if self.cursor.requested:
            self.store.set_job_states(
                self.name, self.cursor.requested, JobState.QUEUED, only_from=[JobState.PENDING]
            )
        self.cursor.requested = []

    # 2 -------------------------------------------------------------------------------------------
    def _parse(self, file: InboxFile, data: bytes) -> AnalysisJob | str:
        """The job of ``file`` for this analysis, or the analysis it belongs to instead (to route)."""
        dispatch = resolve_relative_locations(parse_job_text(data, file.uri), self.inbox.base_folder(file))
        if file.folder:
            named = dispatch.analysis_name
            if named is not None and named != file.folder:
                raise JobFileError(
                    file.uri,
                    "analysis_code.parameters.analysis_name",
                    f"names analysis {named!r}, but the file is in the inbox folder of {file.folder!r}",
                )
            spec = self.analysis
        else:
            spec = select_analysis(dispatch, self.served, file.uri)
            if spec.name != self.name:
                return spec.name
        return build_analysis_job(dispatch, spec, source=file.uri)

    def _read_all(self, files: Sequence[InboxFile]) -> list[bytes | BaseException]:
        def read(file: InboxFile) -> bytes | BaseException:
            try:
                return self.inbox.read(file)
            except Exception as exc:  # gone (another sensor took it) or unreadable: decided below
                return exc

        if self.inbox.parallelism > 1 and len(files) > 1:
            with ThreadPoolExecutor(max_workers=self.inbox.parallelism) as pool:
                return list(pool.map(read, files))
        return [read(file) for file in files]

    def _each(self, action: Any, items: Sequence[Any]) -> list[Any]:
        """``action`` on every item (in parallel on S3); a failure is logged and counted, never raised,
        so one file that cannot be moved does not stop the tick (it is simply seen again)."""

        def guarded(item: Any) -> Any:
            try:
                return action(item)
            except Exception as exc:
                self.logger.warning(f"{self.name}: cannot move {item[0].uri}: {exc}")
                self.counts["unmovable"] += 1
                return None

        if self.inbox.parallelism > 1 and len(items) > 1:
            with ThreadPoolExecutor(max_workers=self.inbox.parallelism) as pool:
                return list(pool.map(guarded, items))
        return [guarded(item) for item in items]

    def read_inbox(self, deadline: float) -> None:
        limit = self.config.max_files_per_tick
        files = self.inbox.list_files(self.name, limit) if self.name not in RESERVED_FOLDERS else []
        if len(files) < limit:
            files += self.inbox.list_files("", limit - len(files))
        ready: list[tuple[InboxFile, AnalysisJob]] = []
        to_reject: list[tuple[InboxFile, str]] = []
        to_route: list[tuple[InboxFile, str]] = []
        chunk = 100 if self.inbox.parallelism == 1 else self.inbox.parallelism * 8
        for start in range(0, len(files), chunk):
            if time.monotonic() > deadline:
                self.counts["left for next tick"] += len(files) - start
                break
            batch = files[start : start + chunk]
            for file, data in zip(batch, self._read_all(batch), strict=True):
                if isinstance(data, FileNotFoundError):
                    continue  # another sensor dealt with it
                if isinstance(data, BaseException):
                    self.logger.warning(f"{self.name}: cannot read {file.uri}: {data}")
                    self.counts["unreadable"] += 1
                    continue
                self.counts["new"] += 1
                try:
                    parsed = self._parse(file, data)
                except JobFileError as exc:
                    young = self.inbox.local and time.time() - file.modified < self.config.settle_s
                    if young and exc.problem.startswith(("invalid JSON", "not UTF-8")):
                        self.counts["new"] -= 1
                        self.counts["deferred"] += 1  # may be half-written: look again next tick
                        continue
                    to_reject.append((file, str(exc)))
                    continue
                except Exception as exc:  # never let one file stop every tick: keep it, with the reason
                    to_reject.append(
                        (file, f"{file.uri}: cannot be used as a job: {type(exc).__name__}: {exc}")
                    )
                    continue
                if isinstance(parsed, str):
                    to_route.append((file, parsed))
                else:
                    ready.append((file, parsed))
        self._reject(to_reject)
        self._route(to_route)
        self._register(ready)

    def _reject(self, items: list[tuple[InboxFile, str]]) -> None:
        who = self.analysis.sensor_name

        def reject(item: tuple[InboxFile, str]) -> str | None:
            file, reason = item
            return self.inbox.reject(file, reason, who)

        for (_file, reason), where in zip(items, self._each(reject, items), strict=True):
            if where is not None:
                self.counts["rejected"] += 1
                self.logger.warning(f"{self.name}: REJECTED {reason} -> moved to {where}")

    def _route(self, items: list[tuple[InboxFile, str]]) -> None:
        moved = self._each(lambda item: self.inbox.route(*item), items)
        self.counts["routed"] += sum(1 for ok in moved if ok)
        self.counts["new"] -= len(items)

    def _register(self, ready: list[tuple[InboxFile, AnalysisJob]]) -> None:
        if not ready:
            return
        entries: dict[str, JobEntry] = {}
        targets: list[tuple[InboxFile, str]] = []
        for file, job in ready:
            target = self.inbox.registered_uri(file, self.name)
            targets.append((file, target))
            entries.setdefault(job.partition_key, entry_for(job.model_copy(update={"source": target})))
        outcome = self.store.register_jobs(list(entries.values()))
        recorded = self.store.existing_fingerprints(self.name, [e.fingerprint for e in entries.values()])
        fresh = set(outcome.added) | set(outcome.changed)
        done_keys = [k for k, e in entries.items() if e.fingerprint in recorded]
        if done_keys:
            # Recorded already (by an earlier run, maybe under another partition): nothing to run.
            self.store.set_job_states(
                self.name, done_keys, JobState.SKIPPED, only_from=[JobState.PENDING, JobState.FAILED]
            )
        self.counts["already done"] += len(done_keys)
        self.counts["registered"] += sum(1 for k in fresh if entries[k].fingerprint not in recorded)
        self.counts["known"] += sum(1 for k in outcome.unchanged if entries[k].fingerprint not in recorded)
        # Every key is (re-)added, so a registry that outlived its Dagster instance heals itself.
        self.add_keys.extend(entries)
        self._each(lambda item: self.inbox.accept(item[0], self.name, item[1]), targets)

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
        changed: list[JobEntry] = []
        for entry in page:
            try:
                job = build_analysis_job(
                    DispatchJob.model_validate(dict(entry.job)),
                    self.analysis,
                    source=entry.source or "registry",
                )
            except (JobFileError, ValueError) as exc:
                self.store.update_job(
                    self.name,
                    entry.partition_key,
                    state=JobState.FAILED,
                    error=f"cannot be built with {self.name} {self.analysis.version}: {exc}",
                )
                continue
            if job.fingerprint != entry.fingerprint:
                changed.append(entry_for(job))
        if changed:
            self.store.register_jobs(changed)
            self.counts["new version"] += len(changed)
        if len(page) < self.config.reconcile_page:
            self.cursor.version = self.analysis.version
            self.cursor.reconcile_after = None
        else:
            self.cursor.reconcile_after = page[-1].partition_key

    # 4 -------------------------------------------------------------------------------------------
    def schedule_retries(self) -> None:
        due: list[str] = []
        for attempts in range(self.config.max_attempts):
            due.extend(
                entry.partition_key
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
            self.counts["retried"] += self.store.set_job_states(
                self.name, due, JobState.PENDING, only_from=[JobState.FAILED]
            )

    # 5 -------------------------------------------------------------------------------------------
    def sweep_lost_runs(self) -> None:
        """Fail the in-progress runs of this analysis whose run worker is gone (whatever their job's
        state: a run killed after its record was written still holds a slot of the run queue)."""
        in_progress = self.instance.get_run_records(
            RunsFilter(
                tags={ANALYSIS_TAG: self.name},
                statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED],
                updated_before=self.now - dt.timedelta(seconds=self.config.audit_after_s),
            ),
            limit=AUDIT_LIMIT,
        )
        verdicts: dict[str, str | None] = {}  # one ping per code server per tick
        lost: list[tuple[Any, str]] = []
        for record in in_progress:
            info = record.dagster_run.tags.get(GRPC_INFO_TAG)
            if not info:
                continue
            if info not in verdicts:
                verdicts[info] = run_worker_gone(record)
            reason = verdicts[info]
            if reason is not None:
                run = record.dagster_run
                message = f"Run {run.run_id} of {self.name} is lost: {reason}."
                self.logger.warning(message)
                self.instance.report_run_failed(run, message)
                lost.append((run, f"run {run.run_id}: {reason}"))
        for run, error in lost:
            self.counts["recovered"] += apply_run_end_to_jobs(self.store, self.name, run, error)
        self.counts["lost runs failed"] += len(lost)

    def audit_in_flight(self) -> None:
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
            if tags.get(PARTITION_NAME_TAG):
                by_attempt[(tags[PARTITION_NAME_TAG], _attempt_of(tags))] = record
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
        if recorded:
            self.store.update_job(self.name, entry.partition_key, state=JobState.DONE)
            self.counts["recovered"] += 1
            return
        if record is None:
            if entry.state == JobState.QUEUED:
                # Its run never came to be (or was deleted): request it again.
                self.store.set_job_states(
                    self.name, [entry.partition_key], JobState.PENDING, only_from=[JobState.QUEUED]
                )
                self.counts["recovered"] += 1
            return
        run = record.dagster_run
        if run.status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
            verb = "failed" if run.status == DagsterRunStatus.FAILURE else "was canceled"
            error = run_error(self.instance, run.run_id, f"the run {verb}")
            if apply_run_end(self.store, entry, run.run_id, run.tags, error):
                self.counts["recovered"] += 1
        elif run.status == DagsterRunStatus.SUCCESS:
            # Succeeded without a record and without telling the registry: due again.
            self.store.set_job_states(self.name, [entry.partition_key], JobState.PENDING)
            self.counts["recovered"] += 1
        # Still queued or in progress: fine (runs whose worker is gone were failed by sweep_lost_runs).

    # 6 -------------------------------------------------------------------------------------------
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
        done = [e.partition_key for e in page if e.fingerprint in recorded]
        if done:
            self.store.set_job_states(self.name, done, JobState.SKIPPED, only_from=[JobState.PENDING])
        chosen = [e for e in page if e.fingerprint not in recorded][:wanted]
        if len(page) > wanted and len(chosen) == wanted:
            self.counts["backlog"] += 1
        requests = [
            self._single_request(group[0]) if len(group) == 1 else self._batch_request(group)
            for group in (chosen[start : start + size] for start in range(0, len(chosen), size))
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
        self.read_inbox(deadline)
        self.reconcile_version()
        self.schedule_retries()
        self.sweep_lost_runs()
        self.audit_in_flight()
        requests = self.request_runs()
        summary = self.summary()
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
    def inbox_sensor(
        context: SensorEvaluationContext, records: RecordStoreResource, s3: S3Resource
    ) -> SensorResult:
        tick = Tick(
            analysis=analysis,
            partitions=definitions.partitions,
            served=served,
            store=records.get_store(),
            inbox=open_inbox(config.inbox, s3.get_client),
            instance=context.instance,
            config=config,
            cursor=InboxCursor.parse(context.cursor),
            logger=context.log,
        )
        return tick.run()

    return inbox_sensor


# ---- run events ---------------------------------------------------------------------------------
_RUN_END_EVENTS = {"failure": DagsterEventType.RUN_FAILURE, "canceled": DagsterEventType.RUN_CANCELED}


def handle_run_events(
    instance: DagsterInstance,
    store: RecordStore,
    jobs: Mapping[str, str],
    cursor_text: str | None,
    limit: int = RUN_EVENTS_PER_TICK,
) -> tuple[str, Counter[str]]:
    """Mark jobs failed from run failure / cancel events after the cursor; the new cursor and counts.

    ``jobs`` maps the Dagster job names to watch to their analysis.
    """
    try:
        cursor: dict[str, int] = {k: int(v) for k, v in json.loads(cursor_text or "{}").items()}
    except (ValueError, AttributeError, TypeError):
        cursor = {}
    counts: Counter[str] = Counter()
    use_job_filter = instance.event_log_storage.supports_run_status_change_job_name_filter
    for name, event_type in _RUN_END_EVENTS.items():
        if name in cursor:
            records_filter = RunStatusChangeRecordsFilter(
                event_type=event_type,  # type: ignore[arg-type]
                after_storage_id=cursor[name],
                job_names=list(jobs) if use_job_filter else None,
            )
        else:
            records_filter = RunStatusChangeRecordsFilter(
                event_type=event_type,  # type: ignore[arg-type]
                after_timestamp=time.time() - RUN_EVENTS_LOOKBACK_S,
            )
        events = instance.fetch_run_status_changes(records_filter, limit=limit, ascending=True).records
        if name not in cursor:
            latest = instance.fetch_run_status_changes(event_type, limit=1).records  # type: ignore[arg-type]
            cursor[name] = latest[0].storage_id if latest and not events else -1
        if not events:
            continue
        cursor[name] = max(cursor[name], *(e.storage_id for e in events))
        run_ids = list({e.event_log_entry.run_id for e in events})
        runs = {
            r.dagster_run.run_id: r.dagster_run for r in instance.get_run_records(RunsFilter(run_ids=run_ids))
        }
        for event in events:
            run = runs.get(event.event_log_entry.run_id)
            if run is None or run.job_name not in jobs:
                continue
            message = event.event_log_entry.message or ""
            if name == "canceled":
                error = f"run {run.run_id} was canceled" + (f": {message}" if message else "")
            else:
                error = run_error(instance, run.run_id, message or "the run failed")
            counts[name] += apply_run_end_to_jobs(store, jobs[run.job_name], run, error)
    return json.dumps(cursor, sort_keys=True), counts


def build_run_events_sensor(
    built: Mapping[str, AnalysisDefinitions], config: SensorSettings
) -> SensorDefinition:
    jobs = {
        job: name for name, d in built.items() for job in (d.analysis.job_name, d.analysis.batch_job_name)
    }

    @sensor(
        name=RUN_EVENTS_SENSOR_NAME,
        minimum_interval_seconds=config.interval_s,
        default_status=config.default_status,
        description=(
            "Keeps the job registry current from Dagster run events: a failed or canceled run of an "
            "analysis job marks its job failed (with the error), so the inbox sensors retry it."
        ),
    )
    def run_events(context: SensorEvaluationContext, records: RecordStoreResource) -> SensorResult:
        cursor, counts = handle_run_events(context.instance, records.get_store(), jobs, context.cursor)
        summary = f"{counts['failure']} job(s) marked failed, {counts['canceled']} canceled"
        if counts:
            context.log.info(summary)
        return SensorResult(skip_reason=summary, cursor=cursor)

    return run_events


def build_sensors(built: Mapping[str, AnalysisDefinitions], settings: Settings) -> list[SensorDefinition]:
    """One inbox sensor per analysis, and the run events sensor."""
    config = SensorSettings.from_settings(settings)
    served = {name: d.analysis for name, d in built.items()}
    sensors = [build_inbox_sensor(d, served, config) for d in built.values()]
    if built:
        sensors.append(build_run_events_sensor(built, config))
    return sensors
