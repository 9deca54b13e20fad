"""Ownership: one run computes a fingerprint at a time, and a run that died is seen to be dead.

Both are leases in the store (:class:`~analysis_wrapper.store.base.LeaseStore`), unique per key,
holding run id, host, pid and an expiry:

* ``fingerprint:<fp>`` — claimed by a run before it computes ``fp`` and released after it committed
  (or gave up). Another run of the same fingerprint sees the claim and does not compute. Dry runs
  claim ``dry-run:<fp>`` instead (they write elsewhere and record nothing).
* ``run:<run id>`` — the run's heartbeat, held while it works: a lease that stopped being renewed
  (expired), or whose holder's process is gone on this host, is a dead run.

One daemon thread per process renews every lease the process holds every ``ttl / 3`` seconds; a
lease the thread could not renew (someone took it over after it expired) is marked lost, and its
holder must not commit. A lease of a holder that died expires after at most ``ttl``; on the same host
a dead pid is taken over at once.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from analysis_wrapper.procfs import proc_stat
from analysis_wrapper.store.base import Lease, LeaseStore, utcnow

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 60.0


def fingerprint_key(fingerprint: str, dry_run: bool = False) -> str:
    """The lease a run computing ``fingerprint`` holds. Dry runs hold their own (``dry-run:<fp>``):
    they write only to the dry-run folder, so a dry run never keeps a posting run from computing and
    recording the same fingerprint, while two dry runs of it still do not compute twice."""
    return f"{'dry-run' if dry_run else 'fingerprint'}:{fingerprint}"


def run_lease_key(run_id: str) -> str:
    return f"run:{run_id}"


@functools.cache
def this_host() -> str:
    """This machine: its name and boot id (a pid means something only within one boot of one host)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()[:8]
    except OSError:
        boot = "noboot"
    return f"{socket.gethostname()}/{boot}"


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` of this host exists and has not exited. A zombie (killed or
    ended, but not yet waited for by its parent) still answers ``kill(pid, 0)``; it is dead all the
    same, so /proc is asked where there is one."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = proc_stat(pid)
    return stat is None or not stat.exited


def holder_dead_here(lease: Lease) -> bool:
    """True when ``lease`` is held by a process of this host that no longer exists."""
    return lease.host == this_host() and not pid_alive(lease.pid)


def lease_dead(lease: Lease, now: dt.datetime | None = None) -> str | None:
    """Why the holder of ``lease`` is certainly gone, or None."""
    now = now or utcnow()
    if lease.expires_at < now:
        return f"its lease expired at {lease.expires_at:%Y-%m-%d %H:%M:%S} UTC (not renewed)"
    if holder_dead_here(lease):
        return f"its process (pid {lease.pid} on {lease.host}) is gone"
    return None


@dataclass
class Claim:
    """A lease this process holds; ``lost`` once another holder took it over, ``released`` once
    given back (then it is never renewed again)."""

    lease: Lease
    store: LeaseStore
    ttl_s: float
    lost: bool = False
    released: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """Renewing and releasing one claim never overlap (the renewer thread and the holder)."""

    @property
    def key(self) -> str:
        return self.lease.key

    def held_for(self, seconds: float) -> bool:
        """True when the lease is certainly ours for ``seconds`` more: from its expiry as the last
        renewal left it (no round trip: until then nobody else may claim it), else renewed now."""
        if self.lost or self.released:
            return False
        if self.lease.expires_at - utcnow() > dt.timedelta(seconds=seconds):
            return True
        return self.renew()

    def renew(self) -> bool:
        """Extend the lease now; False (and ``lost``) when it is no longer ours: someone else holds
        it, or it is gone (taken over after it expired and given back meanwhile: re-creating it
        would let this holder write what the other one already wrote). False once released."""
        with self._lock:
            if self.lost or self.released:
                return False
            expires = utcnow() + dt.timedelta(seconds=self.ttl_s)
            if self.store.renew_lease(self.key, self.lease.token, expires):
                self.lease = Lease(**{**self.lease.__dict__, "expires_at": expires})
                return True
            self.lost = True
        log.warning("lost the lease on %s: another run took it over after it expired", self.key)
        return False


@dataclass
class Held:
    """A claim refused: ``lease`` is someone else's, alive as far as can be told."""

    lease: Lease


@dataclass
class _Renewer:
    """The process's claims and the thread that renews them."""

    claims: dict[str, Claim] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    wake: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    pid: int = 0

    def add(self, claim: Claim) -> None:
        with self.lock:
            self.claims[claim.key + "\0" + claim.lease.token] = claim
            if self.thread is None or not self.thread.is_alive() or self.pid != os.getpid():
                self.pid = os.getpid()
                self.thread = threading.Thread(target=self._loop, name="lease-renewer", daemon=True)
                self.thread.start()
        # The thread may be sleeping a third of a longer ttl (or of DEFAULT_TTL_S, with no claims):
        # wake it, so that it takes this claim's ttl into its interval before the lease expires.
        self.wake.set()

    def remove(self, claim: Claim) -> None:
        with self.lock:
            self.claims.pop(claim.key + "\0" + claim.lease.token, None)

    def _loop(self) -> None:
        last_round = time.monotonic()
        while True:
            with self.lock:
                claims = list(self.claims.values())
            interval = max(min((c.ttl_s for c in claims), default=DEFAULT_TTL_S) / 3, 0.05)
            # A wake (a new claim, maybe with a shorter ttl) recomputes the interval but never postpones
            # the round that is due: claims added more often than the interval (a batch run's
            # fingerprints) would otherwise keep every lease, the run's heartbeat too, from renewal.
            remaining = last_round + interval - time.monotonic()
            if remaining > 0 and self.wake.wait(remaining):
                self.wake.clear()
                continue
            last_round = time.monotonic()
            for claim in claims:
                try:
                    claim.renew()
                except Exception as exc:  # the store is unreachable: try again next round; expiry decides
                    # One line (the store's errors name the store and the cause); the trace at DEBUG.
                    log.warning("cannot renew the lease on %s (trying again): %s", claim.key, exc)
                    log.debug("renewing %s failed", claim.key, exc_info=True)


_renewer = _Renewer()


def claim(store: LeaseStore, key: str, run_id: str, ttl_s: float = DEFAULT_TTL_S) -> Claim | Held:
    """Claim ``key`` for ``run_id``: a :class:`Claim` (renewed in the background until released) or
    the :class:`Held` lease of a live holder. A lease whose holder died on this host is taken over."""
    for _ in range(3):
        now = utcnow()
        lease = Lease(
            key=key,
            run_id=run_id,
            host=this_host(),
            pid=os.getpid(),
            token=uuid.uuid4().hex,
            expires_at=now + dt.timedelta(seconds=ttl_s),
        )
        if store.claim_lease(lease, now):
            made = Claim(lease, store, ttl_s)
            _renewer.add(made)
            return made
        current = store.get_leases([key]).get(key)
        if current is None:
            continue  # released between our two statements: try again
        if holder_dead_here(current) and store.claim_lease(lease, now, replacing_token=current.token):
            log.info("took over the lease on %s from %s, whose process is gone", key, current.describe())
            made = Claim(lease, store, ttl_s)
            _renewer.add(made)
            return made
        if current.expires_at >= now and not holder_dead_here(current):
            return Held(current)
    current = store.get_leases([key]).get(key)
    if current is None:
        raise RuntimeError(f"cannot claim {key}: the lease keeps changing hands")
    return Held(current)


def release(made: Claim) -> None:
    """Give the lease back (only if it is still ours). Once released a claim is never renewed: the
    renewer may hold it in the round it is about to run."""
    _renewer.remove(made)
    with made._lock:
        if made.released:
            return
        made.released = True
        if not made.lost:
            made.store.release_lease(made.key, made.lease.token)


@contextmanager
def claimed(store: LeaseStore, key: str, run_id: str, ttl_s: float = DEFAULT_TTL_S) -> Iterator[Claim | Held]:
    """:func:`claim` as a context manager: the claim made is released when the block ends, however
    it ends (the one place a run gives a fingerprint back); a :class:`Held` lease is left alone."""
    made = claim(store, key, run_id, ttl_s)
    try:
        yield made
    finally:
        if isinstance(made, Claim):
            release(made)


_heartbeats: dict[tuple[int, str], Claim] = {}
_heartbeats_lock = threading.Lock()


def heartbeat(store: LeaseStore, run_id: str, ttl_s: float = DEFAULT_TTL_S) -> None:
    """Hold ``run:<run_id>`` for as long as this process works on the run (idempotent per process).

    Whoever notices the lease expired, or its process gone, knows the run died (see
    :mod:`analysis_wrapper.sensors.recovery`). The CLI takes it before its in-process run starts;
    a run worker when the run's first partition starts.
    """
    with _heartbeats_lock:
        if (os.getpid(), run_id) in _heartbeats:
            return
        made = claim(store, run_lease_key(run_id), run_id, ttl_s)
        if isinstance(made, Claim):
            _heartbeats[(os.getpid(), run_id)] = made


def end_heartbeat(run_id: str) -> None:
    """Release this process's heartbeat of ``run_id`` (the run ended, whatever its outcome)."""
    with _heartbeats_lock:
        made = _heartbeats.pop((os.getpid(), run_id), None)
    if made is not None:
        release(made)


@contextmanager
def heartbeat_held(store: LeaseStore, run_id: str, ttl_s: float = DEFAULT_TTL_S) -> Iterator[None]:
    """The run's heartbeat for as long as the block runs (a step: its partitions and their checks)."""
    heartbeat(store, run_id, ttl_s)
    try:
        yield
    finally:
        end_heartbeat(run_id)
