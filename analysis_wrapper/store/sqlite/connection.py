"""The SQLite file behind :class:`~analysis_wrapper.store.sqlite.SqliteStore`: connection, schema, statements.

Safe for several processes and threads at once: the file runs in WAL mode (readers never block the
writer), every connection waits up to ``busy_timeout_s`` for a lock instead of failing with
"database is locked", and write transactions start with ``BEGIN IMMEDIATE`` so two writers queue up
rather than deadlock on a lock upgrade. Each thread (and each process) opens its own connection,
lazily, on first use.

Batched lookups pass their keys as ONE JSON array parameter (``IN (SELECT value FROM
json_each(?))``), so a statement never comes near SQLite's bound-variable limit (999 on old builds)
and 10,000 keys cost one statement, not one per key. Where SQLite lacks the JSON functions the store
falls back to plain ``IN (?, ?, ...)`` lists of at most 500 variables per statement.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from analysis_wrapper.store.base import StoreError
from analysis_wrapper.store.fields import chunks, iso_utc

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

T = TypeVar("T")


def encode(value: Any) -> Any:
    """A field's value as SQLite stores it: times as fixed-width UTC text, documents as JSON."""
    if isinstance(value, dt.datetime):
        return iso_utc(value)
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    return value


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class SqliteConnection:
    """One SQLite file (parent folders are created), a connection per thread and process."""

    def __init__(self, path: Path | str, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.busy_timeout_s = float(busy_timeout_s)
        self.query_count = 0
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._schema_ready_pid: int | None = None
        self._json_each: bool | None = None

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
    def _execute(
        self, conn: sqlite3.Connection, sql: str, params: Sequence[Any] = (), *, many: bool = False
    ) -> sqlite3.Cursor:
        """One statement (``many``: once per row of ``params``), counted; failures as :class:`StoreError`,
        but a broken unique key as the ``sqlite3.IntegrityError`` its caller turns into its own error."""
        self.query_count += 1
        try:
            return conn.executemany(sql, params) if many else conn.execute(sql, params)
        except sqlite3.IntegrityError:
            raise
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
            for chunk in chunks(keys, JSON_CHUNK):
                yield f"{column} IN (SELECT value FROM json_each(?))", [json.dumps(list(chunk))]
        else:
            for chunk in chunks(keys, MAX_SQL_VARIABLES - other_params):
                yield f"{column} IN ({', '.join('?' * len(chunk))})", list(chunk)

    def _select_in(
        self, conn: sqlite3.Connection, sql: str, column: str, keys: Sequence[str], params: Sequence[Any] = ()
    ) -> list[Any]:
        """The rows of ``sql`` (ending in ``WHERE`` or ``AND``, after ``params``), with ``column IN``
        each chunk of ``keys`` appended: one statement per chunk."""
        rows: list[Any] = []
        for condition, chunk_params in self._in_chunks(conn, column, keys, len(params)):
            rows += self._execute(conn, f"{sql} {condition}", [*params, *chunk_params]).fetchall()
        return rows
