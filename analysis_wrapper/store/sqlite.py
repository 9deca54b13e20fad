"""The embedded default store: job registry and records in one SQLite file.

Safe for several processes and threads at once: the file runs in WAL mode (readers never block the
writer), every connection waits up to ``busy_timeout_s`` for a lock instead of failing with
"database is locked", and write transactions start with ``BEGIN IMMEDIATE`` so two writers queue up
rather than deadlock on a lock upgrade. Each thread (and each process) opens its own connection,
lazily, on first use.

Batched lookups pass their keys as ONE JSON array parameter (``IN (SELECT value FROM
json_each(?))``; the skip check joins ``json_each(?)`` to the records instead), so a statement never
comes near SQLite's bound-variable limit (999 on old builds) and 10,000 keys cost one statement, not
one per key. Where SQLite lacks the JSON functions the store falls back to plain ``IN (?, ?, ...)``
lists of at most 500 variables per statement.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
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
    RecordExistsError,
    Store,
    StoreError,
    utcnow,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
MAX_SQL_VARIABLES = 500
"""Most bound variables one statement uses (SQLite's limit is 999 on old builds, 32766 on new)."""
JSON_CHUNK = 10_000
"""Keys per statement when they travel as one JSON array parameter."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        analysis TEXT NOT NULL,
        partition_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        state TEXT NOT NULL,
        job_json TEXT NOT NULL,
        source TEXT NOT NULL DEFAULT '',
        run_id TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (analysis, partition_key)
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_analysis_state ON jobs (analysis, state)",
    # Schema 2: the sensor's bounded queries (backlog oldest first; retries and stale runs by attempts
    # and last update) read an index range, never the whole registry.
    "CREATE INDEX IF NOT EXISTS jobs_state_created ON jobs (analysis, state, created_at)",
    "CREATE INDEX IF NOT EXISTS jobs_state_attempts_updated ON jobs (analysis, state, attempts, updated_at)",
    """CREATE TABLE IF NOT EXISTS records (
        fingerprint TEXT PRIMARY KEY,
        analysis TEXT NOT NULL,
        record_json TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS records_analysis ON records (analysis)",
    # Schema 3: leases (a fingerprint being computed, a run that is alive), one row per key.
    """CREATE TABLE IF NOT EXISTS leases (
        key TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        token TEXT NOT NULL,
        expires_at TEXT NOT NULL
    )""",
)

_EXISTING_BY_JSON = (
    "SELECT records.fingerprint FROM json_each(?) AS wanted CROSS JOIN records "
    "ON records.fingerprint = wanted.value"
)
"""The recorded ones among a JSON array of fingerprints: one index probe per key."""

_JOB_COLUMNS = (
    "analysis, partition_key, fingerprint, state, job_json, source, run_id, attempts, last_error, "
    "created_at, updated_at"
)

T = TypeVar("T")


def _iso(value: dt.datetime) -> str:
    """ISO-8601 in UTC with a fixed width, so text order is time order."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _parse_iso(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class SqliteStore(Store):
    """Job registry and record store in one SQLite file (parent folders are created)."""

    def __init__(self, path: Path | str, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.busy_timeout_s = float(busy_timeout_s)
        self.query_count = 0
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._schema_ready_pid: int | None = None
        self._json_each: bool | None = None

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # ---- connections --------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        pid = os.getpid()
        if conn is not None and getattr(self._local, "pid", None) == pid:
            return conn
        # A connection inherited through fork() must not be used by the child: open a new one.
        conn = self._open()
        self._local.conn = conn
        self._local.pid = pid
        with self._lock:
            self._connections.append(conn)
        if self._schema_ready_pid != pid:
            with self._lock:
                if self._schema_ready_pid != pid:
                    self._create_schema(conn)
                    self._schema_ready_pid = pid
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                str(self.path),
                timeout=self.busy_timeout_s,
                isolation_level=None,  # autocommit; write transactions say BEGIN IMMEDIATE themselves
                check_same_thread=False,  # only its own thread uses it; close() may run elsewhere
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the SQLite store {self.path}: {exc}") from exc
        try:
            self._retry_busy(lambda: self._setup(conn))
        except BaseException:
            conn.close()
            raise
        return conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        self._execute(conn, f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        mode = self._execute(conn, "PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("SQLite store %s: journal mode is %s, not wal", self.path, mode)
        self._execute(conn, "PRAGMA synchronous = NORMAL")

    def _retry_busy(self, action: Callable[[], T]) -> T:
        """Run a setup step, retrying while another process holds the lock (switching to WAL
        or creating the schema can report "locked" without waiting for the busy timeout)."""
        deadline = time.monotonic() + self.busy_timeout_s
        delay = 0.01
        while True:
            try:
                return action()
            except StoreError as exc:
                cause = exc.__cause__
                busy = isinstance(cause, sqlite3.OperationalError) and _is_busy(cause)
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        version = self._execute(conn, "PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the SQLite store {self.path} has schema version {version}; this code knows only "
                f"up to {SCHEMA_VERSION}: upgrade analysis_wrapper"
            )
        if version == SCHEMA_VERSION:
            return

        def create() -> None:
            with self._transaction(conn):
                for statement in _SCHEMA:
                    self._execute(conn, statement)
                self._execute(conn, f"PRAGMA user_version = {SCHEMA_VERSION}")

        self._retry_busy(create)

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with suppress(sqlite3.Error):  # closing is best effort
                conn.close()
        self._local = threading.local()
        self._schema_ready_pid = None

    # ---- statements ---------------------------------------------------------------------------
    def _execute(self, conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        self.query_count += 1
        try:
            return conn.execute(sql, params)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path}: {exc}") from exc

    def _executemany(self, conn: sqlite3.Connection, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.query_count += 1
        try:
            conn.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path}: {exc}") from exc

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        """A write transaction: takes the write lock at once (waiting up to the busy timeout)."""
        self._execute(conn, "BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        self._execute(conn, "COMMIT")

    def _uses_json_each(self, conn: sqlite3.Connection) -> bool:
        if self._json_each is None:
            try:
                conn.execute("SELECT value FROM json_each('[1]')").fetchall()
                self._json_each = True
            except sqlite3.OperationalError:
                self._json_each = False
        return self._json_each

    def _in_chunks(
        self, conn: sqlite3.Connection, column: str, keys: Sequence[str], other_params: int = 0
    ) -> Iterator[tuple[str, list[Any]]]:
        """``column IN (...)`` conditions with their parameters, each covering a chunk of ``keys``."""
        if self._uses_json_each(conn):
            for chunk in _chunks(keys, JSON_CHUNK):
                yield f"{column} IN (SELECT value FROM json_each(?))", [json.dumps(list(chunk))]
        else:
            for chunk in _chunks(keys, MAX_SQL_VARIABLES - other_params):
                yield f"{column} IN ({', '.join('?' * len(chunk))})", list(chunk)

    # ---- job registry -------------------------------------------------------------------------
    @staticmethod
    def _job_row(entry: JobEntry) -> tuple[Any, ...]:
        return (
            entry.analysis,
            entry.partition_key,
            entry.fingerprint,
            JobState(entry.state).value,
            json.dumps(dict(entry.job), default=str),
            entry.source or "",
            entry.run_id,
            int(entry.attempts),
            entry.last_error,
            _iso(entry.created_at),
            _iso(entry.updated_at),
        )

    @staticmethod
    def _job_from_row(row: Sequence[Any]) -> JobEntry:
        (analysis, key, fingerprint, state, job_json, source, run_id, attempts, error, created, updated) = row
        return JobEntry(
            analysis=analysis,
            partition_key=key,
            fingerprint=fingerprint,
            job=json.loads(job_json),
            source=source or "",
            state=JobState(state),
            run_id=run_id,
            attempts=int(attempts),
            last_error=error,
            created_at=_parse_iso(created),
            updated_at=_parse_iso(updated),
        )

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
            known: set[tuple[str, str]] = set()
            for analysis, keys in by_analysis.items():
                for condition, params in self._in_chunks(conn, "partition_key", keys, 1):
                    cursor = self._execute(
                        conn,
                        f"SELECT partition_key FROM jobs WHERE analysis = ? AND {condition}",
                        [analysis, *params],
                    )
                    known.update((analysis, row[0]) for row in cursor.fetchall())
            new = [pair for pair in wanted if pair not in known]
            if new:
                self._executemany(
                    conn,
                    f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [self._job_row(wanted[pair]) for pair in new],
                )
        return set(new)

    def get_jobs(self, analysis: str, partition_keys: Iterable[str]) -> dict[str, JobEntry]:
        keys = list(dict.fromkeys(partition_keys))
        if not keys:
            return {}
        conn = self._connection()
        found: dict[str, JobEntry] = {}
        for condition, params in self._in_chunks(conn, "partition_key", keys, 1):
            sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE analysis = ? AND {condition}"
            cursor = self._execute(conn, sql, [analysis, *params])
            for row in cursor.fetchall():
                entry = self._job_from_row(row)
                found[entry.partition_key] = entry
        return found

    def list_jobs(
        self, analysis: str | None = None, states: Iterable[JobState] | None = None
    ) -> list[JobEntry]:
        where, params = self._match_sql(JobMatch(states=None if states is None else frozenset(states)))
        if analysis is not None:
            where += " AND analysis = ?"
            params.append(analysis)
        conn = self._connection()
        cursor = self._execute(
            conn, f"SELECT {_JOB_COLUMNS} FROM jobs WHERE 1{where} ORDER BY created_at, rowid", params
        )
        return [self._job_from_row(row) for row in cursor.fetchall()]

    def _find_jobs(
        self, analysis: str, match: JobMatch, order: JobOrder, after_key: str | None, limit: int
    ) -> list[JobEntry]:
        where, match_params = self._match_sql(match)
        conditions = ["analysis = ?" + where]
        params: list[Any] = [analysis, *match_params]
        if after_key is not None:
            conditions.append("partition_key > ?")
            params.append(after_key)
        order_by = {"created": "created_at, rowid", "updated": "updated_at, rowid", "key": "partition_key"}[
            order
        ]
        conn = self._connection()
        cursor = self._execute(
            conn,
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {' AND '.join(conditions)} ORDER BY {order_by} LIMIT ?",
            [*params, limit],
        )
        return [self._job_from_row(row) for row in cursor.fetchall()]

    @staticmethod
    def _match_sql(match: JobMatch) -> tuple[str, list[Any]]:
        conditions: list[str] = []
        params: list[Any] = []
        if match.states is not None:
            values = sorted(JobState(state).value for state in match.states)
            conditions.append(f"state IN ({', '.join('?' * len(values))})" if values else "0")
            params.extend(values)
        if match.run_id is None:
            conditions.append("run_id IS NULL")
        elif match.run_id is not ANY:
            conditions.append("run_id = ?")
            params.append(match.run_id)
        if match.attempts is not None:
            conditions.append("attempts = ?")
            params.append(int(match.attempts))
        if match.fingerprint is not None:
            conditions.append("fingerprint = ?")
            params.append(match.fingerprint)
        if match.updated_before is not None:
            conditions.append("updated_at < ?")
            params.append(_iso(match.updated_before))
        return "".join(f" AND {c}" for c in conditions), params

    @staticmethod
    def _change_sql(change: JobChange) -> tuple[str, list[Any]]:
        assignments = ["state = ?", "updated_at = ?"]
        params: list[Any] = [JobState(change.state).value, _iso(utcnow())]
        for column, value in (("run_id", change.run_id), ("last_error", change.error)):
            if value is not KEEP:
                assignments.append(f"{column} = ?")
                params.append(value)
        if change.attempts == "increment":
            assignments.append("attempts = attempts + 1")
        elif change.attempts == "reset":
            assignments.append("attempts = 0")
        if change.fingerprint is not None:
            assignments += ["fingerprint = ?", "job_json = ?", "source = ?"]
            params += [
                change.fingerprint,
                json.dumps(dict(change.job or {}), default=str),
                change.source or "",
            ]
        return ", ".join(assignments), params

    def update_jobs(
        self, analysis: str, partition_keys: Iterable[str], match: JobMatch, change: JobChange
    ) -> int:
        keys = list(dict.fromkeys(partition_keys))
        if not keys:
            return 0
        return self.update_each_grouped(analysis, [(keys, match, change)])

    def update_each(self, analysis: str, updates: Sequence[tuple[str, JobMatch, JobChange]]) -> int:
        return self.update_each_grouped(analysis, [([key], match, change) for key, match, change in updates])

    def update_each_grouped(
        self, analysis: str, updates: Sequence[tuple[Sequence[str], JobMatch, JobChange]]
    ) -> int:
        """Every conditional update in one write transaction; how many jobs changed."""
        if not updates:
            return 0
        conn = self._connection()
        changed = 0
        with self._transaction(conn):
            for keys, match, change in updates:
                where, where_params = self._match_sql(match)
                assignments, set_params = self._change_sql(change)
                extra = len(where_params) + len(set_params) + 1
                for condition, params in self._in_chunks(conn, "partition_key", list(keys), extra):
                    cursor = self._execute(
                        conn,
                        f"UPDATE jobs SET {assignments} WHERE analysis = ? AND {condition}{where}",
                        [*set_params, analysis, *params, *where_params],
                    )
                    changed += max(cursor.rowcount, 0)
        return changed

    # ---- record store -------------------------------------------------------------------------
    def existing_fingerprints(self, analysis: str, fingerprints: Iterable[str]) -> set[str]:
        # The fingerprint is the record's key across analyses (it hashes the analysis name), so the
        # lookup is by key alone, exactly as the unique key that insert_record enforces.
        keys = list(dict.fromkeys(fingerprints))
        if not keys:
            return set()
        conn = self._connection()
        if len(keys) == 1:  # the per-job check (a run, a run's end): a plain equality is the cheapest
            row = self._execute(conn, "SELECT 1 FROM records WHERE fingerprint = ?", keys).fetchone()
            return set(keys) if row is not None else set()
        found: set[str] = set()
        if self._uses_json_each(conn):
            # Walk the keys and probe the fingerprint index once per key. ``fingerprint IN (SELECT
            # value FROM json_each(?))`` first sorts all keys into a temporary b-tree: about 1.6x slower
            # for 10,000 keys. CROSS JOIN keeps json_each as the outer loop (SQLite never reorders it).
            for chunk in _chunks(keys, JSON_CHUNK):
                cursor = self._execute(conn, _EXISTING_BY_JSON, [json.dumps(list(chunk))])
                found.update(row[0] for row in cursor.fetchall())
            return found
        for condition, params in self._in_chunks(conn, "fingerprint", keys):
            cursor = self._execute(conn, f"SELECT fingerprint FROM records WHERE {condition}", params)
            found.update(row[0] for row in cursor.fetchall())
        return found

    def insert_record(self, analysis: str, record: Mapping[str, Any]) -> None:
        if "_id" not in record:
            raise ValueError("a record needs an '_id' (its fingerprint)")
        fingerprint = str(record["_id"])
        conn = self._connection()
        try:
            self._execute(
                conn,
                "INSERT INTO records (fingerprint, analysis, record_json, created_at) VALUES (?, ?, ?, ?)",
                [fingerprint, analysis, json.dumps(dict(record), default=str), _iso(utcnow())],
            )
        except sqlite3.IntegrityError:
            raise RecordExistsError(fingerprint) from None

    def supersede_record(self, analysis: str, fingerprint: str, kept: Mapping[str, Any]) -> None:
        """Move the record of ``fingerprint`` aside as ``kept`` (stored under ``kept['_id']``, keeping
        the old record's time), freeing the fingerprint for a new record: one transaction."""
        kept_id = str(kept["_id"])
        if kept_id == fingerprint:
            raise ValueError("the superseded record needs an '_id' other than the fingerprint")
        conn = self._connection()
        try:
            with self._transaction(conn):
                self._execute(
                    conn,
                    "INSERT INTO records (fingerprint, analysis, record_json, created_at) VALUES (?, ?, ?, "
                    "COALESCE((SELECT created_at FROM records WHERE fingerprint = ?), ?))",
                    [kept_id, analysis, json.dumps(dict(kept), default=str), fingerprint, _iso(utcnow())],
                )
                self._execute(conn, "DELETE FROM records WHERE fingerprint = ?", [fingerprint])
        except sqlite3.IntegrityError:
            raise RecordExistsError(kept_id) from None

    def get_record(self, analysis: str, fingerprint: str) -> dict[str, Any] | None:
        conn = self._connection()
        row = self._execute(
            conn, "SELECT record_json FROM records WHERE fingerprint = ?", [fingerprint]
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def find_records(
        self,
        analysis: str | None = None,
        *,
        parameters: Mapping[str, Any] | None = None,
        code_version: str | None = None,
        include_superseded: bool = False,
    ) -> list[dict[str, Any]]:
        conn = self._connection()
        where: list[str] = []
        args: list[Any] = []
        code = "$.processing.data_processes[0].code"
        if analysis is not None:
            where.append("analysis = ?")
            args.append(analysis)
        if code_version is not None:
            where.append(f"json_extract(record_json, '{code}.version') = ?")
            args.append(code_version)
        for name, value in (parameters or {}).items():
            path = f'{code}.parameters."{name.replace(chr(34), "")}"'
            if value is None:
                where.append("json_type(record_json, ?) = 'null'")
                args.append(path)
            elif isinstance(value, (list, dict)):
                where.append("json_extract(record_json, ?) = json(?)")
                args.extend([path, json.dumps(value)])
            else:
                where.append("json_extract(record_json, ?) = ?")
                args.extend([path, value])
        if not include_superseded:
            where.append("json_extract(record_json, '$.analysis_wrapper.superseded_by') IS NULL")
        sql = "SELECT record_json FROM records"
        if where:
            sql += " WHERE " + " AND ".join(where)
        cursor = self._execute(conn, sql + " ORDER BY created_at, rowid", args)
        return [dict(json.loads(row[0])) for row in cursor.fetchall()]

    # ---- leases -------------------------------------------------------------------------------
    def claim_lease(self, lease: Lease, now: dt.datetime, *, replacing_token: str | None = None) -> bool:
        conn = self._connection()
        # One statement: insert, or take over a row that expired or that we (or a dead holder) hold.
        cursor = self._execute(
            conn,
            "INSERT INTO leases (key, run_id, host, pid, token, expires_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET run_id = excluded.run_id, host = excluded.host, "
            "pid = excluded.pid, token = excluded.token, expires_at = excluded.expires_at "
            "WHERE leases.expires_at < ? OR leases.token = ? OR leases.token = ?",
            [
                lease.key,
                lease.run_id,
                lease.host,
                int(lease.pid),
                lease.token,
                _iso(lease.expires_at),
                _iso(now),
                lease.token,
                replacing_token or lease.token,
            ],
        )
        return cursor.rowcount > 0

    def renew_lease(self, key: str, token: str, expires_at: dt.datetime) -> bool:
        cursor = self._execute(
            self._connection(),
            "UPDATE leases SET expires_at = ? WHERE key = ? AND token = ?",
            [_iso(expires_at), key, token],
        )
        return cursor.rowcount > 0

    def release_lease(self, key: str, token: str) -> None:
        self._execute(self._connection(), "DELETE FROM leases WHERE key = ? AND token = ?", [key, token])

    def get_leases(self, keys: Iterable[str]) -> dict[str, Lease]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        conn = self._connection()
        found: dict[str, Lease] = {}
        for condition, params in self._in_chunks(conn, "key", wanted):
            cursor = self._execute(
                conn,
                f"SELECT key, run_id, host, pid, token, expires_at FROM leases WHERE {condition}",
                params,
            )
            for key, run_id, host, pid, token, expires in cursor.fetchall():
                found[key] = Lease(key, run_id, host, int(pid), token, _parse_iso(expires))
        return found
