"""Item 2: the skip check (is this job's record already there?) for N jobs against a store of N records.

Half of the checked fingerprints are recorded. Every way runs on the same store file / server in the
same process and must find the same recorded jobs.

**Ours**: one batched ``store.existing_fingerprints(analysis, fingerprints)`` call on a store whose
connection is open already: the product keeps one store per process
(``analysis_wrapper/resources/records.py``, ``StoreResource.get_store``), so a sensor tick or a
CLI run does not connect for its check.

**The capsule's way** (the headline comparison, target ≥ 50x on SQLite), as analysis-pipeline-utils
0.2.8 does it (installed in the dev virtualenv, ``site-packages/analysis_pipeline_utils/``):

* ``utils_analysis_dispatch.py``, the dispatcher's filter (``if filter_processed and
  docdb_record_exists(process.code)``, line ~457), and ``utils_analysis_wrapper.py``, the wrapper's
  loop over input models (``if docdb_record_exists(process.code)``, line ~129): one check per job,
  inside a plain ``for`` loop, so one job after another.
* ``metadata.py``, ``docdb_record_exists``: ``len(get_docdb_records(process_code))`` (1 or more:
  exists).
* ``metadata.py``, ``get_docdb_records``: ``client = get_docdb_client()``, then
  ``client.retrieve_docdb_records(filter_query={"name": processing_prefix(process_code)})``: no
  projection, so the full records come back.
* ``metadata.py``, ``get_docdb_client``: builds a NEW ``MetadataDbClient`` on every call, so every job
  gets a new client.
* ``result_files.py``, ``processing_prefix``: the record name is the sha256 of the code model's JSON
  (our records' ``name`` is the fingerprint too).
* aind-data-access-api 1.x (the capsule pins ``>=1.10,<2``; not installed here), ``document_db.py``: a
  ``MetadataDbClient`` has its own ``requests`` session, so a new client means a new HTTPS connection;
  its ``retrieve_docdb_records`` asks ``find`` for pages until one comes back empty: one request when
  nothing matches, two when a record does.

Here each job does the same against our stores: open a new client (SQLite: ``SqliteStore(path)``,
which is a new sqlite3 connection with the store's setup statements; mongomock: a new
``MongoClient`` on the same in-memory server), fetch the full matching records (SQLite:
``get_record``, by the key, which is the name; mongomock: ``find({"name": fp})`` read to the end, as the
capsule's filter does), count them, close the client. Not reproduced, which favours the capsule: the
new HTTPS connection and the API gateway in front of the database, the second (empty) page request,
and hashing the code model. Both sides start with the fingerprints already computed (ours are
computed before the check too).

**Easier comparisons, also reported** (no target), so the harder one is not the only one shown:
a per-job ``get_record`` on the warm connection; a per-job existence query on the warm connection
(``existing_fingerprints(analysis, [fp])``); and on SQLite a bare ``sqlite3.connect`` per job with
the full record read, without the store's connection setup.

Counted for each way: lookups (statements that look up records), statements in all (SQLite: the
store's ``query_count``, which includes the connection setup), and clients opened: none during our
check (the process's one store connection is reported as 1), one per job on the capsule's way.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import Entry, RunOptions, compared, median, stopwatch
from benchmarks.records import fingerprint, record

ANALYSIS = "bench_skip"
DATABASE = "benchmark"
BATCHED_REPEATS = 11
"""Our side takes milliseconds: timed more often than the per-job ways, for a steadier median."""
MONGOMOCK_SAMPLE = 500
"""mongomock answers each query by scanning its documents in Python (about 20 ms per query at 10,000
records), so the per-job ways are timed on an evenly spaced sample of this many jobs and scaled up."""

CAPSULE = "capsule: new client + full records per job"
WARM_RECORD = "get_record per job, warm connection"
WARM_EXISTS = "existence query per job, warm connection"
BARE_SQLITE = "bare sqlite3.connect + full record per job"


@dataclass
class Measured:
    """One way of checking: seconds (median), what it sent, what it found."""

    seconds: float
    lookups: int
    statements: int
    clients: int
    found: int

    def scaled(self, factor: float) -> Measured:
        return Measured(
            self.seconds * factor,
            round(self.lookups * factor),
            round(self.statements * factor),
            round(self.clients * factor),
            round(self.found * factor),
        )


@dataclass
class Tally:
    """What one pass of a way sent (the pass adds to it)."""

    lookups: int = 0
    statements: int = 0
    clients: int = 0


Way = Callable[[list[str], Tally], int]
"""Checks the fingerprints one way, adds what it sent to the tally, returns how many are recorded."""


def _fill(store: Any, n: int) -> None:
    for i in range(n):
        fp = fingerprint(i)
        store.insert_record(
            ANALYSIS,
            record(fp, ANALYSIS, f"/results/{fp}", {"analysis_name": ANALYSIS, "i": i}, {"value": i}),
        )


def _timed(way: Way, fps: list[str], repeats: int) -> Measured:
    times: list[float] = []
    tally, found = Tally(), 0
    for _ in range(repeats):
        tally = Tally()
        with stopwatch() as t:
            found = way(fps, tally)
        times.append(t[0])
    return Measured(median(times), tally.lookups, tally.statements, tally.clients, found)


def _measure(
    ways: dict[str, Way],
    batched: Way,
    checked: list[str],
    repeats: tuple[int, int],
    sample: int | None,
) -> dict[str, Measured]:
    """``batched`` on all of ``checked`` (``repeats[0]`` times); each of ``ways`` (``repeats[1]``
    times) on all of them, or on an evenly spaced ``sample`` of them, scaled up to all."""
    batched(checked[:10], Tally())  # the process's connection and indexes: not part of the check
    results = {"batched": _timed(batched, checked, repeats[0])}
    subset, scale = checked, 1.0
    if sample and sample < len(checked):
        step = len(checked) / sample
        subset = [checked[int(k * step)] for k in range(sample)]
        scale = len(checked) / len(subset)
    for name, way in ways.items():
        results[name] = _timed(way, subset, repeats[1]).scaled(scale)
    return results


def _warm_ways(store: Any) -> tuple[Way, dict[str, Way]]:
    """Ours, and the per-job ways on the store's own (warm) connection."""

    def counted(tally: Tally, action: Callable[[], int]) -> int:
        before = store.query_count
        found = action()
        sent = store.query_count - before
        tally.lookups += sent
        tally.statements += sent
        return found

    def batched(fps: list[str], tally: Tally) -> int:
        return counted(tally, lambda: len(store.existing_fingerprints(ANALYSIS, fps)))

    def per_job_record(fps: list[str], tally: Tally) -> int:
        return counted(tally, lambda: sum(store.get_record(ANALYSIS, fp) is not None for fp in fps))

    def per_job_exists(fps: list[str], tally: Tally) -> int:
        return counted(tally, lambda: sum(bool(store.existing_fingerprints(ANALYSIS, [fp])) for fp in fps))

    return batched, {WARM_RECORD: per_job_record, WARM_EXISTS: per_job_exists}


def _client_per_job(
    open_client: Callable[[], Any],
    fetch: Callable[[Any, str], list[Any]],
    statements: Callable[[Any], int] = lambda client: 1,
) -> Way:
    """The capsule's loop: for each job, one after another, a new client (``get_docdb_client()``), the
    full records whose name is the job's (``retrieve_docdb_records``), the client closed; recorded if
    one or more came back (``docdb_record_exists``)."""

    def way(fps: list[str], tally: Tally) -> int:
        found = 0
        for fp in fps:
            client = open_client()
            try:
                records = fetch(client, fp)
            finally:
                client.close()
            tally.clients += 1
            tally.lookups += 1
            tally.statements += statements(client)
            found += len(records) >= 1
        return found

    return way


def _sqlite_capsule_ways(path: Path) -> dict[str, Way]:
    from analysis_wrapper.store.sqlite import SqliteStore

    def full_records(store: SqliteStore, fp: str) -> list[dict[str, Any]]:
        found = store.get_record(ANALYSIS, fp)  # the name is the key: one record at most
        return [] if found is None else [found]

    def bare_records(conn: sqlite3.Connection, fp: str) -> list[dict[str, Any]]:
        rows = conn.execute("SELECT record_json FROM records WHERE fingerprint = ?", [fp]).fetchall()
        return [json.loads(row[0]) for row in rows]

    return {
        # query_count: the lookup and the new connection's setup statements
        CAPSULE: _client_per_job(lambda: SqliteStore(path), full_records, lambda c: c.query_count),
        BARE_SQLITE: _client_per_job(lambda: sqlite3.connect(str(path)), bare_records),
    }


def _mongomock_capsule_way(server: Any, store: Any) -> dict[str, Way]:
    import mongomock

    collection = store.collection or ANALYSIS  # where MongoStore keeps this analysis's records

    def full_records(client: Any, fp: str) -> list[dict[str, Any]]:
        return list(client[DATABASE][collection].find({"name": fp}))

    # A new client per job on the same in-memory server (mongomock's ``_store``). Not a new
    # MongoStore: that would also create its indexes, which the capsule never does.
    return {CAPSULE: _client_per_job(lambda: mongomock.MongoClient(_store=server._store), full_records)}


def _per_fp(seconds: float, n: int) -> str:
    return f"{seconds / n * 1e6:,.1f} µs"


def _entries(backend: str, n: int, results: dict[str, Measured], note: str | None) -> list[Entry]:
    ours = results["batched"]
    wrong = {name: m.found for name, m in results.items() if m.found != n // 2}
    if wrong:
        raise AssertionError(
            f"{backend}: ways that do not find the {n // 2:,} recorded of {n:,} fingerprints: {wrong}"
        )
    capsule = results[CAPSULE]
    prefix = f"skip check {n:,} fps, {backend}"
    target = "≥ 50x speed-up" if backend == "SQLite" else None

    def against(name: str, label: str, target: str | None = None) -> Entry:
        other = results[name]
        sent = f"{other.lookups:,} lookups"
        if other.clients:
            sent += f", {other.clients:,} clients opened"
        if other.statements != other.lookups:
            sent += f", {other.statements:,} statements in all"
        text = (
            f"ours {_per_fp(ours.seconds, n)}/fp, {ours.lookups:,} lookup{'s' * (ours.lookups > 1)}, "
            f"no client opened; "
            f"{label}: {_per_fp(other.seconds, n)}/job, {sent}"
        )
        return compared(
            f"{prefix}: batched vs {label}",
            ours.seconds,
            "s",
            name,
            other.seconds,
            "speed-up",
            target=target,
            met=(lambda r: r >= 50) if target else None,
            note=f"{text}; {note}" if note else text,
        )

    entries = [against(CAPSULE, "capsule", target)]
    entries += [against(name, name) for name in (WARM_RECORD, WARM_EXISTS, BARE_SQLITE) if name in results]
    entries.append(
        compared(
            f"{prefix}: queries sent",
            ours.lookups,
            "queries",
            CAPSULE,
            capsule.lookups,
            "reduction",
            note=(
                f"statements in all, with each new connection's setup: ours {ours.statements:,}, "
                f"capsule {capsule.statements:,}"
                if capsule.statements != capsule.lookups
                else None
            ),
        )
    )
    entries.append(
        compared(
            f"{prefix}: clients opened",
            ours.clients + 1,
            "clients",
            CAPSULE,
            capsule.clients,
            "reduction",
            note=(
                "ours: the store's one connection per process, opened before the first check and "
                "reused by every check (none opened during the check); capsule: one per job"
            ),
        )
    )
    return entries


def run(options: RunOptions) -> list[Entry]:
    from analysis_wrapper.store.sqlite import SqliteStore

    n = options.sizes.fingerprints
    repeats = options.sizes.skip_repeats
    checked = [fingerprint(i) for i in range(n // 2, n // 2 + n)]  # the first half is recorded
    entries: list[Entry] = []

    options.log(f"  SQLite: filling a store with {n:,} records")
    path = Path(options.workdir) / "skip_check.sqlite"
    sqlite = SqliteStore(path)
    try:
        _fill(sqlite, n)
        options.log(
            f"  SQLite: checking {n:,} fingerprints: batched, and the capsule's way and others per job"
        )
        batched, ways = _warm_ways(sqlite)
        ways = {**_sqlite_capsule_ways(path), **ways}
        measured = _measure(ways, batched, checked, (max(repeats, BATCHED_REPEATS), repeats), None)
        entries += _entries("SQLite", n, measured, None)
    finally:
        sqlite.close()

    try:
        import mongomock
    except ImportError:
        entries.append(
            Entry(
                name=f"skip check {n:,} fps, mongomock",
                value=None,
                unit="s",
                status="not installed",
                note="mongomock not installed (pip install mongomock)",
            )
        )
        return entries
    from analysis_wrapper.store.mongo import MongoStore

    options.log(f"  mongomock: filling a store with {n:,} records")
    server: Any = mongomock.MongoClient()
    mongo = MongoStore(client=server, database=DATABASE)
    _fill(mongo, n)
    sample = MONGOMOCK_SAMPLE if n > MONGOMOCK_SAMPLE else None
    note = (
        f"per-job ways timed on {MONGOMOCK_SAMPLE} of {n:,} jobs and scaled; mongomock scans in Python"
        if sample
        else "mongomock scans its documents in Python: no server, no network round trip"
    )
    options.log(
        f"  mongomock: checking {n:,} fingerprints: batched, and the capsule's way and others per job"
    )
    batched, ways = _warm_ways(mongo)
    ways = {**_mongomock_capsule_way(server, mongo), **ways}
    mongo_repeats = 1 if sample else repeats  # mongomock's batched query alone takes seconds
    measured = _measure(ways, batched, checked, (mongo_repeats, mongo_repeats), sample)
    entries += _entries("mongomock", n, measured, note)
    return entries
