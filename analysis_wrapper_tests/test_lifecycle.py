"""The job lifecycle against its own table: every (event, from-state) pair on every store backend.

:data:`~analysis_wrapper.lifecycle.TRANSITIONS` drives the main test: for each event and each state a
job can be in, the event's method moves the job exactly when the table lists that state as a source
(to the target, with run id / attempts / error as documented), and otherwise leaves the job exactly as
it was (state, run id, attempts, error, fingerprint, job, even ``updated_at``) and returns False / 0.
Then the guards (what else each conditional update compares), registration, and a race of real
processes calling ``started`` on one job at the same moment (SQLite file and MongoDB server).
"""

from __future__ import annotations

import base64
import json
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from analysis_wrapper.lifecycle import TRANSITIONS, JobEvent, JobLifecycle, state_table
from analysis_wrapper.store.base import JobEntry, JobState, Store
from analysis_wrapper.store.mongo import MongoStore
from analysis_wrapper.store.sqlite import SqliteStore
from analysis_wrapper_tests.job_states import set_state
from analysis_wrapper_tests.store_rows import entry

S = JobState
E = JobEvent
A = "demo"
K = "k"
FP = "fp1"
OLD_RUN = "r-old"
OLD_ERROR = "old error"
NEW = entry(K, "fp2", source="inbox/new.json")
"""The job as re-registered (new fingerprint, job and source)."""


# ---- helpers ------------------------------------------------------------------------------------
def make_job(
    db: Store,
    state: JobState,
    *,
    key: str = K,
    run_id: str | None = OLD_RUN,
    error: str | None = OLD_ERROR,
    attempts: int = 1,
) -> JobEntry:
    """A registered job in ``state`` with ``attempts`` attempts, run id and error; as read back."""
    assert JobLifecycle(db).register([entry(key, FP)]).added == [key]
    for _ in range(attempts):
        set_state(db, A, key, state=state, run_id=run_id, error=error, count_attempt=True)
    if attempts == 0:
        set_state(db, A, key, state=state, run_id=run_id, error=error)
    return read(db, key)


def read(db: Store, key: str = K) -> JobEntry:
    job = db.get_job(A, key)
    assert job is not None
    return job


def snapshot(job: JobEntry) -> tuple[Any, ...]:
    """Everything a refused event must leave as it was."""
    return (
        job.state,
        job.run_id,
        job.attempts,
        job.last_error,
        job.fingerprint,
        dict(job.job),
        job.source,
        job.created_at,
        job.updated_at,
    )


def fields(job: JobEntry) -> dict[str, Any]:
    return {
        "state": job.state,
        "run_id": job.run_id,
        "attempts": job.attempts,
        "last_error": job.last_error,
        "fingerprint": job.fingerprint,
        "job": dict(job.job),
        "source": job.source,
    }


def assert_unchanged(db: Store, before: JobEntry, key: str = K) -> None:
    assert snapshot(read(db, key)) == snapshot(before)


# ---- the table's events, with what each does when it is allowed ---------------------------------
@dataclass(frozen=True)
class Case:
    call: Callable[[JobLifecycle, JobEntry], bool | int]
    """The event, for the job as read (with this run's id where the event takes one)."""
    after: Callable[[JobEntry], dict[str, Any]]
    """The fields it changes, given the job before; every other field is kept."""


def _lost_run(job: JobEntry) -> str:
    """The run that died: the job's own run when running; an attempt it never started otherwise."""
    return OLD_RUN if job.state == S.RUNNING else "r-lost"


def _after_run_lost(job: JobEntry) -> dict[str, Any]:
    if job.state == S.RUNNING:  # its start counted the attempt already
        return {"state": S.FAILED, "last_error": "run died"}
    return {"state": S.FAILED, "last_error": "run died", "run_id": "r-lost", "attempts": job.attempts + 1}


CASES: dict[JobEvent, Case] = {
    E.REREGISTERED: Case(
        lambda lc, job: lc.reregister(job, NEW),
        lambda job: {
            "state": S.PENDING,
            "run_id": None,
            "attempts": 0,
            "last_error": None,
            "fingerprint": NEW.fingerprint,
            "job": dict(NEW.job),
            "source": NEW.source,
        },
    ),
    E.ALREADY_RECORDED: Case(
        lambda lc, job: lc.already_recorded(A, [(K, FP)]), lambda job: {"state": S.SKIPPED}
    ),
    E.REQUESTED: Case(lambda lc, job: lc.requested(A, [K]), lambda job: {"state": S.QUEUED}),
    E.SENT_BACK: Case(lambda lc, job: lc.sent_back([job]), lambda job: {"state": S.PENDING}),
    E.STARTED: Case(
        lambda lc, job: lc.started(job, "r-new"),
        lambda job: {"state": S.RUNNING, "run_id": "r-new", "attempts": job.attempts + 1},
    ),
    E.DRY_RUN_STARTED: Case(
        lambda lc, job: lc.started(job, "r-new", dry_run=True),
        lambda job: {"state": S.RUNNING, "run_id": "r-new", "attempts": job.attempts + 1},
    ),
    E.RECORDED: Case(
        lambda lc, job: lc.recorded(A, K, OLD_RUN), lambda job: {"state": S.DONE, "last_error": None}
    ),
    E.FOUND_RECORDED: Case(
        lambda lc, job: lc.found_recorded(A, K, FP, "r-found"),
        lambda job: {"state": S.DONE, "run_id": "r-found", "last_error": None},
    ),
    E.DRY_RAN: Case(lambda lc, job: lc.dry_ran(A, K, OLD_RUN), lambda job: {"state": S.DRY_RUN}),
    E.FAILED: Case(
        lambda lc, job: lc.failed(A, K, OLD_RUN, "boom"),
        lambda job: {"state": S.FAILED, "last_error": "boom"},
    ),
    E.REFUSED: Case(
        lambda lc, job: lc.refused(job, "r-new", "dirty tree"),
        lambda job: {
            "state": S.FAILED,
            "run_id": "r-new",
            "attempts": job.attempts + 1,
            "last_error": "dirty tree",
        },
    ),
    E.RUN_LOST: Case(
        lambda lc, job: lc.run_lost(job, _lost_run(job), "run died", job.attempts + 1), _after_run_lost
    ),
    E.RETRY_DUE: Case(lambda lc, job: lc.retry_due([job]), lambda job: {"state": S.PENDING}),
    E.RETRY_ASKED: Case(lambda lc, job: lc.retry_asked(job), lambda job: {"state": S.PENDING}),
}

TABLE_CASES = [
    pytest.param(event, state, id=f"{event.name.lower()}-from-{state.value}")
    for event in CASES
    for state in JobState
]


def test_every_event_but_registered_has_a_case() -> None:
    assert set(CASES) == set(JobEvent) - {E.REGISTERED}
    assert set(TRANSITIONS) == set(JobEvent)


@pytest.mark.parametrize(("event", "state"), TABLE_CASES)
def test_transition_table(store: Store, event: JobEvent, state: JobState) -> None:
    before = make_job(store, state)
    allowed = state in TRANSITIONS[event].sources
    case = CASES[event]
    result = case.call(JobLifecycle(store), before)
    after = read(store)
    if allowed:
        assert result == 1, f"{event.value} from {state.value} is in the table but was refused"
        assert fields(after) == {**fields(before), **case.after(before)}
        assert after.state == TRANSITIONS[event].target
        assert after.created_at == before.created_at
        assert after.updated_at >= before.updated_at
    else:
        assert result == 0, f"{event.value} from {state.value} is not in the table but was applied"
        assert not result
        assert snapshot(after) == snapshot(before)


# ---- registration -------------------------------------------------------------------------------
def test_registered_adds_new_keys_in_input_order(store: Store) -> None:
    lc = JobLifecycle(store)
    first = lc.register([entry("k3", "f3"), entry("k1", "f1"), entry("k2", "f2")])
    assert (first.added, first.changed, first.unchanged) == (["k3", "k1", "k2"], [], [])
    for key in ("k1", "k2", "k3"):
        job = read(store, key)
        assert (job.state, job.run_id, job.attempts, job.last_error) == (S.PENDING, None, 0, None)
        assert job.fingerprint == f"f{key[1]}"
    # New keys mixed with known ones: ``added`` keeps the input's order, the rest are unchanged.
    second = lc.register([entry("z", "fz"), entry("k2", "f2"), entry("a", "fa"), entry("k3", "f3")])
    assert (second.added, second.changed, sorted(second.unchanged)) == (["z", "a"], [], ["k2", "k3"])
    # The last entry for a key wins, in the position the key first appeared.
    third = lc.register([entry("m", "fm-1"), entry("b", "fb"), entry("m", "fm-2")])
    assert third.added == ["m", "b"]
    assert read(store, "m").fingerprint == "fm-2"
    assert lc.register([]).added == []


def test_register_reregisters_changed_and_leaves_unchanged_alone(store: Store) -> None:
    lc = JobLifecycle(store)
    lc.register([entry("c1", "old-1"), entry("c2", "old-2"), entry("u", "fu")])
    for key in ("c1", "c2", "u"):
        set_state(store, A, key, state=S.RUNNING, run_id="r1", count_attempt=True)
        set_state(store, A, key, state=S.FAILED, error="boom", count_attempt=True)
    unchanged_before = read(store, "u")
    outcome = lc.register(
        [
            entry("c2", "new-2", source="inbox/c2-v2.json"),
            entry("u", "fu", source="elsewhere.json"),
            entry("c1", "new-1"),
            entry("n", "fn"),
        ]
    )
    assert (outcome.added, outcome.changed, outcome.unchanged) == (["n"], ["c2", "c1"], ["u"])
    for key, fp in (("c1", "new-1"), ("c2", "new-2")):
        job = read(store, key)
        assert (job.state, job.attempts, job.run_id, job.last_error) == (S.PENDING, 0, None, None)
        assert (job.fingerprint, dict(job.job)) == (fp, dict(entry(key, fp).job))
    assert read(store, "c2").source == "inbox/c2-v2.json"
    assert_unchanged(store, unchanged_before, "u")  # same fingerprint: not even its source changes


# ---- the guards ---------------------------------------------------------------------------------
def test_started_from_a_fresh_job_without_run_id(store: Store) -> None:
    lc = JobLifecycle(store)
    lc.register([entry(K, FP)])
    job = read(store)
    assert (job.run_id, job.attempts) == (None, 0)
    assert lc.started(job, "r1") is True
    assert (read(store).state, read(store).run_id, read(store).attempts) == (S.RUNNING, "r1", 1)
    # The same read again (a second runner with the same stale view) is refused.
    running = read(store)
    assert lc.started(job, "r2") is False
    assert_unchanged(store, running)


@pytest.mark.parametrize("meanwhile", ["attempts", "run id", "state"])
def test_started_refused_when_the_job_changed_since_read(store: Store, meanwhile: str) -> None:
    as_read = make_job(store, S.QUEUED)
    if meanwhile == "attempts":  # another run started and was sent back, same state and run id
        set_state(store, A, K, state=S.QUEUED, count_attempt=True)
    elif meanwhile == "run id":
        set_state(store, A, K, state=S.QUEUED, run_id="r-other")
    else:
        set_state(store, A, K, state=S.PENDING)
    current = read(store)
    assert JobLifecycle(store).started(as_read, "r-new") is False
    assert_unchanged(store, current)


@pytest.mark.parametrize("dry_run", [False, True])
def test_started_refused_for_a_job_re_registered_since_read(store: Store, dry_run: bool) -> None:
    """Re-registered with new parameters between a run's read and its start: state, run id and
    attempts look as read (pending, none, 0), only the fingerprint moved on. The run computing the
    old fingerprint must not take the job (it would mark it done with the old fingerprint's record)."""
    lc = JobLifecycle(store)
    lc.register([entry(K, FP)])
    as_read = read(store)
    lc.register([entry(K, "fp-new-parameters")])
    current = read(store)
    assert (current.state, current.run_id, current.attempts) == (as_read.state, None, 0)
    assert current.fingerprint != as_read.fingerprint
    assert lc.started(as_read, "r-old", dry_run=dry_run) is False
    assert_unchanged(store, current)


@pytest.mark.parametrize("event", [E.RECORDED, E.DRY_RAN, E.FAILED])
def test_run_events_refused_for_another_run(store: Store, event: JobEvent) -> None:
    before = make_job(store, S.RUNNING, run_id="r-current")
    lc = JobLifecycle(store)
    calls = {
        E.RECORDED: lambda run: lc.recorded(A, K, run),
        E.DRY_RAN: lambda run: lc.dry_ran(A, K, run),
        E.FAILED: lambda run: lc.failed(A, K, run, "boom"),
    }
    assert calls[event]("r-stale") is False
    assert_unchanged(store, before)
    assert calls[event]("r-current") is True
    assert read(store).state == TRANSITIONS[event].target


def test_run_lost_late_failure_over_a_newer_done_is_refused(store: Store) -> None:
    lc = JobLifecycle(store)
    as_read = make_job(store, S.RUNNING, run_id="r1")
    assert lc.recorded(A, K, "r1")  # the run committed; its "failure" arrives late
    done = read(store)
    assert lc.run_lost(as_read, "r1", "worker died", as_read.attempts) is False
    assert lc.run_lost(done, "r1", "worker died", done.attempts + 1) is False  # read as done: stale
    assert_unchanged(store, done)


def test_run_lost_refused_while_running_under_another_run(store: Store) -> None:
    lc = JobLifecycle(store)
    stale = make_job(store, S.RUNNING, run_id="r1")
    set_state(store, A, K, state=S.RUNNING, run_id="r2", count_attempt=True)  # a newer attempt runs
    current = read(store)
    assert lc.run_lost(stale, "r1", "r1 died", 2) is False  # read before r2 started
    assert lc.run_lost(current, "r1", "r1 died", 2) is False  # read after: running under r2
    assert_unchanged(store, current)
    assert lc.run_lost(current, "r2", "r2 died", 2) is True
    after = read(store)
    assert (after.state, after.run_id, after.attempts, after.last_error) == (S.FAILED, "r2", 2, "r2 died")


@pytest.mark.parametrize("state", [S.PENDING, S.QUEUED])
def test_run_lost_pending_or_queued_only_when_its_attempt_is_ahead(store: Store, state: JobState) -> None:
    lc = JobLifecycle(store)
    job = make_job(store, state, attempts=2)
    for attempt in (None, 0, 1, 2):  # unknown, older or the attempt it already counted: stale news
        assert lc.run_lost(job, "r-lost", "gone", attempt) is False
        assert_unchanged(store, job)
    assert lc.run_lost(job, "r-lost", "gone", 3) is True
    after = read(store)
    assert (after.state, after.run_id, after.attempts, after.last_error) == (S.FAILED, "r-lost", 3, "gone")


def test_run_lost_refused_when_the_job_changed_since_read(store: Store) -> None:
    lc = JobLifecycle(store)
    pending = make_job(store, S.PENDING, key="p")
    set_state(store, A, "p", state=S.PENDING, count_attempt=True)  # its attempt started meanwhile
    current = read(store, "p")
    assert lc.run_lost(pending, "r-lost", "gone", pending.attempts + 1) is False
    assert_unchanged(store, current, "p")

    running = make_job(store, S.RUNNING, key="r", run_id="r1")
    assert lc.reregister(running, entry("r", "fp-v2"))  # a new version of the job: other fingerprint
    set_state(store, A, "r", state=S.RUNNING, run_id="r1")
    current = read(store, "r")
    assert lc.run_lost(running, "r1", "gone", None) is False
    assert_unchanged(store, current, "r")


def test_reregister_refused_when_the_fingerprint_changed_meanwhile(store: Store) -> None:
    lc = JobLifecycle(store)
    as_read = make_job(store, S.FAILED)
    assert lc.reregister(as_read, entry(K, "fp-by-someone-else")) is True
    current = read(store)
    assert lc.reregister(as_read, entry(K, "fp-ours")) is False
    assert_unchanged(store, current)
    # In a batch, only the jobs still as read are re-registered.
    other = make_job(store, S.DONE, key="o")
    assert lc.reregister_many([(as_read, entry(K, "x")), (other, entry("o", "fp-o2"))]) == 1
    assert_unchanged(store, current)
    assert read(store, "o").fingerprint == "fp-o2"
    assert lc.reregister_many([]) == 0


def test_retry_due_refused_when_attempts_changed(store: Store) -> None:
    lc = JobLifecycle(store)
    as_read = make_job(store, S.FAILED)
    set_state(store, A, K, state=S.RUNNING, run_id="r2", count_attempt=True)  # retried and failed again
    set_state(store, A, K, state=S.FAILED, error="again")
    current = read(store)
    fresh = make_job(store, S.FAILED, key="fresh")
    assert lc.retry_due([as_read, fresh]) == 1
    assert_unchanged(store, current)
    assert read(store, "fresh").state == S.PENDING
    assert lc.retry_due([]) == 0


def test_sent_back_and_retry_asked_refused_when_run_or_state_changed(store: Store) -> None:
    lc = JobLifecycle(store)
    queued = make_job(store, S.QUEUED, key="q", run_id="r1")
    set_state(store, A, "q", state=S.QUEUED, run_id="r2")  # queued again, for another run
    current = read(store, "q")
    assert lc.sent_back([queued]) == 0
    assert lc.retry_asked(queued) is False
    assert_unchanged(store, current, "q")

    failed = make_job(store, S.FAILED, key="f", run_id="r1")
    set_state(store, A, "f", state=S.RUNNING, run_id="r1")  # a state it may be retried from, but not read
    current = read(store, "f")
    assert lc.retry_asked(failed) is False
    assert lc.sent_back([failed]) == 0
    assert_unchanged(store, current, "f")
    assert lc.sent_back([]) == 0


def test_refused_counts_an_attempt_only_when_attempts_are_as_read(store: Store) -> None:
    lc = JobLifecycle(store)
    as_read = make_job(store, S.PENDING)
    set_state(store, A, K, state=S.PENDING, count_attempt=True)
    current = read(store)
    assert lc.refused(as_read, "r1", "dirty tree") is False
    assert_unchanged(store, current)


def test_found_recorded_only_for_the_recorded_fingerprint(store: Store) -> None:
    lc = JobLifecycle(store)
    before = make_job(store, S.FAILED)
    assert lc.found_recorded(A, K, "some-other-fp", "r9") is False
    assert_unchanged(store, before)
    assert lc.found_recorded(A, K, FP) is True  # without a run id: the job's run id is kept
    after = read(store)
    assert (after.state, after.run_id, after.last_error, after.attempts) == (S.DONE, OLD_RUN, None, 1)


def test_batch_events_change_only_the_jobs_in_a_source_state(store: Store) -> None:
    lc = JobLifecycle(store)
    jobs = {state: make_job(store, state, key=f"b-{state.value}") for state in JobState}
    keys = [*(job.partition_key for job in jobs.values()), "unknown"]
    assert lc.requested(A, keys) == 1
    assert read(store, "b-pending").state == S.QUEUED
    assert lc.already_recorded(A, [(key, FP) for key in keys]) == 1  # only failed (pending is queued now)
    assert read(store, "b-failed").state == S.SKIPPED
    for state, job in jobs.items():
        if state not in (S.PENDING, S.FAILED):
            assert_unchanged(store, job, job.partition_key)
    assert lc.requested(A, []) == 0


def test_state_table_lists_every_event() -> None:
    table = state_table().splitlines()
    assert table[0].startswith("| event | from | to |")
    rows = [line.split(" | ") for line in table[2:]]
    assert [row[0].removeprefix("| ") for row in rows] == [event.value for event in TRANSITIONS]
    assert {row[0].removeprefix("| ") for row in rows} == {event.value for event in JobEvent}
    by_event = {row[0].removeprefix("| "): row for row in rows}
    for event, transition in TRANSITIONS.items():
        row = by_event[event.value]
        assert row[2] == transition.target.value
        assert row[3] == transition.guard
    assert by_event[E.STARTED.value][1] == "any"
    assert by_event[E.REGISTERED.value][1] == "—"
    assert by_event[E.SENT_BACK.value][1] == "queued, running"
    # a dry run is no result: it never takes a recorded job out of done / skipped, nor a running job
    # from the run computing it (dry runs hold their own lease: that run may be posting it)
    assert by_event[E.DRY_RUN_STARTED.value][1] == "dry_run, failed, pending, queued"


# ---- a race of processes ------------------------------------------------------------------------
RACERS = 4
RACE_ROUNDS = 12
ROUND_S = 0.05

RACER = r"""
import base64, json, pickle, sys, time
from pathlib import Path
from analysis_wrapper.lifecycle import JobLifecycle

spec, worker, jobs = pickle.loads(base64.b64decode(sys.stdin.readline()))
if spec[0] == "sqlite":
    from analysis_wrapper.store.sqlite import SqliteStore
    store = SqliteStore(Path(spec[1]))
else:
    from analysis_wrapper.store.mongo import MongoStore
    store = MongoStore(spec[1], database=spec[2], server_selection_timeout_ms=5000)
store.get_jobs("warm-up", ["warm-up"])  # connected (and the schema read) before the start signal
lifecycle = JobLifecycle(store)
print("ready", flush=True)
start = float(sys.stdin.readline())
won = []
for round, job in enumerate(jobs):
    at = start + round * ROUND_S
    time.sleep(max(0.0, at - time.time() - 0.005))
    while time.time() < at:  # spin the last few milliseconds: all racers are awake at ``at``
        pass
    if lifecycle.started(job, f"run-{worker}"):
        won.append(job.partition_key)
store.close()
print(json.dumps(won), flush=True)
""".replace("ROUND_S", repr(ROUND_S))
"""One racing process (a plain interpreter: nothing but the lifecycle and the store to import). It
calls ``started`` on each job, as the test read it, at the same wall-clock moments as the others."""


def store_spec(store: Store, request: pytest.FixtureRequest) -> tuple[str, ...]:
    """How a child process opens the same store."""
    if isinstance(store, SqliteStore):
        return ("sqlite", str(store.path))
    assert isinstance(store, MongoStore)
    return ("mongodb", request.getfixturevalue("mongo_server").uri, store.database_name)


def race(spec: tuple[str, ...], jobs: list[JobEntry], racers: int) -> dict[int, list[str]]:
    """Start ``racers`` processes, wait until each is connected, give them one start time."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", RACER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        for _ in range(racers)
    ]
    try:
        for worker, child in enumerate(children):
            assert child.stdin is not None
            child.stdin.write(base64.b64encode(pickle.dumps((spec, worker, jobs))).decode() + "\n")
            child.stdin.flush()
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        start = time.time() + 0.1
        for child in children:
            assert child.stdin is not None
            child.stdin.write(f"{start!r}\n")
            child.stdin.close()
        won = {}
        for worker, child in enumerate(children):
            assert child.stdout is not None
            out = child.stdout.read()
            assert child.wait(timeout=60) == 0, f"racer {worker} failed"
            won[worker] = json.loads(out)
        return won
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def test_processes_race_to_start_one_job(store: Store, request: pytest.FixtureRequest) -> None:
    lc = JobLifecycle(store)
    keys = [f"race-{i}" for i in range(RACE_ROUNDS)]
    lc.register([entry(key, f"fp-{key}") for key in keys])
    for key in keys[1::2]:  # half of them ran and failed once already
        set_state(store, A, key, state=S.FAILED, run_id="r-before", error="boom", count_attempt=True)
    as_read = [read(store, key) for key in keys]
    won = race(store_spec(store, request), as_read, RACERS)
    winners: dict[str, list[int]] = {key: [] for key in keys}
    for worker, keys_won in won.items():
        for key in keys_won:
            winners[key].append(worker)
    assert all(len(w) == 1 for w in winners.values()), winners  # exactly one start per job
    for job in as_read:
        now = read(store, job.partition_key)
        (worker,) = winners[job.partition_key]
        assert (now.state, now.run_id, now.attempts) == (S.RUNNING, f"run-{worker}", job.attempts + 1)
        assert now.last_error == job.last_error


def test_already_recorded_refused_for_a_job_re_registered_meanwhile(store: Store) -> None:
    lc = JobLifecycle(store)
    make_job(store, S.PENDING)
    assert lc.reregister(read(store), entry(K, "fp-new"))
    before = read(store)
    assert lc.already_recorded(A, [(K, FP)]) == 0  # FP is recorded, but the job is now fp-new: still due
    assert_unchanged(store, before)
    assert lc.already_recorded(A, [(K, "fp-new")]) == 1
    assert read(store).state == S.SKIPPED


def test_register_reports_only_the_changes_it_made(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    lc = JobLifecycle(store)
    lc.register([entry("k1", "a1"), entry("k2", "a2")])
    real = store.update_each

    def another_writer_first(analysis: str, updates: Any) -> int:
        # Between our read and our update another process re-registers k2 with its own fingerprint.
        JobLifecycle(store).reregister(read(store, "k2"), entry("k2", "theirs"))
        return real(analysis, updates)

    monkeypatch.setattr(store, "update_each", another_writer_first)
    outcome = lc.register([entry("k1", "b1"), entry("k2", "b2")])
    assert (outcome.changed, outcome.unchanged) == (["k1"], [])
    assert read(store, "k2").fingerprint == "theirs"
