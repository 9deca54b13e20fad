"""The job registry in SQLite: the ``jobs`` table, keyed by (analysis, partition key).

Every write is a conditional ``UPDATE ... WHERE`` (the compare-and-set that
:mod:`analysis_wrapper.lifecycle` relies on), and a batch of them runs in one write transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from analysis_wrapper.store.base import JobChange, JobEntry, JobMatch, JobOrder, JobRegistry, JobState
from analysis_wrapper.store.fields import (
    JOB_FIELDS,
    ORDER_FIELD,
    change_fields,
    job_fields,
    job_from_fields,
    match_fields,
)
from analysis_wrapper.store.sqlite.connection import SqliteConnection, encode

_COLUMN = {"job": "job_json"}
"""Table columns named other than their field."""
_JOB_COLUMNS = ", ".join(_COLUMN.get(name, name) for name in JOB_FIELDS)


def _job_from_row(row: Sequence[Any]) -> JobEntry:
    fields = dict(zip(JOB_FIELDS, row, strict=True))
    return job_from_fields({**fields, "job": json.loads(fields["job"])})


def _match_sql(match: JobMatch) -> tuple[str, list[Any]]:
    """``match`` as `` AND ...`` conditions and their parameters."""
    conditions: list[str] = []
    params: list[Any] = []
    for name, value in match_fields(match).items():
        if name == "state":
            conditions.append(f"state IN ({', '.join('?' * len(value))})" if value else "0")
            params.extend(value)
        elif value is None:
            conditions.append(f"{name} IS NULL")
        else:
            conditions.append(f"{name} {'<' if name == 'updated_at' else '='} ?")
            params.append(encode(value))
    return "".join(f" AND {c}" for c in conditions), params


def _change_sql(change: JobChange) -> tuple[str, list[Any]]:
    """``change`` as ``SET`` assignments and their parameters."""
    sets, increment = change_fields(change)
    assignments = [f"{_COLUMN.get(name, name)} = ?" for name in sets]
    if increment:
        assignments.append("attempts = attempts + 1")
    return ", ".join(assignments), [encode(value) for value in sets.values()]


class SqliteJobRegistry(SqliteConnection, JobRegistry):
    """Registered jobs in the ``jobs`` table."""

    def insert_jobs(self, entries: Sequence[JobEntry]) -> set[tuple[str, str]]:
        wanted: dict[tuple[str, str], JobEntry] = {}
        for entry in entries:
            wanted.setdefault((entry.analysis, entry.partition_key), entry)
        if not wanted:
            return set()
        conn = self._connection()
        by_analysis: dict[str, list[str]] = {}
        for analysis, key in wanted:
            by_analysis.setdefault(analysis, []).append(key)
        # One write transaction: the lookup and the inserts see the same registry, and a concurrent
        # registration of the same keys waits for this one.
        with self._transaction(conn):
            known = {
                (analysis, row[0])
                for analysis, keys in by_analysis.items()
                for row in self._select_in(
                    conn,
                    "SELECT partition_key FROM jobs WHERE analysis = ? AND",
                    "partition_key",
                    keys,
                    [analysis],
                )
            }
            new = [pair for pair in wanted if pair not in known]
            if new:
                self._execute(
                    conn,
                    f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join('?' * len(JOB_FIELDS))})",
                    [[encode(value) for value in job_fields(wanted[pair]).values()] for pair in new],
                    many=True,
                )
        return set(new)

    def get_jobs(self, analysis: str, partition_keys: Iterable[str]) -> dict[str, JobEntry]:
        keys = list(dict.fromkeys(partition_keys))
        if not keys:
            return {}
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE analysis = ? AND"
        rows = self._select_in(self._connection(), sql, "partition_key", keys, [analysis])
        return {entry.partition_key: entry for entry in map(_job_from_row, rows)}

    def list_jobs(
        self, analysis: str | None = None, states: Iterable[JobState] | None = None
    ) -> list[JobEntry]:
        where, params = _match_sql(JobMatch(states=None if states is None else frozenset(states)))
        if analysis is not None:
            where += " AND analysis = ?"
            params.append(analysis)
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE 1{where} ORDER BY created_at, rowid"
        return [_job_from_row(row) for row in self._execute(self._connection(), sql, params).fetchall()]

    def _find_jobs(
        self, analysis: str, match: JobMatch, order: JobOrder, after_key: str | None, limit: int
    ) -> list[JobEntry]:
        where, params = _match_sql(match)
        if after_key is not None:
            where += " AND partition_key > ?"
            params.append(after_key)
        order_by = ORDER_FIELD[order] + ("" if order == "key" else ", rowid")
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE analysis = ?{where} ORDER BY {order_by} LIMIT ?"
        cursor = self._execute(self._connection(), sql, [analysis, *params, limit])
        return [_job_from_row(row) for row in cursor.fetchall()]

    def update_each_grouped(
        self, analysis: str, updates: Sequence[tuple[Sequence[str], JobMatch, JobChange]]
    ) -> int:
        if not updates:
            return 0
        conn = self._connection()
        changed = 0
        with self._transaction(conn):
            for keys, match, change in updates:
                where, where_params = _match_sql(match)
                assignments, set_params = _change_sql(change)
                extra = len(where_params) + len(set_params) + 1
                for condition, params in self._in_chunks(conn, "partition_key", list(keys), extra):
                    cursor = self._execute(
                        conn,
                        f"UPDATE jobs SET {assignments} WHERE analysis = ? AND {condition}{where}",
                        [*set_params, analysis, *params, *where_params],
                    )
                    changed += max(cursor.rowcount, 0)
        return changed
