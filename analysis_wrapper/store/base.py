"""The interfaces behind which jobs, records and leases are kept; the backends only persist.

* :class:`JobRegistry` maps (analysis, partition key) to the dispatched job, its current fingerprint
  and its state. Its one write primitive, :meth:`JobRegistry.update_jobs`, is a conditional update
  (compare-and-set on a :class:`JobMatch`); which updates are allowed is decided in one place,
  :mod:`analysis_wrapper.lifecycle`, never here.
* :class:`RecordStore` maps fingerprint to provenance record. A record means "done"; nothing else
  does. Inserting a fingerprint twice fails (``_id`` = fingerprint), it never duplicates.
* :class:`LeaseStore` holds short-lived claims (a fingerprint being computed, a run that is alive),
  each unique per key with holder and expiry; :mod:`analysis_wrapper.ownership` gives them meaning.

Backends (:class:`Store` implements all three): SQLite (embedded default) and pymongo (MongoDB /
DocumentDB). Both count their database round trips in ``query_count`` so tests and benchmarks can
show that work is batched.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, Literal

from analysis_wrapper.errors import AnalysisWrapperError


class JobState(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"
    DRY_RUN = "dry_run"


JobOrder = Literal["created", "updated", "key"]
"""How :meth:`JobRegistry.find_jobs` orders: oldest created, oldest updated, or by partition key."""


class StoreError(AnalysisWrapperError, RuntimeError):
    """The store could not be reached or used; the message never carries credentials."""


class RecordExistsError(StoreError):
    """A record with this fingerprint is already stored."""

    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint
        super().__init__(f"a record with fingerprint {fingerprint} already exists")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _Unset(Enum):
    UNSET = "unset"


ANY = _Unset.UNSET
"""In a :class:`JobMatch`: any value matches."""
KEEP = _Unset.UNSET
"""In a :class:`JobChange`: the value is left as it is."""


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
class JobMatch:
    """The compare part of a conditional update: what a job must look like to be changed."""

    states: frozenset[JobState] | None = None
    run_id: str | _Unset | None = ANY
    attempts: int | None = None
    fingerprint: str | None = None
    updated_before: dt.datetime | None = None


@dataclass(frozen=True)
class JobChange:
    """The set part of a conditional update. ``fingerprint`` / ``job`` / ``source`` (given together)
    re-register the job; ``updated_at`` is always set to now."""

    state: JobState
    run_id: str | _Unset | None = KEEP
    error: str | _Unset | None = KEEP
    attempts: Literal["keep", "increment", "reset"] = "keep"
    fingerprint: str | None = None
    job: Mapping[str, Any] | None = None
    source: str | None = None


@dataclass(frozen=True)
class Lease:
    """A claim on ``key`` by one process of one run, valid until ``expires_at`` unless renewed."""

    key: str
    run_id: str
    host: str
    pid: int
    token: str
    expires_at: dt.datetime

    def describe(self) -> str:
        return (
            f"run {self.run_id} (pid {self.pid} on {self.host}, lease until {self.expires_at:%H:%M:%S} UTC)"
        )


class JobRegistry(abc.ABC):
    """Registered jobs. Safe for several processes at once; every write is conditional."""

    query_count: int = 0

    @abc.abstractmethod
    def insert_jobs(self, entries: Sequence[JobEntry]) -> set[tuple[str, str]]:
        """Insert the entries whose (analysis, partition key) is not registered; leave the others.
        Returns the (analysis, key) pairs inserted. A constant number of queries per batch."""

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
        if limit <= 0:
            return []
        match = JobMatch(
            states=None if states is None else frozenset(states),
            attempts=attempts,
            updated_before=updated_before,
        )
        return self._find_jobs(analysis, match, order, after_key, int(limit))

    @abc.abstractmethod
    def _find_jobs(
        self, analysis: str, match: JobMatch, order: JobOrder, after_key: str | None, limit: int
    ) -> list[JobEntry]:
        """``find_jobs`` in the backend's query language: ``match`` holds states, attempts and
        ``updated_before``; ``limit`` is positive."""

    def update_jobs(
        self, analysis: str, partition_keys: Iterable[str], match: JobMatch, change: JobChange
    ) -> int:
        """Apply ``change`` to each of the jobs that ``match`` right now, atomically per job (one
        conditional statement per chunk of keys); how many changed."""
        keys = list(dict.fromkeys(partition_keys))
        return self.update_each_grouped(analysis, [(keys, match, change)]) if keys else 0

    def update_each(self, analysis: str, updates: Sequence[tuple[str, JobMatch, JobChange]]) -> int:
        """Several conditional updates, each with its own match and change, batched; how many changed."""
        return self.update_each_grouped(analysis, [([key], match, change) for key, match, change in updates])

    @abc.abstractmethod
    def update_each_grouped(
        self, analysis: str, updates: Sequence[tuple[Sequence[str], JobMatch, JobChange]]
    ) -> int:
        """Each ``(keys, match, change)`` applied to those of ``keys`` that match, all in one batch
        (SQLite: one write transaction; MongoDB: one ``bulk_write``); how many jobs changed."""


@dataclass(frozen=True)
class RecordQuery:
    """What :meth:`RecordStore.find_records` asks for, in the backend's query language."""

    analysis: str | None
    parameters: Mapping[str, Any]
    code_version: str | None
    include_superseded: bool


class RecordStore(abc.ABC):
    """Provenance records by fingerprint."""

    query_count: int = 0

    @abc.abstractmethod
    def existing_fingerprints(self, analysis: str, fingerprints: Iterable[str]) -> set[str]:
        """Which of ``fingerprints`` have a record; one query per (large) batch."""

    def insert_record(self, analysis: str, record: Mapping[str, Any]) -> None:
        """Insert ``record`` under ``record['_id']``; :class:`RecordExistsError` if present."""
        if "_id" not in record:
            raise ValueError("a record needs an '_id' (its fingerprint)")
        self._insert_record(analysis, str(record["_id"]), dict(record))

    def supersede_record(self, analysis: str, fingerprint: str, kept: Mapping[str, Any]) -> None:
        """Under ``force``: store ``kept`` (the old record, with its own ``_id`` and
        ``analysis_wrapper.superseded_by``) and remove the record under ``fingerprint`` so the
        successor can be inserted. The old record is never lost: the copy is written first."""
        kept_id = str(kept["_id"])
        if kept_id == fingerprint:
            raise ValueError("the superseded record needs an '_id' other than the fingerprint")
        self._supersede_record(analysis, fingerprint, kept_id, dict(kept))

    @abc.abstractmethod
    def _insert_record(self, analysis: str, fingerprint: str, record: dict[str, Any]) -> None:
        """``insert_record`` once the record has its fingerprint."""

    @abc.abstractmethod
    def _supersede_record(self, analysis: str, fingerprint: str, kept_id: str, kept: dict[str, Any]) -> None:
        """``supersede_record`` once ``kept`` has an ``_id`` of its own."""

    @abc.abstractmethod
    def get_record(self, analysis: str, fingerprint: str) -> dict[str, Any] | None:
        """The record with this fingerprint, or None."""

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
        return self._find_records(
            RecordQuery(analysis, dict(parameters or {}), code_version, include_superseded)
        )

    @abc.abstractmethod
    def _find_records(self, query: RecordQuery) -> list[dict[str, Any]]:
        """``find_records`` in the backend's query language."""

    @abc.abstractmethod
    def capsule_records(
        self, analysis: str, code_url: str, code_version: str, input_urls: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Records the AIND capsule at ``code_url`` / ``code_version`` wrote among ``analysis``'s records
        (``processing.data_processes[0].code`` url and version) whose ``input_data`` names any of
        ``input_urls``: one query per batch. Each has ``_id``, ``location`` and that ``code``'s
        ``input_data`` and ``parameters``; :mod:`analysis_wrapper.capsule_records` matches them to jobs."""


class LeaseStore(abc.ABC):
    """Claims unique per key. Times are the claimant's UTC clock."""

    @abc.abstractmethod
    def claim_lease(self, lease: Lease, now: dt.datetime, *, replacing_token: str | None = None) -> bool:
        """Store ``lease`` if its key is free, its lease expired before ``now``, or it is held under
        ``lease.token`` (a renewal) or ``replacing_token`` (a takeover from a holder known dead).
        One atomic statement; False when someone else holds the key."""

    @abc.abstractmethod
    def renew_lease(self, key: str, token: str, expires_at: dt.datetime) -> bool:
        """Move the expiry of the lease on ``key`` to ``expires_at`` if it is still held under
        ``token`` (expired or not); one statement. False when it is gone or someone else's: a renewal
        never re-creates a lease another holder took over and gave back."""

    @abc.abstractmethod
    def release_lease(self, key: str, token: str) -> None:
        """Remove the lease on ``key`` if it is still held under ``token``."""

    @abc.abstractmethod
    def get_leases(self, keys: Iterable[str]) -> dict[str, Lease]:
        """The leases on ``keys`` (expired ones included), in one lookup."""


class Store(JobRegistry, RecordStore, LeaseStore):
    """What a backend implements: the three interfaces over one database."""

    def close(self) -> None:
        """Release connections."""
