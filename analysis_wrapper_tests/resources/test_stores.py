"""One suite for every store backend: SQLite, and a real MongoDB wire-protocol server (SecantusDB,
started by ``analysis_wrapper_tests.mongo_server``; ``TEST_MONGODB_URI`` points it at any other server);
then the tests that only make sense for one backend (SQLite's WAL mode and multi-process safety, Mongo's
credential-free connection errors)."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo.errors import OperationFailure

from analysis_wrapper.store.base import (
    JobChange,
    JobEntry,
    JobMatch,
    JobState,
    RecordExistsError,
    Store,
    StoreError,
)
from analysis_wrapper.store.mongo import MongoStore
from analysis_wrapper.store.mongo.connection import ID_CHUNK, uri_hosts
from analysis_wrapper.store.sqlite import SqliteStore
from analysis_wrapper.store.sqlite.connection import SCHEMA_VERSION
from analysis_wrapper_tests.job_states import register_entries, set_state, set_states
from analysis_wrapper_tests.mongo_server import MongoServer, fresh_database_name
from analysis_wrapper_tests.store_rows import T0, entry, fresh_analysis, record


# ---- job registry -------------------------------------------------------------------------------
def test_register_new_changed_unchanged(store: Store) -> None:
    first = register_entries(store, [entry("k1", "fp1"), entry("k2", "fp2")])
    assert (first.added, first.changed, first.unchanged) == (["k1", "k2"], [], [])
    stored = store.get_job("demo", "k1")
    assert stored is not None
    assert (stored.state, stored.attempts, stored.fingerprint) == (JobState.PENDING, 0, "fp1")
    assert stored.job == {"inputs": ["s3://bucket/k1"], "parameters": {"fp": "fp1"}}
    assert stored.source == "inbox/k1.json"
    assert stored.created_at.tzinfo is not None

    # k1 ran and failed twice; then a new analysis version changes its fingerprint.
    for _ in range(2):
        set_state(store, "demo", "k1", state=JobState.RUNNING, run_id="r1", count_attempt=True)
    set_state(store, "demo", "k1", state=JobState.FAILED, run_id="r1", error="boom")
    changed_job = entry("k1", "fp1-v2", source="inbox/new.json")
    same_fp_other_job = JobEntry("demo", "k2", "fp2", job={"something": "else"}, source="elsewhere")
    second = register_entries(store, [changed_job, same_fp_other_job, entry("k3", "fp3")])
    assert (second.added, second.changed, second.unchanged) == (["k3"], ["k1"], ["k2"])

    k1 = store.get_job("demo", "k1")
    assert k1 is not None
    assert (k1.fingerprint, k1.state, k1.attempts) == ("fp1-v2", JobState.PENDING, 0)
    assert (k1.run_id, k1.last_error) == (None, None)
    assert k1.job == {"inputs": ["s3://bucket/k1"], "parameters": {"fp": "fp1-v2"}}
    assert k1.source == "inbox/new.json"
    assert k1.created_at == stored.created_at  # still the same job, registered back then
    k2 = store.get_job("demo", "k2")
    assert k2 is not None  # unchanged: left untouched, job and source included
    assert (k2.job, k2.source) == (
        {"inputs": ["s3://bucket/k2"], "parameters": {"fp": "fp2"}},
        "inbox/k2.json",
    )

    third = register_entries(store, [entry("k1", "fp1-v2"), entry("k2", "fp2"), entry("k3", "fp3")])
    assert (third.added, third.changed, sorted(third.unchanged)) == ([], [], ["k1", "k2", "k3"])
    assert register_entries(store, []).added == []


def test_register_mixed_analyses_and_repeated_keys(store: Store) -> None:
    outcome = register_entries(
        store,
        [entry("k", "fpA", analysis="a"), entry("k", "fpB", analysis="b"), entry("k", "fpA2", analysis="a")],
    )
    assert sorted(outcome.added) == ["k", "k"]  # one key per analysis; the last entry for a key wins
    a, b = store.get_job("a", "k"), store.get_job("b", "k")
    assert a is not None and b is not None
    assert (a.fingerprint, b.fingerprint) == ("fpA2", "fpB")


def test_get_jobs_batch(store: Store) -> None:
    register_entries(store, [entry(f"k{i:03d}", f"fp{i}") for i in range(50)])
    register_entries(store, [entry("k000", "other-analysis", analysis="other")])
    wanted = [f"k{i:03d}" for i in range(0, 60, 2)] + ["missing", "k000"]
    got = store.get_jobs("demo", wanted)
    assert sorted(got) == [f"k{i:03d}" for i in range(0, 50, 2)]
    assert all(job.fingerprint == f"fp{int(key[1:])}" for key, job in got.items())
    assert all(job.analysis == "demo" for job in got.values())
    assert store.get_jobs("demo", []) == {}
    assert store.get_job("demo", "missing") is None
    assert store.get_job("other", "k000") is not None


def test_list_jobs_by_analysis_and_state_oldest_first(store: Store) -> None:
    minutes = [5, 1, 4, 2, 3]  # registered out of time order
    register_entries(
        store,
        [entry(f"k{m}", f"fp{m}", created_at=T0 + dt.timedelta(minutes=m)) for m in minutes]
        + [entry("x", "fpx", analysis="other", created_at=T0)],
    )
    assert [job.partition_key for job in store.list_jobs("demo")] == ["k1", "k2", "k3", "k4", "k5"]
    assert [job.partition_key for job in store.list_jobs()] == ["x", "k1", "k2", "k3", "k4", "k5"]
    set_state(store, "demo", "k4", state=JobState.FAILED, error="e")
    set_state(store, "demo", "k2", state=JobState.DONE)
    set_state(store, "demo", "k5", state=JobState.QUEUED)
    assert [job.partition_key for job in store.list_jobs("demo", [JobState.PENDING])] == ["k1", "k3"]
    assert [j.partition_key for j in store.list_jobs("demo", [JobState.FAILED, JobState.QUEUED])] == [
        "k4",
        "k5",
    ]
    assert [j.partition_key for j in store.list_jobs(states=[JobState.PENDING])] == ["x", "k1", "k3"]
    assert store.list_jobs("demo", []) == []
    assert store.list_jobs("nobody") == []


def test_update_jobs_is_a_compare_and_set(store: Store) -> None:
    register_entries(store, [entry("k", "fp"), entry("j", "fpj")])

    def get(key: str = "k") -> JobEntry:
        job = store.get_job("demo", key)
        assert job is not None
        return job

    before = get().updated_at
    running = JobChange(state=JobState.RUNNING, run_id="run-1", attempts="increment")
    # Only a job that matches changes: state, run id (None = no run), attempts, fingerprint, age.
    assert store.update_jobs("demo", ["k"], JobMatch(states=frozenset({JobState.QUEUED})), running) == 0
    assert store.update_jobs("demo", ["k"], JobMatch(run_id="other"), running) == 0
    assert store.update_jobs("demo", ["k"], JobMatch(attempts=1), running) == 0
    assert store.update_jobs("demo", ["k"], JobMatch(fingerprint="fp-other"), running) == 0
    assert store.update_jobs("demo", ["k"], JobMatch(updated_before=before), running) == 0
    assert get().state == JobState.PENDING
    match = JobMatch(states=frozenset({JobState.PENDING}), run_id=None, attempts=0, fingerprint="fp")
    assert store.update_jobs("demo", ["k", "j", "unknown"], match, running) == 1  # j has fingerprint fpj
    assert (get().state, get().attempts, get().run_id) == (JobState.RUNNING, 1, "run-1")
    assert get().updated_at >= before
    assert get("j").state == JobState.PENDING
    # The same update again is refused: the job is no longer pending.
    assert store.update_jobs("demo", ["k"], match, running) == 0
    failed = JobChange(state=JobState.FAILED, error="division by zero")
    assert store.update_jobs("demo", ["k"], JobMatch(run_id="run-1"), failed) == 1
    assert (get().state, get().run_id, get().last_error, get().attempts) == (
        JobState.FAILED,
        "run-1",
        "division by zero",
        1,
    )
    # KEEP leaves a field as it is; None clears it; a re-registration swaps fingerprint, job and source.
    again = JobChange(
        state=JobState.PENDING,
        run_id=None,
        error=None,
        attempts="reset",
        fingerprint="fp2",
        job={"inputs": ["x"]},
        source="new.json",
    )
    assert store.update_jobs("demo", ["k"], JobMatch(fingerprint="fp"), again) == 1
    entry_now = get()
    assert (entry_now.fingerprint, entry_now.job, entry_now.source) == ("fp2", {"inputs": ["x"]}, "new.json")
    assert (entry_now.state, entry_now.run_id, entry_now.last_error, entry_now.attempts) == (
        JobState.PENDING,
        None,
        None,
        0,
    )
    assert store.update_jobs("demo", [], JobMatch(), failed) == 0


def test_update_each_applies_its_own_match_per_job(store: Store) -> None:
    register_entries(store, [entry(f"k{i}", f"fp{i}") for i in range(4)])
    queued = JobChange(state=JobState.QUEUED)
    changed = store.update_each(
        "demo",
        [
            ("k0", JobMatch(fingerprint="fp0"), queued),
            ("k1", JobMatch(fingerprint="nope"), queued),
            ("k2", JobMatch(attempts=0), JobChange(state=JobState.FAILED, error="e")),
            ("missing", JobMatch(), queued),
        ],
    )
    assert changed == 2
    states = {k: e.state for k, e in store.get_jobs("demo", [f"k{i}" for i in range(4)]).items()}
    assert states == {"k0": "queued", "k1": "pending", "k2": "failed", "k3": "pending"}


def test_find_jobs_bounded_filtered_and_ordered(store: Store) -> None:
    minutes = [5, 1, 4, 2, 3, 6]
    register_entries(
        store,
        [
            entry(
                f"k{m}",
                f"fp{m}",
                created_at=T0 + dt.timedelta(minutes=m),
                updated_at=T0 + dt.timedelta(minutes=10 - m),
            )
            for m in minutes
        ]
        + [entry("k0", "fpx", analysis="other", created_at=T0)],
    )
    pending = [JobState.PENDING]
    assert [j.partition_key for j in store.find_jobs("demo", states=pending, limit=3)] == ["k1", "k2", "k3"]
    assert [j.partition_key for j in store.find_jobs("demo", limit=2, order="updated")] == ["k6", "k5"]
    by_key = store.find_jobs("demo", limit=4, order="key", after_key="k2")
    assert [j.partition_key for j in by_key] == ["k3", "k4", "k5", "k6"]
    assert [j.partition_key for j in store.find_jobs("demo", limit=10, order="key", after_key="k6")] == []
    early = store.find_jobs("demo", limit=10, updated_before=T0 + dt.timedelta(minutes=6), order="updated")
    assert [j.partition_key for j in early] == ["k6", "k5"]
    assert store.find_jobs("demo", limit=0) == [] and store.find_jobs("demo", states=[], limit=5) == []
    set_state(store, "demo", "k4", state=JobState.FAILED, count_attempt=True)
    set_state(store, "demo", "k2", state=JobState.FAILED, count_attempt=True)
    set_state(store, "demo", "k2", state=JobState.FAILED, count_attempt=True)
    failed_once = store.find_jobs("demo", states=[JobState.FAILED], attempts=1, limit=10)
    assert [j.partition_key for j in failed_once] == ["k4"]
    assert [j.partition_key for j in store.find_jobs("demo", states=[JobState.FAILED], limit=10)] == [
        "k2",
        "k4",
    ]
    assert [j.partition_key for j in store.find_jobs("other", limit=10)] == ["k0"]
    # Several states: one ordered, bounded answer (MongoDB sends a query per state and merges them).
    both = [JobState.FAILED, JobState.PENDING]
    assert [j.partition_key for j in store.find_jobs("demo", states=both, limit=3)] == ["k1", "k2", "k3"]
    by_key = store.find_jobs("demo", states=both, limit=10, order="key", after_key="k3")
    assert [j.partition_key for j in by_key] == ["k4", "k5", "k6"]
    stale = store.find_jobs(
        "demo", states=both, limit=10, order="updated", updated_before=T0 + dt.timedelta(minutes=6)
    )
    assert [j.partition_key for j in stale] == ["k6", "k5"]
    newest_failed_last = store.find_jobs("demo", states=both, limit=6, order="updated")
    assert [j.partition_key for j in newest_failed_last][-2:] == ["k4", "k2"]


def test_set_job_states_in_batches_and_only_from(store: Store) -> None:
    register_entries(store, [entry(f"k{i:04d}", f"fp{i}") for i in range(1200)])
    register_entries(store, [entry("k0000", "fpo", analysis="other")])
    set_state(store, "demo", "k0001", state=JobState.RUNNING, run_id="r1", count_attempt=True)
    keys = [f"k{i:04d}" for i in range(1200)] + ["missing"]
    before = store.query_count
    changed = set_states(store, "demo", keys, JobState.QUEUED, only_from=[JobState.PENDING])
    # Batched: a statement per chunk of keys (MongoDB: ``ID_CHUNK`` ids per ``$in``), not one per key.
    assert store.query_count - before <= -(-len(keys) // ID_CHUNK) + 2
    assert changed == 1199
    jobs = store.get_jobs("demo", keys)
    assert jobs["k0001"].state == JobState.RUNNING and jobs["k0001"].run_id == "r1"
    assert {j.state for k, j in jobs.items() if k != "k0001"} == {JobState.QUEUED}
    assert store.get_job("other", "k0000").state == JobState.PENDING  # type: ignore[union-attr]
    assert set_states(store, "demo", ["k0001"], JobState.FAILED) == 1
    job = store.get_job("demo", "k0001")
    assert job is not None and (job.state, job.attempts, job.run_id) == (JobState.FAILED, 1, "r1")
    assert set_states(store, "demo", ["k0001"], JobState.PENDING, only_from=[]) == 0
    assert set_states(store, "demo", [], JobState.PENDING) == 0


# ---- record store -------------------------------------------------------------------------------
def test_existing_fingerprints_mixed_batch(store: Store) -> None:
    for i in range(0, 20, 3):
        store.insert_record("demo", record(f"fp{i:02d}", minute=i))
    asked = [f"fp{i:02d}" for i in range(20)] + ["absent", "fp00"]
    assert store.existing_fingerprints("demo", asked) == {f"fp{i:02d}" for i in range(0, 20, 3)}
    assert store.existing_fingerprints("demo", []) == set()
    assert store.existing_fingerprints("demo", ["nothing", "here"]) == set()


def test_insert_duplicate_raises_and_keeps_one(store: Store) -> None:
    first = record("fp1", notes="first")
    store.insert_record("demo", first)
    with pytest.raises(RecordExistsError) as caught:
        store.insert_record("demo", record("fp1", notes="second"))
    assert caught.value.fingerprint == "fp1"
    assert isinstance(caught.value, StoreError)
    assert [r["notes"] for r in store.find_records("demo")] == ["first"]
    assert store.get_record("demo", "fp1") == first
    with pytest.raises(ValueError, match="_id"):
        store.insert_record("demo", {"name": "no id"})


def test_get_record_and_find_records_by_analysis(store: Store) -> None:
    nested = record("fpA1", analysis="a", minute=1, outputs={"values": [1.5, 2, None], "ok": True})
    store.insert_record("a", nested)
    store.insert_record("b", record("fpB1", analysis="b", minute=2))
    store.insert_record("a", record("fpA2", analysis="a", minute=3))
    got = store.get_record("a", "fpA1")
    assert got == nested and type(got) is dict
    assert store.get_record("a", "missing") is None
    assert [r["_id"] for r in store.find_records("a")] == ["fpA1", "fpA2"]
    assert [r["_id"] for r in store.find_records("b")] == ["fpB1"]
    assert [r["_id"] for r in store.find_records()] == ["fpA1", "fpB1", "fpA2"]
    assert store.find_records("nobody") == []
    assert all(type(r) is dict for r in store.find_records())


def test_supersede_record_frees_the_fingerprint(store: Store) -> None:
    store.insert_record("demo", record("fp", notes="old"))
    kept = {**record("fp", notes="old"), "_id": "fp.superseded-1"}
    kept["analysis_wrapper"]["superseded_by"] = "fp"
    store.supersede_record("demo", "fp", kept)  # type: ignore[attr-defined]
    assert store.get_record("demo", "fp") is None
    assert store.existing_fingerprints("demo", ["fp"]) == set()
    store.insert_record("demo", record("fp", notes="new"))
    assert store.get_record("demo", "fp")["notes"] == "new"  # type: ignore[index]
    assert store.get_record("demo", "fp.superseded-1") == kept
    with pytest.raises(RecordExistsError):
        store.supersede_record("demo", "fp", kept)  # type: ignore[attr-defined]
    assert store.get_record("demo", "fp") is not None  # a failed move removes nothing


def test_batching_costs_a_query_per_chunk_not_per_job(store: Store) -> None:
    # Warm up: connection, schema and indexes are a one-off cost, not part of the batch.
    register_entries(store, [entry("warm", "warm")])
    store.existing_fingerprints("demo", ["warm"])
    for i in range(0, 2000, 2):
        store.insert_record("demo", {"_id": f"fp{i:04d}"})
    jobs = [entry(f"k{i:04d}", f"fp{i:04d}") for i in range(2000)]

    before = store.query_count
    outcome = register_entries(store, jobs)
    found = store.existing_fingerprints("demo", [job.fingerprint for job in jobs])
    spent = store.query_count - before
    assert len(outcome.added) == 2000
    assert found == {f"fp{i:04d}" for i in range(0, 2000, 2)}
    per_chunk = -(-2000 // ID_CHUNK)  # MongoDB: ``ID_CHUNK`` ids per ``$in`` lookup; SQLite: fewer
    assert spent <= 2 * per_chunk + 10, f"{spent} queries for 2,000 jobs + 2,000 fingerprints"

    changed = [entry(f"k{i:04d}", f"new{i}") if i % 100 == 0 else job for i, job in enumerate(jobs)]
    before = store.query_count
    outcome = register_entries(store, changed)
    assert (len(outcome.added), len(outcome.changed), len(outcome.unchanged)) == (0, 20, 1980)
    assert len(store.get_jobs("demo", [job.partition_key for job in jobs])) == 2000
    # Lookups by chunk (registration's two and this get_jobs); changed jobs may cost a write each.
    assert store.query_count - before <= 3 * per_chunk + 10 + len(outcome.changed)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(
        st.lists(st.tuples(st.sampled_from("abcde"), st.sampled_from(["f1", "f2", "f3"])), max_size=8),
        min_size=1,
        max_size=4,
    )
)
def test_register_matches_a_dict_model(store: Store, batches: list[list[tuple[str, str]]]) -> None:
    analysis = fresh_analysis()
    model: dict[str, str] = {}
    for batch in batches:
        last = dict(batch)  # the last entry for a key wins
        outcome = register_entries(store, [entry(key, fp, analysis=analysis) for key, fp in batch])
        assert set(outcome.added) == {k for k in last if k not in model}
        assert set(outcome.changed) == {k for k, fp in last.items() if k in model and model[k] != fp}
        assert set(outcome.unchanged) == {k for k, fp in last.items() if model.get(k) == fp}
        assert len(outcome.added) + len(outcome.changed) + len(outcome.unchanged) == len(last)
        model.update(last)
        assert {k: job.fingerprint for k, job in store.get_jobs(analysis, "abcde").items()} == model


# ---- SQLite only --------------------------------------------------------------------------------
def test_sqlite_file_wal_and_idempotent_schema(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "store.sqlite"
    store = SqliteStore(path)
    assert store.path == path and not path.exists()  # opened lazily
    register_entries(store, [entry("k", "fp")])
    assert path.exists()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"jobs", "records"} <= tables
    finally:
        raw.close()
    conn = store._connection()
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    store.close()
    again = SqliteStore(path)  # a second opening finds the schema and keeps the data
    assert again.get_job("demo", "k") is not None
    again.close()


def test_sqlite_schema_1_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    raw = sqlite3.connect(path)
    raw.execute(
        "CREATE TABLE jobs (analysis TEXT NOT NULL, partition_key TEXT NOT NULL, fingerprint TEXT NOT NULL, "
        "state TEXT NOT NULL, job_json TEXT NOT NULL, source TEXT NOT NULL DEFAULT '', run_id TEXT, "
        "attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, created_at TEXT NOT NULL, "
        "updated_at TEXT NOT NULL, PRIMARY KEY (analysis, partition_key))"
    )
    raw.execute(
        "INSERT INTO jobs VALUES ('demo', 'k', 'fp', 'pending', '{}', '', NULL, 0, NULL, "
        "'2024-01-01T00:00:00.000000+00:00', '2024-01-01T00:00:00.000000+00:00')"
    )
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    store = SqliteStore(path)
    assert [j.partition_key for j in store.find_jobs("demo", states=[JobState.PENDING], limit=5)] == ["k"]
    conn = store._connection()
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"jobs_state_created", "jobs_state_attempts_updated"} <= indexes
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    plan = " ".join(
        str(row[-1])
        for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM jobs WHERE analysis = 'demo' AND state IN ('pending') "
            "ORDER BY created_at, rowid LIMIT 5"
        )
    )
    assert "jobs_state_created" in plan
    store.close()


def test_sqlite_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(StoreError, match="schema version 99"):
        SqliteStore(path).list_jobs()


@pytest.mark.parametrize("json_each", [True, False], ids=["json-array", "variable-lists"])
def test_sqlite_batches_stay_under_a_500_variable_limit(tmp_path: Path, json_each: bool) -> None:
    store = SqliteStore(tmp_path / "store.sqlite")
    conn = store._connection()
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 500)  # what old builds allow (999) and less
    store._json_each = json_each
    jobs = [entry(f"k{i:04d}", f"fp{i:04d}") for i in range(1234)]
    assert len(register_entries(store, jobs).added) == 1234
    for i in range(0, 1234, 3):
        store.insert_record("demo", {"_id": f"fp{i:04d}"})
    keys = [job.partition_key for job in jobs]
    assert len(store.get_jobs("demo", keys)) == 1234
    fps = [job.fingerprint for job in jobs]
    assert store.existing_fingerprints("demo", fps) == {f"fp{i:04d}" for i in range(0, 1234, 3)}
    outcome = register_entries(store, [entry(k, "changed") for k in keys[:700]])
    assert len(outcome.changed) == 700
    store.close()


@pytest.mark.parametrize("json_each", [True, False], ids=["json-array", "variable-lists"])
def test_sqlite_existing_fingerprints_any_key_text(tmp_path: Path, json_each: bool) -> None:
    # Keys travel as a JSON array (or as bound variables): quotes, backslashes, non-ASCII text and
    # duplicates must come back exactly; one key takes the single-key statement.
    store = SqliteStore(tmp_path / "store.sqlite")
    store._connection()
    store._json_each = json_each
    odd = ['q"uote', "back\\slash", "tab\tnew\nline", "caf\u00e9 \u2603", "[1]", "", " "]
    for key in odd:
        store.insert_record("demo", {"_id": key})
    asked = [*odd, *odd, "absent", '"', "\\"]
    assert store.existing_fingerprints("demo", asked) == set(odd)
    assert store.existing_fingerprints("demo", iter(asked)) == set(odd)
    for key in odd:
        assert store.existing_fingerprints("demo", [key]) == {key}
        assert store.existing_fingerprints("demo", [key, key]) == {key}
    assert store.existing_fingerprints("demo", ["absent"]) == set()
    before = store.query_count
    store.existing_fingerprints("demo", [f"k{i}" for i in range(1200)] + odd)
    assert store.query_count - before == (1 if json_each else 3)
    store.close()


def test_sqlite_threads_share_one_store(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.sqlite")
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            register_entries(store, [entry(f"t{worker}-{i}", f"fp{worker}-{i}") for i in range(50)])
            for i in range(50):
                store.insert_record("demo", {"_id": f"fp{worker}-{i}"})
                set_state(store, "demo", f"t{worker}-{i}", state=JobState.DONE)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.list_jobs("demo", [JobState.DONE])) == 400
    assert len(store.find_records("demo")) == 400
    store.close()


def _sqlite_writer(path: str, worker: int, count: int, barrier: Any, results: Any) -> None:
    """One process of the concurrency test: register ``count`` jobs, then insert their records."""
    try:
        store = SqliteStore(Path(path))
        barrier.wait(timeout=60)
        outcome = register_entries(store, [entry(f"w{worker}-{i}", f"fp-{worker}-{i}") for i in range(count)])
        for i in range(count):
            store.insert_record("demo", {"_id": f"fp-{worker}-{i}", "worker": worker})
            set_state(store, "demo", f"w{worker}-{i}", state=JobState.DONE, count_attempt=True)
        store.close()
        results.put((worker, "ok", len(outcome.added)))
    except BaseException as exc:  # sent to the test, which fails on it
        results.put((worker, "error", repr(exc)))


def _sqlite_racer(path: str, worker: int, fingerprints: list[str], barrier: Any, results: Any) -> None:
    """One process of the race test: insert the same fingerprints as the other racer."""
    try:
        store = SqliteStore(Path(path))
        store.existing_fingerprints("race", [])  # open before the start signal
        barrier.wait(timeout=60)
        won, lost = [], 0
        for fp in fingerprints:
            try:
                store.insert_record("race", {"_id": fp, "worker": worker})
                won.append(fp)
            except RecordExistsError:
                lost += 1
        store.close()
        results.put((worker, "ok", (won, lost)))
    except BaseException as exc:  # sent to the test, which fails on it
        results.put((worker, "error", repr(exc)))


def _run_processes(target: Any, args_for: list[tuple[Any, ...]]) -> list[tuple[int, str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(args_for))
    results = ctx.Queue()
    processes = [ctx.Process(target=target, args=(*args, barrier, results)) for args in args_for]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return sorted(outcomes)


def test_sqlite_four_processes_write_at_once(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "store.sqlite"  # not created yet: the processes race to create it
    outcomes = _run_processes(_sqlite_writer, [(str(path), worker, 300) for worker in range(4)])
    assert outcomes == [(worker, "ok", 300) for worker in range(4)], outcomes  # no "database is locked"
    store = SqliteStore(path)
    jobs = store.list_jobs("demo")
    assert len(jobs) == 1200
    assert all(job.state is JobState.DONE and job.attempts == 1 for job in jobs)
    fps = [f"fp-{worker}-{i}" for worker in range(4) for i in range(300)]
    assert store.existing_fingerprints("demo", fps) == set(fps)
    assert len(store.find_records("demo")) == 1200
    store.close()


def test_sqlite_two_processes_race_for_the_same_fingerprints(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    SqliteStore(path).existing_fingerprints("race", [])  # schema in place
    fingerprints = [f"same-{i}" for i in range(300)]
    outcomes = _run_processes(_sqlite_racer, [(str(path), worker, fingerprints) for worker in range(2)])
    assert [status for _, status, _ in outcomes] == ["ok", "ok"], outcomes
    (won_0, lost_0), (won_1, lost_1) = (detail for _, _, detail in outcomes)
    assert sorted(won_0 + won_1) == sorted(fingerprints)  # each inserted exactly once
    assert not set(won_0) & set(won_1)
    assert lost_0 + lost_1 == len(fingerprints)  # every loser got RecordExistsError
    store = SqliteStore(path)
    records = store.find_records("race")
    assert len(records) == 300
    assert {r["_id"]: r["worker"] for r in records} == {
        **{fp: 0 for fp in won_0},
        **{fp: 1 for fp in won_1},
    }
    store.close()


# ---- Mongo only ---------------------------------------------------------------------------------
def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def test_mongo_unreachable_server_names_host_never_password() -> None:
    store = MongoStore("mongodb://user:s3cretpw@127.0.0.1:1/?", server_selection_timeout_ms=300)
    assert "s3cretpw" not in repr(store) and "s3cretpw" not in str(store.uri)
    with pytest.raises(StoreError) as caught:
        store.existing_fingerprints("demo", ["fp"])
    message = str(caught.value)
    assert "127.0.0.1" in message and "'analysis'" in message
    assert "s3cretpw" not in message
    for linked in _chain(caught.value):
        assert "s3cretpw" not in str(linked) and "s3cretpw" not in repr(linked)
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    with pytest.raises(StoreError) as again:
        register_entries(store, [entry("k", "fp")])
    assert "s3cretpw" not in str(again.value) and "127.0.0.1" in str(again.value)
    store.close()


def test_mongo_malformed_uri_does_not_leak_the_password() -> None:
    store = MongoStore("mongodb://user:pa/ss-w0rd@db.example.org:27017/", server_selection_timeout_ms=300)
    with pytest.raises(StoreError) as caught:
        store.list_jobs()
    for linked in _chain(caught.value):
        assert "pa/ss-w0rd" not in str(linked) and "ss-w0rd" not in str(linked)
    assert "db.example.org" in str(caught.value)


class _RefusingClient:
    """Client, database and collection in one: every command fails as a server refusing the login
    would, with the password in the server's message to check that it is scrubbed."""

    def __getitem__(self, name: str) -> Any:
        return self

    def __getattr__(self, name: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise OperationFailure("Authentication failed for user:hunter2pw", code=18)

        return refuse


def test_mongo_auth_failure_is_a_clear_store_error() -> None:
    store = MongoStore("mongodb://user:hunter2pw@docdb.local:27017/", client=_RefusingClient())
    with pytest.raises(StoreError, match="authentication") as caught:
        store.get_record("demo", "fp")
    assert "docdb.local" in str(caught.value)
    for linked in _chain(caught.value):
        assert "hunter2pw" not in str(linked)


def test_mongo_client_is_lazy_and_documentdb_ready(
    monkeypatch: pytest.MonkeyPatch, mongo_server: MongoServer
) -> None:
    made: list[tuple[str, dict[str, Any]]] = []
    real_client = pymongo.MongoClient

    def fake_client(uri: str, **options: Any) -> Any:
        made.append((uri, options))  # the options the store asks for; the connection goes to the test server
        return real_client(mongo_server.uri, serverSelectionTimeoutMS=5000)

    monkeypatch.setattr(pymongo, "MongoClient", fake_client)
    store = MongoStore(
        "mongodb://u:p@docdb:27017/?tls=true",
        database=fresh_database_name(),
        tls=True,
        tls_ca_file="/ca/global-bundle.pem",
    )
    assert made == []
    register_entries(store, [entry("k", "fp")])
    store.get_jobs("demo", ["k"])
    assert len(made) == 1
    assert made[0][1] == {
        "retryWrites": False,
        "serverSelectionTimeoutMS": 10000,
        "tls": True,
        "tlsCAFile": "/ca/global-bundle.pem",
    }
    MongoStore("mongodb://localhost:27017", server_selection_timeout_ms=50).list_jobs()
    assert made[1][1] == {"retryWrites": False, "serverSelectionTimeoutMS": 50}
    with pytest.raises(ValueError):
        MongoStore()


def test_mongo_uri_hosts() -> None:
    assert uri_hosts("mongodb://u:p@h1:27017,h2:27018/db?replicaSet=rs0") == "h1:27017,h2:27018"
    assert uri_hosts("mongodb+srv://cluster.example.org/") == "cluster.example.org"
    assert uri_hosts("mongodb://h") == "h"


@pytest.fixture
def mongo_client(mongo_server: MongoServer) -> Iterator[Any]:
    client: Any = pymongo.MongoClient(mongo_server.uri, serverSelectionTimeoutMS=5000)
    try:
        yield client
    finally:
        client.drop_database("db")
        client.close()


def test_mongo_documents_and_indexes(mongo_client: Any) -> None:
    client = mongo_client
    store = MongoStore(database="db", client=client)
    register_entries(store, [entry("k", "fp")])
    store.insert_record("demo", record("fp"))
    doc = client["db"]["analysis_wrapper_jobs"].find_one({"_id": "demo/k"})
    assert doc is not None
    assert {k: doc[k] for k in ("analysis", "partition_key", "fingerprint", "state", "attempts")} == {
        "analysis": "demo",
        "partition_key": "k",
        "fingerprint": "fp",
        "state": "pending",
        "attempts": 0,
    }
    assert doc["job"] == {"inputs": ["s3://bucket/k"], "parameters": {"fp": "fp"}}
    assert isinstance(doc["created_at"], dt.datetime)
    job_indexes = {
        tuple(spec["key"]) for spec in client["db"]["analysis_wrapper_jobs"].index_information().values()
    }
    assert job_indexes == {
        (("_id", 1),),
        (("analysis", 1), ("created_at", 1)),
        (("analysis", 1), ("state", 1), ("created_at", 1)),
        (("analysis", 1), ("state", 1), ("attempts", 1), ("updated_at", 1)),
        (("analysis", 1), ("state", 1), ("updated_at", 1)),
        (("analysis", 1), ("partition_key", 1)),
    }  # no (analysis, state) alone: the three that start with it serve its queries
    assert client["db"]["demo"].find_one({"_id": "fp"})["name"] == "fp"  # type: ignore[index]
    record_indexes = {tuple(spec["key"]) for spec in client["db"]["demo"].index_information().values()}
    assert {(("name", 1),), (("created", 1),)} <= record_indexes
    # Indexes are ensured once per collection, not per call.
    before = store.query_count
    store.insert_record("demo", record("fp2"))
    assert store.query_count - before == 1


def test_mongo_shared_collection_filters_by_analysis(mongo_client: Any) -> None:
    client = mongo_client
    store = MongoStore(database="db", collection="records", client=client)
    store.insert_record("a", record("fpA", analysis="a", minute=1))
    store.insert_record("b", record("fpB", analysis="b", minute=2))
    assert client["db"].list_collection_names() == ["records"]
    assert [r["_id"] for r in store.find_records("a")] == ["fpA"]
    assert [r["_id"] for r in store.find_records()] == ["fpA", "fpB"]
    with pytest.raises(RecordExistsError):
        store.insert_record("b", record("fpA", analysis="b"))


def test_mongo_register_survives_a_concurrent_registration(
    monkeypatch: pytest.MonkeyPatch, mongo_client: Any
) -> None:
    client = mongo_client
    store = MongoStore(database="db", client=client)
    other = MongoStore(database="db", client=client)
    # The other store registers k1 and k2 just before this store's insert reaches the server: its
    # insert of the three collides on two ids, and the server's unique _id index decides.
    real_insert = store._insert_new_jobs

    def insert_after_the_other(jobs: Any, docs: list[dict[str, Any]]) -> set[str]:
        register_entries(other, [entry("k1", "fp1"), entry("k2", "old")])
        return real_insert(jobs, docs)

    monkeypatch.setattr(store, "_insert_new_jobs", insert_after_the_other)
    outcome = register_entries(store, [entry("k1", "fp1"), entry("k2", "new"), entry("k3", "fp3")])
    assert (outcome.added, outcome.changed, outcome.unchanged) == (["k3"], ["k2"], ["k1"])
    monkeypatch.undo()
    assert {k: j.fingerprint for k, j in store.get_jobs("demo", ["k1", "k2", "k3"]).items()} == {
        "k1": "fp1",
        "k2": "new",
        "k3": "fp3",
    }


def test_mongo_works_without_the_right_to_create_indexes(mongo_client: Any) -> None:
    client = mongo_client

    class ReadOnlyIndexes:
        """A collection whose user may read and write documents but not create indexes."""

        def __init__(self, real: Any) -> None:
            self._real = real

        def create_indexes(self, indexes: Any) -> Any:
            raise OperationFailure("not authorized on db to execute command createIndexes", code=13)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._real, name)

    class Database:
        def __getitem__(self, name: str) -> Any:
            return ReadOnlyIndexes(client["db"][name])

    class Client:
        def __getitem__(self, name: str) -> Any:
            return Database()

    store = MongoStore(database="db", client=Client())
    register_entries(store, [entry("k", "fp")])
    store.insert_record("demo", record("fp"))
    assert store.existing_fingerprints("demo", ["fp", "x"]) == {"fp"}
