"""The one interface behind which jobs and records are kept: the job registry and the record store.

* The **job registry** maps (analysis, partition key) to the dispatched job, its current fingerprint,
  and its state (pending, queued, running, done, skipped, failed, dry_run) with run id, attempts and
  last error. The asset loads its job from here by partition key, so UI materializations and
  backfills need no run config.
* The **record store** maps fingerprint to provenance record. A record means "done"; nothing else
  does. Inserting a fingerprint twice fails (``_id`` = fingerprint), it never duplicates.

Backends: SQLite (embedded default) and pymongo (MongoDB / DocumentDB). Both count their database
round trips in ``query_count`` so tests and benchmarks can show that work is batched.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal


class JobState(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"
    DRY_RUN = "dry_run"


JobOrder = Literal["created", "updated", "key"]
"""How :meth:`RecordStore.find_jobs` orders: oldest created, oldest updated, or by partition key."""


class StoreError(RuntimeError):
    """The store could not be reached or used; the message never carries credentials."""


class RecordExistsError(StoreError):
    """A record with this fingerprint is already stored."""

    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint
        super().__init__(f"a record with fingerprint {fingerprint} already exists")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class JobEntry:
    """One registered job (one partition of one analysis)."""

    analysis: str
    partition_key: str
    fingerprint: str
    job: Mapping[str, Any]
    source: str = ""
    state: JobState = JobState.PENDING
    run_id: str | None = None
    attempts: int = 0
    last_error: str | None = None
    created_at: dt.datetime = field(default_factory=utcnow)
    updated_at: dt.datetime = field(default_factory=utcnow)

    def with_changes(self, **changes: Any) -> JobEntry:
        return replace(self, **changes)

    def as_json(self) -> dict[str, Any]:
        return {
            "analysis": self.analysis,
            "partition_key": self.partition_key,
            "fingerprint": self.fingerprint,
            "state": self.state.value,
            "run_id": self.run_id,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "source": self.source,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class RegisterOutcome:
    """What :meth:`RecordStore.register_jobs` did: keys new to the registry, keys whose
    fingerprint changed (new analysis version or parameters), and keys already known unchanged."""

    added: list[str]
    changed: list[str]
    unchanged: list[str]


class RecordStore(abc.ABC):
    """Job registry + record store. Implementations must be safe for several processes at once."""

    query_count: int = 0

    # ---- job registry -------------------------------------------------------------------------
    @abc.abstractmethod
    def register_jobs(self, entries: Sequence[JobEntry]) -> RegisterOutcome:
        """Insert new jobs as pending; for a known key whose fingerprint differs, store the new
        fingerprint and job and set it pending again (attempts reset); leave others untouched.
        Done in batches: a constant number of queries per batch, not per job."""

    @abc.abstractmethod
    def get_jobs(self, analysis: str, partition_keys: Iterable[str]) -> dict[str, JobEntry]:
        """The registered jobs among ``partition_keys``, in one batched lookup."""

    def get_job(self, analysis: str, partition_key: str) -> JobEntry | None:
        return self.get_jobs(analysis, [partition_key]).get(partition_key)

    @abc.abstractmethod
    def list_jobs(
        self, analysis: str | None = None, states: Iterable[JobState] | None = None
    ) -> list[JobEntry]:
        """Jobs, optionally of one analysis and in some states, oldest first."""

    @abc.abstractmethod
    def update_job(
        self,
        analysis: str,
        partition_key: str,
        *,
        state: JobState,
        run_id: str | None = None,
        error: str | None = None,
        fingerprint: str | None = None,
        count_attempt: bool = False,
    ) -> None:
        """Set a job's state (and run id / error / fingerprint when given); ``count_attempt`` adds
        one to ``attempts``. A ``None`` error clears the last error only when the state is done."""

    @abc.abstractmethod
    def find_jobs(
        self,
        analysis: str,
        *,
        limit: int,
        states: Iterable[JobState] | None = None,
        order: JobOrder = "created",
        after_key: str | None = None,
        updated_before: dt.datetime | None = None,
        attempts: int | None = None,
    ) -> list[JobEntry]:
        """At most ``limit`` jobs of ``analysis``, in one indexed query (never a full scan): those in
        ``states``, with exactly ``attempts`` attempts, last updated before ``updated_before``, with a
        partition key after ``after_key``; ordered oldest ``created`` first, oldest ``updated`` first,
        or by partition ``key`` (for paging through the registry with ``after_key``)."""

    @abc.abstractmethod
    def set_job_states(
        self,
        analysis: str,
        partition_keys: Iterable[str],
        state: JobState,
        *,
        only_from: Iterable[JobState] | None = None,
    ) -> int:
        """Set the state of many jobs at once (a constant number of queries per batch), only of those
        currently in ``only_from`` when given; run id, attempts and last error are kept. Returns
        how many jobs changed."""

    # ---- record store -------------------------------------------------------------------------
    @abc.abstractmethod
    def existing_fingerprints(self, analysis: str, fingerprints: Iterable[str]) -> set[str]:
        """Which of ``fingerprints`` have a record; one query per (large) batch."""

    @abc.abstractmethod
    def insert_record(self, analysis: str, record: Mapping[str, Any]) -> None:
        """Insert ``record`` under ``record['_id']``; :class:`RecordExistsError` if present."""

    @abc.abstractmethod
    def supersede_record(self, analysis: str, fingerprint: str, kept: Mapping[str, Any]) -> None:
        """Under ``force``: store ``kept`` (the old record, with its own ``_id`` and
        ``analysis_wrapper.superseded_by``) and remove the record under ``fingerprint`` so the
        successor can be inserted. The old record is never lost."""

    @abc.abstractmethod
    def get_record(self, analysis: str, fingerprint: str) -> dict[str, Any] | None:
        """The record with this fingerprint, or None."""

    @abc.abstractmethod
    def find_records(
        self,
        analysis: str | None = None,
        *,
        parameters: Mapping[str, Any] | None = None,
        code_version: str | None = None,
        include_superseded: bool = False,
    ) -> list[dict[str, Any]]:
        """All records, optionally of one analysis, oldest first (SQLite: insertion order; MongoDB:
        the record's ``created`` time). With one shared collection the analysis is told apart by
        ``analysis_wrapper.analysis``.

        ``parameters`` keeps records whose ``processing.data_processes[0].code.parameters`` hold
        these exact values; ``code_version`` those of that analysis version. Records replaced under
        ``force`` are left out unless ``include_superseded``. Filters run in the database."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
