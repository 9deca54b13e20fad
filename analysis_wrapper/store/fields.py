"""What both backends store of a job, a lease and a time, shaped once; each backend only encodes it.

A job is stored as the fields of :data:`JOB_FIELDS`; a :class:`~analysis_wrapper.store.base.JobMatch`
becomes field conditions (:func:`match_fields`) and a :class:`~analysis_wrapper.store.base.JobChange`
field assignments (:func:`change_fields`), which SQLite writes as SQL and MongoDB as a query document.
Times are UTC and timezone-aware everywhere (:func:`to_utc`), so SQLite's ISO text sorts as time does
and MongoDB's naive BSON datetimes read back as the instant they were.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from analysis_wrapper.store.base import (
    ANY,
    KEEP,
    JobChange,
    JobEntry,
    JobMatch,
    JobOrder,
    JobState,
    Lease,
    utcnow,
)

T = TypeVar("T")

JOB_FIELDS = tuple(field.name for field in dataclasses.fields(JobEntry))
"""A stored job's fields (SQLite keeps ``job`` in the ``job_json`` column)."""
ORDER_FIELD: dict[JobOrder, str] = {"created": "created_at", "updated": "updated_at", "key": "partition_key"}
"""The field each :data:`~analysis_wrapper.store.base.JobOrder` sorts by (ties: by insertion / ``_id``)."""


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` in slices of at most ``size``: the batches of one statement or round trip each."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def to_utc(value: Any) -> dt.datetime:
    """A timezone-aware UTC time from a datetime (naive ones are UTC: BSON's come back naive) or
    ISO-8601 text; anything else (a document without the field) reads as now."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        return utcnow()
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def iso_utc(value: Any) -> str:
    """ISO-8601 in UTC with a fixed width, so text order is time order."""
    return to_utc(value).isoformat(timespec="microseconds")


def _normalized(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` by :data:`JOB_FIELDS`, with defaults for what a document may lack; times in UTC."""
    return {
        **{name: fields.get(name) for name in JOB_FIELDS},
        "job": dict(fields.get("job") or {}),
        "source": fields.get("source") or "",
        "attempts": int(fields.get("attempts") or 0),
        "created_at": to_utc(fields.get("created_at")),
        "updated_at": to_utc(fields.get("updated_at")),
    }


def job_fields(entry: JobEntry) -> dict[str, Any]:
    """The fields stored for ``entry``."""
    return {**_normalized(vars(entry)), "state": JobState(entry.state).value}


def job_from_fields(fields: Mapping[str, Any]) -> JobEntry:
    """The job stored as ``fields`` (``job`` decoded; times as datetimes or ISO text)."""
    return JobEntry(**{**_normalized(fields), "state": JobState(fields["state"])})


def match_fields(match: JobMatch) -> dict[str, Any]:
    """The conditions of ``match`` by field: ``state`` one of a sorted list of values (empty: none
    matches); ``run_id`` equal, ``None`` meaning null; ``attempts`` and ``fingerprint`` equal;
    ``updated_at`` before the given time."""
    conditions: dict[str, Any] = {}
    if match.states is not None:
        conditions["state"] = sorted(JobState(state).value for state in match.states)
    if match.run_id is not ANY:
        conditions["run_id"] = match.run_id
    if match.attempts is not None:
        conditions["attempts"] = int(match.attempts)
    if match.fingerprint is not None:
        conditions["fingerprint"] = match.fingerprint
    if match.updated_before is not None:
        conditions["updated_at"] = to_utc(match.updated_before)
    return conditions


def change_fields(change: JobChange) -> tuple[dict[str, Any], bool]:
    """The fields ``change`` sets (``updated_at`` always, to now; ``job`` and ``source`` with a new
    fingerprint), and whether it adds one to ``attempts``."""
    sets: dict[str, Any] = {"state": JobState(change.state).value, "updated_at": utcnow()}
    if change.run_id is not KEEP:
        sets["run_id"] = change.run_id
    if change.error is not KEEP:
        sets["last_error"] = change.error
    if change.attempts == "reset":
        sets["attempts"] = 0
    if change.fingerprint is not None:
        sets.update(fingerprint=change.fingerprint, job=dict(change.job or {}), source=change.source or "")
    return sets, change.attempts == "increment"


def lease_from_fields(fields: Mapping[str, Any]) -> Lease:
    """The lease stored as ``fields`` (its ``key``, holder and expiry)."""
    return Lease(**{**fields, "pid": int(fields["pid"]), "expires_at": to_utc(fields["expires_at"])})


def claim_tokens(lease: Lease, replacing_token: str | None) -> list[str]:
    """The tokens under which a held lease may be claimed: a renewal (``lease.token``) or a takeover
    from a holder known dead (``replacing_token``)."""
    return list(dict.fromkeys([lease.token, replacing_token or lease.token]))
