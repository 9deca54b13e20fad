"""Leases on every store backend: unique claims, renewal, release, expiry, dead holders, the renewer.

Holders that die are real processes (SIGKILL); races are real processes claiming at the same moment.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from analysis_wrapper import ownership
from analysis_wrapper.ownership import (
    Claim,
    Held,
    claim,
    end_heartbeat,
    heartbeat,
    lease_dead,
    pid_alive,
    release,
    run_lease_key,
    this_host,
)
from analysis_wrapper.procfs import ProcStat, parse_stat, proc_stat
from analysis_wrapper.store.base import Lease, Store, utcnow
from analysis_wrapper.store.mongo import MongoStore
from analysis_wrapper.store.sqlite import SqliteStore

KEY = "fingerprint:abc"
OTHER_HOST = "otherhost/xxxx"
MS = dt.timedelta(milliseconds=1)
"""MongoDB keeps times to the millisecond."""


# ---- helpers ------------------------------------------------------------------------------------
def stored(db: Store, key: str = KEY) -> Lease | None:
    return db.get_leases([key]).get(key)


def write_lease(
    db: Store,
    *,
    key: str = KEY,
    run_id: str = "r-far",
    host: str | None = None,
    pid: int | None = None,
    token: str = "far-token",
    expires_in_s: float = 60.0,
) -> Lease:
    """A lease as another holder left it (written directly, as its claim would have)."""
    now = utcnow()
    lease = Lease(
        key=key,
        run_id=run_id,
        host=host or this_host(),
        pid=os.getpid() if pid is None else pid,
        token=token,
        expires_at=now + dt.timedelta(seconds=expires_in_s),
    )
    assert db.claim_lease(lease, now)
    return lease


def a_dead_pid() -> int:
    """The pid of a process of this host that has exited (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pid_alive(child.pid)
    return child.pid


def claimed(made: Claim | Held) -> Claim:
    assert isinstance(made, Claim), f"expected a claim, got {made}"
    return made


def held(made: Claim | Held) -> Held:
    assert isinstance(made, Held), f"expected the lease to be held, got {made}"
    return made


@contextmanager
def releasing() -> Iterator[list[Claim]]:
    """Claims to give back at the end of a test, whatever happens (the renewer is per process)."""
    claims: list[Claim] = []
    try:
        yield claims
    finally:
        for made in claims:
            release(made)


def store_spec(store: Store, request: pytest.FixtureRequest) -> tuple[str, ...]:
    """How a child process opens the same store."""
    if isinstance(store, SqliteStore):
        return ("sqlite", str(store.path))
    assert isinstance(store, MongoStore)
    return ("mongodb", request.getfixturevalue("mongo_server").uri, store.database_name)


CHILD = r"""
import base64, json, os, pickle, sys, time
from pathlib import Path
from analysis_wrapper.ownership import Claim, claim, release

mode, spec, args = pickle.loads(base64.b64decode(sys.stdin.readline()))
if spec[0] == "sqlite":
    from analysis_wrapper.store.sqlite import SqliteStore
    store = SqliteStore(Path(spec[1]))
else:
    from analysis_wrapper.store.mongo import MongoStore
    store = MongoStore(spec[1], database=spec[2], server_selection_timeout_ms=5000)
store.get_leases(["warm-up"])  # connected before anything is claimed
if mode == "hold":
    key, ttl = args
    made = claim(store, key, "r-holder", ttl)
    print(json.dumps([os.getpid(), isinstance(made, Claim), made.lease.token]), flush=True)
    sys.stdin.readline()  # hold the claim until told to end (or killed)
    release(made)
else:
    worker, keys, round_s = args
    print("ready", flush=True)
    start = float(sys.stdin.readline())
    outcomes, claims = [], []
    for round, key in enumerate(keys):
        at = start + round * round_s
        time.sleep(max(0.0, at - time.time() - 0.005))
        while time.time() < at:  # spin the last milliseconds: every racer is awake at ``at``
            pass
        made = claim(store, key, f"run-{worker}", 60.0)
        outcomes.append([isinstance(made, Claim), made.lease.run_id, made.lease.pid])
        if isinstance(made, Claim):
            claims.append(made)
    print(json.dumps(outcomes), flush=True)
    sys.stdin.readline()  # keep the claims until every racer has claimed
    for made in claims:
        release(made)
store.close()
"""
"""A child process: ``hold`` claims one key and keeps it; ``race`` claims keys at given moments."""


def start_child(mode: str, spec: tuple[str, ...], args: tuple[Any, ...]) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert child.stdin is not None
    child.stdin.write(base64.b64encode(pickle.dumps((mode, spec, args))).decode() + "\n")
    child.stdin.flush()
    return child


def line_of(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, f"child {child.pid} ended early (exit code {child.wait(timeout=10)})"
    return line


def tell(child: subprocess.Popen[str], text: str = "") -> None:
    assert child.stdin is not None
    child.stdin.write(text + "\n")
    child.stdin.flush()


def end(children: list[subprocess.Popen[str]]) -> None:
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)


def process_state(pid: int) -> str:
    """The state letter of ``pid`` in /proc (``Z`` for a zombie), or "" when it is gone."""
    stat = proc_stat(pid)
    return stat.state if stat is not None else ""


def test_proc_stat_reads_a_command_name_holding_spaces_and_parentheses() -> None:
    line = "4242 (a) b (c)) Z 17 4200 4200 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 98765 0 0"
    assert parse_stat(line) == ProcStat(4242, "a) b (c)", "Z", 17, 4200, 98765)
    assert parse_stat(line).exited  # type: ignore[union-attr]
    assert parse_stat("garbage") is None
    mine = proc_stat(os.getpid())
    assert mine is not None and mine.pid == os.getpid() and mine.pgrp == os.getpgrp() and not mine.exited


# ---- claims -------------------------------------------------------------------------------------
def test_a_claim_is_unique_per_key(store: Store) -> None:
    with releasing() as claims:
        first = claimed(claim(store, KEY, "r1", ttl_s=30))
        claims.append(first)
        assert (first.key, first.lease.run_id, first.lease.host, first.lease.pid) == (
            KEY,
            "r1",
            this_host(),
            os.getpid(),
        )
        lease = stored(store)
        assert lease is not None and lease.token == first.lease.token
        second = held(claim(store, KEY, "r2", ttl_s=30))
        assert (second.lease.run_id, second.lease.host, second.lease.pid, second.lease.token) == (
            "r1",
            this_host(),
            os.getpid(),
            first.lease.token,
        )
        assert "run r1" in second.lease.describe()
        other = claimed(claim(store, "fingerprint:other", "r2", ttl_s=30))  # another key: free
        claims.append(other)
        # The refused claim changed nothing: the same holder and token. (Only the expiry may have moved
        # on: the renewal thread renews every lease it holds, this one included, whenever a round is due.)
        after = stored(store)
        assert after is not None and dataclasses.replace(after, expires_at=lease.expires_at) == lease
        assert after.expires_at >= lease.expires_at
        release(first)
        assert stored(store) is None
        third = claimed(claim(store, KEY, "r2", ttl_s=30))  # released: free again
        claims.append(third)
        assert stored(store, KEY).run_id == "r2"  # type: ignore[union-attr]


def test_a_claim_taken_with_a_block_is_released_when_the_block_ends_however(store: Store) -> None:
    with (
        pytest.raises(RuntimeError, match="the analysis failed"),
        ownership.claimed(store, KEY, "r1", 30) as made,
    ):
        assert isinstance(made, Claim) and stored(store) is not None
        with ownership.claimed(store, KEY, "r2", 30) as refused:
            assert isinstance(refused, Held)  # someone else's: not released by the block
        assert stored(store).run_id == "r1"  # type: ignore[union-attr]
        raise RuntimeError("the analysis failed")
    assert made.released and stored(store) is None


def test_renew_extends_the_expiry(store: Store) -> None:
    with releasing() as claims:
        made = claimed(claim(store, KEY, "r1", ttl_s=30))
        claims.append(made)
        before = stored(store)
        assert before is not None
        time.sleep(0.02)
        assert made.renew() is True
        after = stored(store)
        assert after is not None and after.token == before.token
        assert after.expires_at > before.expires_at
        assert abs(after.expires_at - made.lease.expires_at) <= MS
        assert abs(after.expires_at - (utcnow() + dt.timedelta(seconds=30))) < dt.timedelta(seconds=2)
        assert not made.lost


def test_release_only_by_the_holders_token(store: Store) -> None:
    with releasing() as claims:
        made = claimed(claim(store, KEY, "r1", ttl_s=30))
        claims.append(made)
        store.release_lease(KEY, "not-the-token")
        impostor = Claim(Lease(**{**made.lease.__dict__, "token": "not-the-token"}), store, 30)
        release(impostor)
        assert stored(store) is not None and stored(store).token == made.lease.token  # type: ignore[union-attr]
        release(made)
        assert stored(store) is None
        release(made)  # twice: nothing left to do
        assert made.renew() is False  # a released claim is not ours any more
        assert stored(store) is None


def test_an_expired_lease_can_be_claimed_by_anyone(store: Store) -> None:
    with releasing() as claims:
        for key, host in (("fingerprint:here", None), ("fingerprint:far", OTHER_HOST)):
            old = write_lease(store, key=key, host=host, expires_in_s=-1)  # holder alive, not renewing
            reason = lease_dead(old)
            assert reason is not None and "expired" in reason
            made = claimed(claim(store, key, "r-new", ttl_s=30))
            claims.append(made)
            lease = stored(store, key)
            assert lease is not None and (lease.run_id, lease.token) == ("r-new", made.lease.token)


def test_lease_dead_says_why(store: Store) -> None:
    now = utcnow()
    alive_here = Lease(KEY, "r", this_host(), os.getpid(), "t", now + dt.timedelta(seconds=30))
    assert lease_dead(alive_here) is None
    expired = Lease(KEY, "r", this_host(), os.getpid(), "t", now - dt.timedelta(seconds=5))
    reason = lease_dead(expired)
    assert reason is not None and reason.startswith("its lease expired at") and "not renewed" in reason
    assert lease_dead(alive_here, now + dt.timedelta(seconds=31)) is not None  # judged at ``now``
    dead = a_dead_pid()
    gone_here = Lease(KEY, "r", this_host(), dead, "t", now + dt.timedelta(seconds=30))
    assert lease_dead(gone_here) == f"its process (pid {dead} on {this_host()}) is gone"
    # A pid means nothing on another host: only the expiry tells.
    assert lease_dead(Lease(KEY, "r", OTHER_HOST, dead, "t", now + dt.timedelta(seconds=30))) is None


def test_a_holder_killed_with_sigkill_is_taken_over_at_once(
    store: Store,
    request: pytest.FixtureRequest,
) -> None:
    child = start_child("hold", store_spec(store, request), (KEY, 60.0))
    with releasing() as claims:
        try:
            pid, got_it, token = json.loads(line_of(child))
            assert got_it
            theirs = held(claim(store, KEY, "r-mine", ttl_s=30))
            holder = (theirs.lease.run_id, theirs.lease.pid, theirs.lease.host)
            assert holder == ("r-holder", pid, this_host())
            assert lease_dead(theirs.lease) is None
            os.kill(pid, signal.SIGKILL)
            child.wait(timeout=10)
            assert lease_dead(theirs.lease) == f"its process (pid {pid} on {this_host()}) is gone"
            began = time.monotonic()
            mine = claimed(claim(store, KEY, "r-mine", ttl_s=30))  # 60 s before it would expire
            claims.append(mine)
            assert time.monotonic() - began < 2
            lease = stored(store)
            assert lease is not None
            assert (lease.run_id, lease.pid, lease.token) == ("r-mine", os.getpid(), mine.lease.token)
            assert lease.token != token
        finally:
            end([child])


def test_a_killed_holder_not_yet_reaped_is_dead_too(store: Store, request: pytest.FixtureRequest) -> None:
    """Killed, but its parent (here: this test) has not waited for it yet: a zombie is no holder."""
    child = start_child("hold", store_spec(store, request), (KEY, 60.0))
    with releasing() as claims:
        try:
            pid, got_it, _token = json.loads(line_of(child))
            assert got_it
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while process_state(pid) != "Z" and time.monotonic() < deadline:
                time.sleep(0.005)
            assert process_state(pid) == "Z"
            assert not pid_alive(pid)
            claims.append(claimed(claim(store, KEY, "r-mine", ttl_s=30)))
        finally:
            end([child])


def test_a_holder_on_another_host_is_not_taken_over_before_expiry(store: Store) -> None:
    dead_here = a_dead_pid()
    with releasing() as claims:
        for key, pid in (("fingerprint:alive-pid", os.getpid()), ("fingerprint:dead-pid", dead_here)):
            far = write_lease(store, key=key, host=OTHER_HOST, pid=pid, expires_in_s=0.4)
            refused = held(claim(store, key, "r-mine", ttl_s=30))
            assert (refused.lease.host, refused.lease.pid, refused.lease.run_id) == (OTHER_HOST, pid, "r-far")
            assert lease_dead(far) is None
            assert stored(store, key) == refused.lease
        time.sleep(max(0.0, (far.expires_at - utcnow()).total_seconds()) + 0.05)
        for key in ("fingerprint:alive-pid", "fingerprint:dead-pid"):
            claims.append(claimed(claim(store, key, "r-mine", ttl_s=30)))
            assert stored(store, key).run_id == "r-mine"  # type: ignore[union-attr]


# ---- the renewer ---------------------------------------------------------------------------------
def test_the_renewer_keeps_a_short_lease_alive(store: Store) -> None:
    with releasing() as claims:
        # A long lease first: the renewer thread now waits a third of its 60 s between rounds.
        claims.append(claimed(claim(store, "fingerprint:long", "r-long", ttl_s=60)))
        time.sleep(0.1)
        ttl = 0.6
        made = claimed(claim(store, KEY, "r1", ttl_s=ttl))
        claims.append(made)
        first = stored(store)
        assert first is not None
        time.sleep(ttl * 3.5)
        lease = stored(store)
        assert lease is not None and lease.token == made.lease.token
        assert lease.expires_at > first.expires_at + dt.timedelta(seconds=ttl * 2)
        assert lease_dead(lease) is None
        assert not made.lost
        assert held(claim(store, KEY, "r2", ttl_s=30)).lease.run_id == "r1"


def test_a_released_lease_stays_released(store: Store) -> None:
    """The renewer must not bring back a lease given back between two of its rounds."""
    made = claimed(claim(store, KEY, "r1", ttl_s=0.6))
    time.sleep(0.3)  # renewed at least once: the renewer's next round includes it
    release(made)
    assert stored(store) is None
    time.sleep(0.5)  # two more rounds
    assert stored(store) is None
    other = claimed(claim(store, KEY, "r2", ttl_s=30))
    release(other)


def _stalled_claim(store: Store, ttl_s: float) -> Claim:
    """A claim its process stopped renewing (paused, swapped out): not in the renewer."""
    now = utcnow()
    lease = Lease(KEY, "r1", this_host(), os.getpid(), "stalled", now + dt.timedelta(seconds=ttl_s))
    assert store.claim_lease(lease, now)
    return Claim(lease, store, ttl_s)


def test_a_claim_taken_over_after_expiry_is_lost(store: Store) -> None:
    mine = _stalled_claim(store, 0.2)
    time.sleep(0.25)
    with releasing() as claims:
        theirs = claimed(claim(store, KEY, "r2", ttl_s=30))  # expired: anyone may claim it
        claims.append(theirs)
        assert mine.renew() is False
        assert mine.lost
        assert mine.renew() is False
        release(mine)  # gives nothing back: it is not ours
        lease = stored(store)
        assert lease is not None and (lease.run_id, lease.token) == ("r2", theirs.lease.token)


def test_a_claim_taken_over_and_given_back_meanwhile_is_lost(store: Store) -> None:
    """The other run claimed, committed and released while this one was stalled: renewing must not
    quietly claim the fingerprint again (the run would write over the other run's results)."""
    mine = _stalled_claim(store, 0.2)
    time.sleep(0.25)
    release(claimed(claim(store, KEY, "r2", ttl_s=30)))
    assert stored(store) is None
    assert mine.renew() is False
    assert mine.lost
    assert stored(store) is None


def test_an_expired_claim_nobody_took_is_still_ours(store: Store) -> None:
    mine = _stalled_claim(store, 0.2)
    time.sleep(0.25)
    assert mine.renew() is True
    assert not mine.lost
    lease = stored(store)
    assert lease is not None and lease.token == "stalled" and lease_dead(lease) is None
    release(mine)
    assert stored(store) is None


def test_held_for_costs_no_round_trip_while_the_lease_is_fresh(store: Store) -> None:
    """The IO manager asks before each write; a lease the renewer keeps fresh answers from memory."""
    with releasing() as claims:
        mine = claimed(claim(store, KEY, "r1", ttl_s=30))
        claims.append(mine)
        before = store.query_count
        assert mine.held_for(10) is True
        assert store.query_count == before
        assert mine.held_for(40) is True  # more than is left: renewed now, one statement
        assert store.query_count == before + 1


def test_held_for_is_false_once_another_run_took_the_lease(store: Store) -> None:
    mine = _stalled_claim(store, 0.2)
    time.sleep(0.25)
    with releasing() as claims:
        claims.append(claimed(claim(store, KEY, "r2", ttl_s=30)))
        assert mine.held_for(0.1) is False
        assert mine.lost


def test_new_claims_never_starve_the_renewal_of_a_heartbeat(store: Store) -> None:
    """A batch run claims a fingerprint every fraction of a second; each claim wakes the renewer. Its
    rounds must still come, or the run's heartbeat expires while the run lives (and it is taken for lost)."""
    run_id = f"batch-{os.getpid()}-{time.time_ns()}"
    heartbeat(store, run_id, ttl_s=1.2)
    try:
        for i in range(10):  # 1.5 s of claims, longer than the heartbeat's ttl
            made = claimed(claim(store, f"fingerprint:starve-{i}", run_id, ttl_s=1.2))
            time.sleep(0.15)
            release(made)
        lease = store.get_leases([f"run:{run_id}"])[f"run:{run_id}"]
        assert lease_dead(lease) is None, "the heartbeat was not renewed while claims came and went"
    finally:
        end_heartbeat(run_id)


# ---- a race of processes ------------------------------------------------------------------------
RACERS = 6
RACE_KEYS = 4
ROUND_S = 0.1


def test_processes_race_to_claim_one_key(store: Store, request: pytest.FixtureRequest) -> None:
    keys = [f"fingerprint:race-{i}" for i in range(RACE_KEYS)]
    spec = store_spec(store, request)
    children = [start_child("race", spec, (worker, keys, ROUND_S)) for worker in range(RACERS)]
    try:
        for child in children:
            assert line_of(child).strip() == "ready"
        start = time.time() + 0.1
        for child in children:
            tell(child, repr(start))
        outcomes = [json.loads(line_of(child)) for child in children]
        leases = store.get_leases(keys)
        for child in children:
            tell(child)  # everyone has claimed: give the claims back
        for child in children:
            assert child.wait(timeout=30) == 0
    finally:
        end(children)
    for index, key in enumerate(keys):
        winners = [worker for worker, outcome in enumerate(outcomes) if outcome[index][0]]
        assert len(winners) == 1, (key, outcomes)  # exactly one Claim
        (winner,) = winners
        # Every other racer was told who holds it.
        assert {tuple(o[index][1:]) for o in outcomes} == {(f"run-{winner}", children[winner].pid)}
        assert leases[key].run_id == f"run-{winner}"
    assert store.get_leases(keys) == {}  # all given back


# ---- heartbeats ---------------------------------------------------------------------------------
def test_heartbeat_is_idempotent_per_process(store: Store) -> None:
    run = "run-hb"
    heartbeat(store, run, ttl_s=30)
    first = stored(store, run_lease_key(run))
    assert first is not None and (first.run_id, first.pid) == (run, os.getpid())
    heartbeat(store, run, ttl_s=30)  # again: the same lease
    assert stored(store, run_lease_key(run)).token == first.token  # type: ignore[union-attr]
    end_heartbeat(run)
    assert stored(store, run_lease_key(run)) is None
    end_heartbeat(run)  # again: nothing to do
    end_heartbeat("never-started")
    heartbeat(store, run, ttl_s=30)  # a new heartbeat after the end: a new lease
    again = stored(store, run_lease_key(run))
    assert again is not None and again.token != first.token
    end_heartbeat(run)
    assert stored(store, run_lease_key(run)) is None


def test_heartbeat_of_a_run_held_elsewhere_leaves_it_alone(store: Store) -> None:
    run = "run-far"
    write_lease(store, key=run_lease_key(run), run_id=run, host=OTHER_HOST)
    far = stored(store, run_lease_key(run))
    heartbeat(store, run, ttl_s=30)  # held by a live holder elsewhere: no heartbeat here
    end_heartbeat(run)
    assert stored(store, run_lease_key(run)) == far
