"""Item 2: the skip check (is this fingerprint already recorded?) for N jobs against a store of N records.

Ours: one batched ``existing_fingerprints(analysis, fingerprints)`` call. The capsule's way (what the
capsule and its dispatcher do): one query per job, one after another; here ``get_record`` per
fingerprint, plus the cheaper variant of an existence-only query per job
(``existing_fingerprints(analysis, [fp])``). Half of the checked fingerprints are recorded. Each side
runs on the same store in the same process; the store's ``query_count`` counts the round trips.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import Entry, RunOptions, compared, median, stopwatch
from benchmarks.records import fingerprint, record

ANALYSIS = "bench_skip"
MONGOMOCK_SAMPLE = 500
"""mongomock answers each query by scanning its documents in Python (about 20 ms per query at 10,000
records), so one query per job is timed on an evenly spaced sample of this many jobs and scaled up."""


def _fill(store: Any, n: int) -> None:
    for i in range(n):
        fp = fingerprint(i)
        store.insert_record(
            ANALYSIS,
            record(fp, ANALYSIS, f"/results/{fp}", {"analysis_name": ANALYSIS, "i": i}, {"value": i}),
        )


def _measure(
    store: Any, checked: list[str], repeats: int, sample: int | None
) -> dict[str, tuple[float, int, int]]:
    """Seconds (median of ``repeats``), queries sent and fingerprints found, for each way."""

    def timed(action: Callable[[list[str]], int], fps: list[str]) -> tuple[float, int, int]:
        times, queries, found = [], 0, 0
        for _ in range(repeats):
            before = store.query_count
            with stopwatch() as t:
                found = action(fps)
            times.append(t[0])
            queries = store.query_count - before
        return median(times), queries, found

    def batched(fps: list[str]) -> int:
        return len(store.existing_fingerprints(ANALYSIS, fps))

    def per_job_record(fps: list[str]) -> int:
        return sum(store.get_record(ANALYSIS, fp) is not None for fp in fps)

    def per_job_exists(fps: list[str]) -> int:
        return sum(bool(store.existing_fingerprints(ANALYSIS, [fp])) for fp in fps)

    batched(checked[:10])  # connect, create indexes: not part of the check
    results = {"batched": timed(batched, checked)}
    if sample and sample < len(checked):
        step = len(checked) / sample
        subset = [checked[int(k * step)] for k in range(sample)]
        scale = len(checked) / len(subset)
        for name, action in (("record", per_job_record), ("exists", per_job_exists)):
            seconds, queries, found = timed(action, subset)
            results[name] = (seconds * scale, round(queries * scale), round(found * scale))
    else:
        results["record"] = timed(per_job_record, checked)
        results["exists"] = timed(per_job_exists, checked)
    return results


def _entries(
    backend: str, n: int, results: dict[str, tuple[float, int, int]], note: str | None
) -> list[Entry]:
    seconds, queries, found = results["batched"]
    rec_s, rec_q, rec_found = results["record"]
    ex_s, _ex_q, ex_found = results["exists"]
    if not (found == rec_found == ex_found == n // 2):
        raise AssertionError(
            f"{backend}: the ways disagree on how many of {n} fingerprints are recorded "
            f"(batched {found}, get_record {rec_found}, existence {ex_found}; expected {n // 2})"
        )
    target = "≥ 50x speed-up" if backend == "SQLite" else None
    return [
        compared(
            f"skip check {n:,} fps, {backend}: batched existing_fingerprints",
            seconds,
            "s",
            "capsule: get_record per job",
            rec_s,
            "speed-up",
            target=target,
            met=(lambda r: r >= 50) if target else None,
            note=note,
        ),
        compared(
            f"skip check {n:,} fps, {backend}: batched vs existence query per job",
            seconds,
            "s",
            "existing_fingerprints([fp]) per job",
            ex_s,
            "speed-up",
            note=note,
        ),
        compared(
            f"skip check {n:,} fps, {backend}: queries sent",
            queries,
            "queries",
            "capsule: get_record per job",
            rec_q,
            "reduction",
        ),
    ]


def run(options: RunOptions) -> list[Entry]:
    from analysis_wrapper.resources.sqlite_store import SqliteRecordStore

    n = options.sizes.fingerprints
    repeats = options.sizes.skip_repeats
    checked = [fingerprint(i) for i in range(n // 2, n // 2 + n)]  # the first half is recorded
    entries: list[Entry] = []

    options.log(f"  SQLite: filling a store with {n:,} records")
    sqlite = SqliteRecordStore(Path(options.workdir) / "skip_check.sqlite")
    try:
        _fill(sqlite, n)
        options.log(f"  SQLite: checking {n:,} fingerprints, batched and one query per job")
        entries += _entries("SQLite", n, _measure(sqlite, checked, repeats, None), None)
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
    from analysis_wrapper.resources.mongo_store import MongoRecordStore

    options.log(f"  mongomock: filling a store with {n:,} records")
    mongo = MongoRecordStore(client=mongomock.MongoClient(), database="benchmark")
    _fill(mongo, n)
    sample = MONGOMOCK_SAMPLE if n > MONGOMOCK_SAMPLE else None
    note = (
        f"per-job side timed on {MONGOMOCK_SAMPLE} of {n:,} jobs and scaled; mongomock scans in Python"
        if sample
        else "mongomock scans its documents in Python: no server, no network round trip"
    )
    options.log(f"  mongomock: checking {n:,} fingerprints, batched and one query per job")
    entries += _entries("mongomock", n, _measure(mongo, checked, 1 if sample else repeats, sample), note)
    return entries
