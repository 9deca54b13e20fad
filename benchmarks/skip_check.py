"""Item 2: the skip check (is this job's record already there?) for N jobs against a store of N records.

Half of the checked fingerprints are recorded. Every way runs on the same store file / server in the
same process and must find the same recorded jobs. ``run``: SQLite (the embedded store); ``run_mongo``
(``skip_check_mongo``): a real MongoDB wire-protocol server, SecantusDB (``secantusd-py``, a dev
dependency) started on 127.0.0.1 as the tests start it, so every query is a TCP round trip to a server
process that plans and executes it (it replaced the mongomock variant, whose in-process Python scans
said little about a server).

**Ours**: one batched ``store.existing_fingerprints(analysis, fingerprints)`` call on a store whose
connection is open already: the product keeps one store per process
(``analysis_wrapper/resources/records.py``, ``StoreResource.get_store``), so a sensor tick or a
CLI run does not connect for its check.

**The capsule's way** (the headline comparison, target ≥ 50x), as analysis-pipeline-utils
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
which is a new sqlite3 connection with the store's setup statements; MongoDB: a new
``pymongo.MongoClient(uri)``, which discovers the replica set and opens its own TCP connection), fetch
the full matching records (SQLite: ``get_record``, by the key, which is the name; MongoDB:
``find({"name": fp})`` read to the end, as the capsule's filter does, on the store's ``name`` index),
count them, close the client. Not reproduced, which favours the capsule: the
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

**The way before, on MongoDB**: ours with ``existing_fingerprints`` sending 10,000 ids per ``$in``
(``store.mongo.connection.ID_CHUNK``, patched for the call; the package now sends 100). SecantusDB
0.7.0b3 looks ``{_id: {$in: [...]}}`` up by ``_id``, then checks every document found against the
``$in`` list candidate by candidate (``secantus/query.py``: ``any(... for candidate in arg)``), so a query
of k ids of which half are recorded costs about k²/4 comparisons in Python: 10,000 ids take tens of
seconds, 10,000 absent ids milliseconds. On SecantusDB ours is timed once when a pass takes longer than
``BATCHED_BUDGET_S``, and the per-job ways once (a pass over 10,000 jobs is its own average).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from benchmarks.common import (
    Entry,
    RunOptions,
    ServerMissing,
    compared,
    median,
    secantus_server,
    server_missing,
    stopwatch,
)
from benchmarks.records import fingerprint, record

ANALYSIS = "bench_skip"
DATABASE = "benchmark"
BATCHED_REPEATS = 11
"""Our side takes milliseconds: timed more often than the per-job ways, for a steadier median."""
BATCHED_BUDGET_S = 10.0
"""On SecantusDB ours is timed again only while its passes took less than this in all."""
TARGET = "≥ 50x speed-up"
SECANTUS = "SecantusDB"
FILL_CHUNK = 1_000
"""Records per ``insert_many`` when filling the server (about 8 MB per command)."""
BEFORE_ID_CHUNK = 10_000
"""The way before: ids per ``$in`` in ``existing_fingerprints`` (the package now ships ``ID_CHUNK`` = 100)."""

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


def _timed(way: Way, fps: list[str], repeats: int, budget_s: float | None = None) -> Measured:
    """The median of ``repeats`` passes; with ``budget_s``, no further pass once that much time went."""
    times: list[float] = []
    tally, found = Tally(), 0
    for _ in range(repeats):
        tally = Tally()
        with stopwatch() as t:
            found = way(fps, tally)
        times.append(t[0])
        if budget_s is not None and sum(times) > budget_s:
            break
    return Measured(median(times), tally.lookups, tally.statements, tally.clients, found)


def _measure(
    ways: dict[str, Way],
    batched: Way,
    checked: list[str],
    repeats: tuple[int, int],
    sample: int | None,
    budget_s: float | None = None,
) -> dict[str, Measured]:
    """``batched`` on all of ``checked`` (``repeats[0]`` times); each of ``ways`` (``repeats[1]``
    times) on all of them, or on an evenly spaced ``sample`` of them, scaled up to all. ``budget_s``:
    ours is not timed again once that much time went (SecantusDB's batched check takes seconds)."""
    batched(checked[:10], Tally())  # the process's connection and indexes: not part of the check
    results = {"batched": _timed(batched, checked, repeats[0], budget_s)}
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


def _mongo_capsule_way(uri: str, collection: str) -> dict[str, Way]:
    """On the real server: a new ``pymongo.MongoClient`` per job (the replica set discovered, a new TCP
    connection, the server's handshake), the full records by ``name``, read to the end, the client
    closed. Not a new MongoStore: that would also create its indexes, which the capsule never does."""
    import pymongo

    def full_records(client: Any, fp: str) -> list[dict[str, Any]]:
        return list(client[DATABASE][collection].find({"name": fp}))

    return {
        CAPSULE: _client_per_job(
            lambda: pymongo.MongoClient(uri, retryWrites=False, serverSelectionTimeoutMS=10_000), full_records
        )
    }


def _per_fp(seconds: float, n: int) -> str:
    return f"{seconds / n * 1e6:,.1f} µs"


def _entries(
    backend: str, n: int, results: dict[str, Measured], note: str | None, target: str | None = None
) -> list[Entry]:
    ours = results["batched"]
    wrong = {name: m.found for name, m in results.items() if m.found != n // 2}
    if wrong:
        raise AssertionError(
            f"{backend}: ways that do not find the {n // 2:,} recorded of {n:,} fingerprints: {wrong}"
        )
    capsule = results[CAPSULE]
    prefix = f"skip check {n:,} fps, {backend}"

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
    """The skip check on SQLite (the embedded store)."""
    from analysis_wrapper.store.sqlite import SqliteStore

    n = options.sizes.fingerprints
    repeats = options.sizes.skip_repeats
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
        measured = _measure(ways, batched, _checked(n), (max(repeats, BATCHED_REPEATS), repeats), None)
        return _entries("SQLite", n, measured, None, TARGET)
    finally:
        sqlite.close()


def _checked(n: int) -> list[str]:
    return [fingerprint(i) for i in range(n // 2, n // 2 + n)]  # the first half is recorded


def _fill_mongo(uri: str, store: Any, n: int) -> float:
    """``n`` records into the store's collection with ``insert_many`` in chunks (one ``insert_record``
    round trip each would take as long as the benchmark); the store's indexes first, as the product
    makes them. Returns the seconds."""
    import pymongo

    start = time.perf_counter()
    store.existing_fingerprints(ANALYSIS, ["warm-up"])  # MongoStore creates its indexes (name, created)
    client: Any = pymongo.MongoClient(uri, retryWrites=False)
    try:
        collection = client[DATABASE][store.collection or ANALYSIS]
        for lo in range(0, n, FILL_CHUNK):
            docs = []
            for i in range(lo, min(n, lo + FILL_CHUNK)):
                fp = fingerprint(i)
                params = {"analysis_name": ANALYSIS, "i": i}
                docs.append(record(fp, ANALYSIS, f"/results/{fp}", params, {"value": i}))
            collection.insert_many(docs, ordered=False)
    finally:
        client.close()
    return time.perf_counter() - start


def _chunked(store: Any, chunk: int) -> Way:
    """Ours with ``existing_fingerprints`` sending ``chunk`` ids per ``$in`` (``ID_CHUNK`` patched for the
    call) instead of what the package ships: the way before, for comparison."""
    import analysis_wrapper.store.mongo.connection as mongo_connection

    def way(fps: list[str], tally: Tally) -> int:
        before = store.query_count
        with mock.patch.object(mongo_connection, "ID_CHUNK", chunk):
            found = len(store.existing_fingerprints(ANALYSIS, fps))
        tally.lookups += store.query_count - before
        tally.statements += store.query_count - before
        return found

    return way


def _measure_mongo(
    options: RunOptions, uri: str, n: int, checked: list[str]
) -> tuple[float, dict[str, Measured], Measured]:
    from analysis_wrapper.store.mongo import MongoStore

    mongo = MongoStore(uri, database=DATABASE)
    try:
        options.log(f"  {SECANTUS}: filling a store with {n:,} records (insert_many)")
        fill_s = _fill_mongo(uri, mongo, n)
        options.log(
            f"  {SECANTUS}: checking {n:,} fingerprints: batched (budget {BATCHED_BUDGET_S:g} s), "
            "the capsule's way (a client per job) and the warm per-job ways, once each"
        )
        batched, ways = _warm_ways(mongo)
        ways = {**_mongo_capsule_way(uri, mongo.collection or ANALYSIS), **ways}
        measured = _measure(ways, batched, checked, (BATCHED_REPEATS, 1), None, BATCHED_BUDGET_S)
        options.log(f"  {SECANTUS}: the way before, existing_fingerprints with ID_CHUNK={BEFORE_ID_CHUNK:,}")
        way = _chunked(mongo, BEFORE_ID_CHUNK)
        candidate = _timed(way, checked, BATCHED_REPEATS, BATCHED_BUDGET_S)
    finally:
        mongo.close()
    return fill_s, measured, candidate


def run_mongo(options: RunOptions) -> list[Entry]:
    """The skip check on a real MongoDB wire-protocol server: SecantusDB on 127.0.0.1 (TCP round trips)."""
    from analysis_wrapper.store.mongo.connection import ID_CHUNK

    n = options.sizes.mongo_fingerprints
    checked = _checked(n)
    prefix = f"skip check {n:,} fps, {SECANTUS}"
    try:
        with secantus_server(Path(options.workdir) / "skip_check_secantus") as server:
            fill_s, measured, candidate = _measure_mongo(options, server.uri, n, checked)
    except ServerMissing as exc:
        return [server_missing(prefix, exc)]
    version = _version("SecantusDB")
    note = (
        f"SecantusDB {version} on 127.0.0.1 (TCP, one-node replica set): every query a real round trip; "
        f"filled in {fill_s:.1f} s"
    )
    entries = _entries(SECANTUS, n, measured, note, TARGET)
    ours, capsule = measured["batched"], measured[CAPSULE]
    if candidate.found != n // 2:
        raise AssertionError(f"ID_CHUNK={BEFORE_ID_CHUNK}: found {candidate.found:,}, not {n // 2:,}")
    entries.insert(
        1,
        compared(
            f"{prefix}: before, batched in $in chunks of {BEFORE_ID_CHUNK:,} (ships {ID_CHUNK:,}) vs capsule",
            candidate.seconds,
            "s",
            CAPSULE,
            capsule.seconds,
            "speed-up",
            note=(
                f"no longer shipped; {candidate.lookups:,} queries, {_per_fp(candidate.seconds, n)}/fp; "
                f"the shipped chunk of {ID_CHUNK:,} is {candidate.seconds / ours.seconds:.3g}x faster on "
                "this server: SecantusDB looks the $in ids up by _id, then matches every document it found "
                "against the $in list one candidate after another (secantus/query.py, `any(...)` over "
                "the list), so one query of k ids costs about k²/4 comparisons in Python"
            ),
        ),
    )
    return entries


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"
