"""Dispatch of N assets (10,000; 300 with ``--quick``) from the metadata collection, half of them recorded
already: ours (``analysis_wrapper.dispatching``) against the AIND dispatcher's way.

Both ways run the same query through the same aggregation pipeline against SecantusDB (the metadata
collection), build the same jobs (job dicts, parameters validated, fingerprints) and end with the new
jobs dispatched; they differ in how each job is checked and how it is handed on:

* **ours**: one pass (:func:`analysis_wrapper.dispatching.dispatch_run.dispatch`): per batch of 1,000
  jobs one registry lookup and one record lookup (``existing_fingerprints``), then the new jobs'
  dynamic partitions and one batched registration (``register_jobs``), so they are ready to run;
* **the dispatcher's way** (``aind-analysis-job-dispatch``'s ``run_capsule.py`` with
  analysis-pipeline-utils 0.2.8: ``check_task_parameters`` calls ``docdb_record_exists`` per job, which
  builds a new ``MetadataDbClient`` and fetches the full matching records by ``name``; then
  ``write_input_model_list`` writes each new job to ``<job index>/<uuid4>.json``): here a new
  ``pymongo.MongoClient`` per job, ``find({"name": fingerprint})`` read to the end on the records'
  ``name`` index, the client closed, then the job file written. Not reproduced, which favours the
  dispatcher: the API gateway in front of DocumentDB (and, on the plain-TCP rows, its HTTPS connection
  per client).

Measured on three stores: MongoDB (SecantusDB, where each query is a TCP round trip), the same over TLS
(SecantusDB speaking only TLS, as DocumentDB does: the dispatcher's way then pays a TLS handshake per job,
as its HTTPS client per job does, still without the API gateway), and SQLite (the embedded default; the
dispatcher's way: a new ``SqliteStore`` and ``get_record`` per job).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import Entry, RunOptions, ServerMissing, compared, secantus_server, server_missing

FULL_ASSETS = 10_000
QUICK_ASSETS = 300
TARGET = "≥ 20x"
FILL_CHUNK = 1000
META_DB, META_COLLECTION = "bench_metadata", "data_assets"
WAY = "the dispatcher's way (a client and a full-record query per job, job files written)"


def _fill_metadata(uri: str, n: int) -> None:
    import pymongo

    from analysis_wrapper_tests.dispatching.metadata_records import many_records

    client: Any = pymongo.MongoClient(uri, retryWrites=False)
    try:
        collection = client[META_DB][META_COLLECTION]
        docs = many_records(n, "s3://raw-data/bench")
        for lo in range(0, n, FILL_CHUNK):
            collection.insert_many(docs[lo : lo + FILL_CHUNK], ordered=False)
    finally:
        client.close()


def _jobs(uri: str) -> list[Any]:
    """The jobs both ways dispatch, built as the dispatch pass builds them."""
    from analysis_wrapper.dispatching.dispatch_config import DispatchSettings
    from analysis_wrapper.dispatching.dispatch_run import resolve_query
    from analysis_wrapper.dispatching.grouping import build_pipeline
    from analysis_wrapper.dispatching.jobs import JobSpec, Unusable, groups_from_results, jobs_of_group
    from analysis_wrapper.dispatching.metadata_db import MetadataDatabase
    from analysis_wrapper.job_file import parse_job
    from analysis_wrapper.make_job import build_analysis_job
    from analysis_wrapper_tests.sample_analyses import echo

    settings = DispatchSettings(docdb_query="{}")
    query, _source, text = resolve_query(settings)
    db = MetadataDatabase(uri, database=META_DB, collection=META_COLLECTION)
    try:
        results = db.aggregate(build_pipeline(query, settings))
    finally:
        db.close()
    spec = JobSpec("echo", "bench", echo.version, {}, [], text)
    unusable = Unusable()
    jobs = []
    for group in groups_from_results(results, unusable):
        for data in jobs_of_group(spec, group, None, unusable):
            jobs.append(build_analysis_job(parse_job(data, "bench"), echo, source="bench"))
    return jobs


def _built_jobs(uri: str, n: int) -> tuple[list[Any], float]:
    """Fill the metadata collection with ``n`` records, warm up (imports, pydantic's validators, the
    server's first scan), then build the jobs once more, timed: (jobs, seconds), the work both ways share."""
    _fill_metadata(uri, n)
    _jobs(uri)
    start = time.perf_counter()
    jobs = _jobs(uri)
    return jobs, time.perf_counter() - start


def _write(job: Any, folder: Path, index: int) -> None:
    target = folder / str(index) / f"{uuid.uuid4()}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(job.dispatch.model_dump(mode="json"), indent=4))


def _dispatcher_way(jobs: list[Any], exists: Callable[[str], bool], folder: Path) -> tuple[float, int, int]:
    """(seconds, jobs written, lookups): the query and job building included, as for ours."""
    start = time.perf_counter()
    written = 0
    for job in jobs:
        if not exists(job.fingerprint):
            _write(job, folder, written)
            written += 1
    return time.perf_counter() - start, written, len(jobs)


def _ours(uri: str, store: Any) -> tuple[float, Any]:
    from dagster import DagsterInstance

    from analysis_wrapper.dispatching.dispatch_config import DispatchSettings
    from analysis_wrapper.dispatching.dispatch_run import dispatch
    from analysis_wrapper.dispatching.metadata_db import MetadataDatabase
    from analysis_wrapper_tests.sample_analyses import echo

    db = MetadataDatabase(uri, database=META_DB, collection=META_COLLECTION)
    with DagsterInstance.ephemeral() as instance:
        start = time.perf_counter()
        report = dispatch(
            echo,
            DispatchSettings(docdb_query="{}", max_number_of_tasks_dispatched=10**9),
            store,
            db,
            instance,
        )
        seconds = time.perf_counter() - start
    db.close()
    return seconds, report


TARGET_ROW = "TLS"
"""The target is judged on the TLS rows: they reproduce the dispatcher's path most closely (DocumentDB
speaks only TLS, and the dispatcher opens a new HTTPS client per job). Without TLS its per-job client is
cheaper than the real one; SQLite is not a store the dispatcher has. Both are shown beside it."""


def _entries(
    label: str, n: int, ours_s: float, report: Any, way_s: float, written: int, build_s: float
) -> list[Entry]:
    judged = TARGET_ROW in label
    if report.registered != written or report.already_recorded != n - written:
        raise AssertionError(
            f"{label}: ours registered {report.registered}, the dispatcher's way wrote {written}"
        )
    step_s = max(ours_s - build_s, 1e-6)
    return [
        compared(
            f"dispatch {n:,} assets, half recorded, {label}: the whole pass",
            ours_s,
            "s",
            WAY,
            way_s + build_s,
            "speed-up",
            target=TARGET if judged else None,
            met=(lambda r: r >= 20) if judged else None,
            note=(
                f"both: the query and {report.jobs:,} jobs built ({build_s:.2f} s, measured alone, the same "
                f"work on both sides); ours then {report.store_queries} store queries and "
                f"{report.registered:,} jobs registered with their partitions; the dispatcher's way {n:,} "
                f"per-job checks and {written:,} files ({way_s:.2f} s)"
                + ("" if judged else f"; the target is judged on the {TARGET_ROW} rows")
            ),
        ),
        compared(
            f"dispatch {n:,} assets, {label}: skip check and hand-on, after the jobs are built",
            step_s,
            "s",
            "per-job checks and job files",
            way_s,
            "speed-up",
            note="ours: the whole pass minus the query and job building measured alone in the same run",
        ),
        compared(
            f"dispatch {n:,} assets, {label}: store queries",
            float(report.store_queries),
            "queries",
            "one per job",
            float(n),
            "reduction",
        ),
    ]


def _mongo_entries(options: RunOptions, n: int, work: Path, tls: bool) -> list[Entry]:
    """Both ways with the metadata, the records and the registry on one SecantusDB: plain TCP, or TLS
    only (``tls``), as DocumentDB needs it: there the dispatcher's client per job also pays a TLS
    handshake, as its HTTPS client per job does, and ours pays it once."""
    import pymongo

    from analysis_wrapper.store.mongo import MongoStore

    label = "store on MongoDB (SecantusDB, TLS)" if tls else "store on MongoDB (SecantusDB)"
    with secantus_server(work / ("secantus-tls" if tls else "secantus"), tls=tls) as server:
        options.log(f"  dispatch, {label}: {n:,} metadata records")
        jobs, build_s = _built_jobs(server.uri, n)
        recorded = [job.fingerprint for job in jobs[::2]]

        store = MongoStore(server.uri, database="bench_store")
        store.existing_fingerprints("echo", ["warm-up"])  # the store's indexes, as the product makes them
        store.get_jobs("echo", ["warm-up"])
        client: Any = pymongo.MongoClient(server.uri, retryWrites=False)
        records = client["bench_store"][store.collection or "echo"]
        for lo in range(0, len(recorded), FILL_CHUNK):
            records.insert_many([{"_id": fp, "name": fp} for fp in recorded[lo : lo + FILL_CHUNK]])
        client.close()
        options.log(f"  dispatch, {label}: ours")
        ours_s, report = _ours(server.uri, store)
        store.close()

        def exists(fp: str) -> bool:
            per_job: Any = pymongo.MongoClient(server.uri, retryWrites=False)
            try:
                return len(list(per_job["bench_store"][store.collection or "echo"].find({"name": fp}))) > 0
            finally:
                per_job.close()

        options.log(f"  dispatch, {label}: the dispatcher's way, {n:,} clients")
        folder = work / ("files_mongo_tls" if tls else "files_mongo")
        way_s, written, _ = _dispatcher_way(jobs, exists, folder)
        return _entries(label, n, ours_s, report, way_s, written, build_s)


def _sqlite_entries(options: RunOptions, n: int, work: Path) -> list[Entry]:
    """Both ways with the records and the registry in SQLite (the embedded default); the metadata on
    SecantusDB, as for the MongoDB rows."""
    from analysis_wrapper.store.sqlite import SqliteStore

    with secantus_server(work / "secantus-sqlite") as server:
        jobs, build_s = _built_jobs(server.uri, n)
        path = work / "records.sqlite"
        sqlite = SqliteStore(path)
        for job in jobs[::2]:
            sqlite.insert_record("echo", {"_id": job.fingerprint, "name": job.fingerprint})
        options.log("  dispatch, store on SQLite: ours")
        ours_s, report = _ours(server.uri, sqlite)
        sqlite.close()

        def exists(fp: str) -> bool:
            per_job = SqliteStore(path)
            try:
                return per_job.get_record("echo", fp) is not None
            finally:
                per_job.close()

        options.log("  dispatch, store on SQLite: the dispatcher's way")
        way_s, written, _ = _dispatcher_way(jobs, exists, work / "files_sqlite")
        return _entries("store on SQLite", n, ours_s, report, way_s, written, build_s)


def run(options: RunOptions) -> list[Entry]:
    n = QUICK_ASSETS if options.quick else FULL_ASSETS
    work = Path(options.workdir) / "dispatch"
    work.mkdir(parents=True, exist_ok=True)
    try:
        return [
            *_mongo_entries(options, n, work, tls=False),
            *_mongo_entries(options, n, work, tls=True),
            *_sqlite_entries(options, n, work),
        ]
    except ServerMissing as exc:
        return [server_missing(f"dispatch {n:,} assets", exc)]
