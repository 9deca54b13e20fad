"""The job lifecycle: the only code that changes a job's state.

Every change is a named event with the states it may come from (:data:`TRANSITIONS`), and every
event is ONE conditional update in the registry (compare-and-set on state, and where it matters on
run id, attempts and fingerprint; see :class:`~analysis_wrapper.store.base.JobMatch`). Two writers
on two machines therefore cannot regress a job (a late failure event over a newer ``done``) nor both
claim it: the second update matches nothing and is refused, and the method says so (``False`` / 0).

The README's state table is :func:`state_table` of :data:`TRANSITIONS`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from analysis_wrapper.store.base import JobChange, JobEntry, JobMatch, JobRegistry, JobState

log = logging.getLogger(__name__)

S = JobState


class JobEvent(StrEnum):
    REGISTERED = "registered"
    REREGISTERED = "re-registered"
    ALREADY_RECORDED = "already recorded"
    REQUESTED = "requested"
    SENT_BACK = "sent back"
    STARTED = "started"
    DRY_RUN_STARTED = "dry run started"
    RECORDED = "recorded"
    FOUND_RECORDED = "found recorded"
    DRY_RAN = "dry ran"
    FAILED = "failed"
    REFUSED = "refused"
    RUN_LOST = "run lost"
    RETRY_DUE = "retry due"
    RETRY_ASKED = "retry asked"


@dataclass(frozen=True)
class Transition:
    sources: frozenset[JobState]
    target: JobState
    guard: str
    """What else the conditional update compares, besides the state."""
    why: str


def _t(sources: Iterable[JobState], target: JobState, guard: str, why: str) -> Transition:
    return Transition(frozenset(sources), target, guard, why)


UNFINISHED = frozenset({S.PENDING, S.QUEUED, S.FAILED, S.DRY_RUN})
"""Jobs without a record that a run may start (``running`` only via its lease: see STARTED)."""
ALL_STATES = frozenset(JobState)
RECORDED_STATES = frozenset({S.DONE, S.SKIPPED})
"""Jobs whose fingerprint is recorded: a dry run of one leaves its state alone (it is no result)."""

TRANSITIONS: dict[JobEvent, Transition] = {
    JobEvent.REGISTERED: _t((), S.PENDING, "key not registered", "a new job file (submit, run, inbox)"),
    JobEvent.REREGISTERED: _t(
        ALL_STATES,
        S.PENDING,
        "fingerprint = the one read",
        "its fingerprint changed (new parameters or analysis version): due again, attempts 0",
    ),
    JobEvent.ALREADY_RECORDED: _t(
        (S.PENDING, S.FAILED),
        S.SKIPPED,
        "fingerprint = the recorded one",
        "registered (or due) while its fingerprint is recorded",
    ),
    JobEvent.REQUESTED: _t((S.PENDING,), S.QUEUED, "-", "the inbox sensor's run request exists"),
    JobEvent.SENT_BACK: _t(
        (S.QUEUED, S.RUNNING),
        S.PENDING,
        "state and run id = those read",
        "its run never came to be, or ended without reaching it or without a record",
    ),
    JobEvent.STARTED: _t(
        ALL_STATES,
        S.RUNNING,
        "state, run id, attempts and fingerprint = those read; the run holds the fingerprint's lease",
        "a run claimed the fingerprint and starts the analysis (attempts + 1)",
    ),
    JobEvent.DRY_RUN_STARTED: _t(
        ALL_STATES - RECORDED_STATES - {S.RUNNING},
        S.RUNNING,
        "state, run id, attempts and fingerprint = those read; the run holds the dry-run lease",
        "a dry run starts the analysis (attempts + 1); a recorded job (done, skipped) or one another "
        "run is computing keeps its state",
    ),
    JobEvent.RECORDED: _t(
        (S.RUNNING,), S.DONE, "run id = this run", "its run committed the record (folder complete)"
    ),
    JobEvent.FOUND_RECORDED: _t(
        (S.PENDING, S.QUEUED, S.RUNNING, S.FAILED, S.DRY_RUN),
        S.DONE,
        "fingerprint = the recorded one",
        "a run or an audit finds its fingerprint recorded (by this or another run)",
    ),
    JobEvent.DRY_RAN: _t((S.RUNNING,), S.DRY_RUN, "run id = this run", "its run wrote a dry run"),
    JobEvent.FAILED: _t((S.RUNNING,), S.FAILED, "run id = this run", "the analysis or the commit failed"),
    JobEvent.REFUSED: _t(
        (S.PENDING, S.QUEUED, S.FAILED, S.DRY_RUN),
        S.FAILED,
        "attempts = those read",
        "refused before it started (bad parameters, dirty tree): counts an attempt",
    ),
    JobEvent.RUN_LOST: _t(
        (S.RUNNING, S.PENDING, S.QUEUED),
        S.FAILED,
        "running: run id = the dead run; pending/queued: attempts below the run's attempt",
        "its run died, failed or was canceled without the job hearing of it",
    ),
    JobEvent.RETRY_DUE: _t(
        (S.FAILED,), S.PENDING, "attempts = those read", "its retry delay passed, attempts < MAX_ATTEMPTS"
    ),
    JobEvent.RETRY_ASKED: _t(
        (S.FAILED, S.QUEUED, S.RUNNING),
        S.PENDING,
        "state and run id = those read",
        "`analysis-wrapper retry`",
    ),
}


def state_table() -> str:
    """The README's table: event, from, to, what else is compared, when."""
    lines = ["| event | from | to | also compares | when |", "| --- | --- | --- | --- | --- |"]
    for event, t in TRANSITIONS.items():
        sources = "any" if t.sources == ALL_STATES else ", ".join(sorted(s.value for s in t.sources)) or "—"
        lines.append(f"| {event.value} | {sources} | {t.target.value} | {t.guard} | {t.why} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class RegisterOutcome:
    """What :meth:`JobLifecycle.register` did: keys new to the registry, keys whose fingerprint
    changed (new analysis version or parameters), and keys already known unchanged."""

    added: list[str]
    changed: list[str]
    unchanged: list[str]


class JobLifecycle:
    """The named transitions, each one conditional update in ``registry``."""

    def __init__(self, registry: JobRegistry):
        self.registry = registry

    # ---- helpers ------------------------------------------------------------------------------
    def _match(self, event: JobEvent, **compare: object) -> JobMatch:
        return JobMatch(states=TRANSITIONS[event].sources, **compare)  # type: ignore[arg-type]

    def _to(self, event: JobEvent, **changes: object) -> JobChange:
        return JobChange(state=TRANSITIONS[event].target, **changes)  # type: ignore[arg-type]

    def _one(
        self, event: JobEvent, entry_or_key: JobEntry | tuple[str, str], match: JobMatch, change: JobChange
    ) -> bool:
        analysis, key = (
            (entry_or_key.analysis, entry_or_key.partition_key)
            if isinstance(entry_or_key, JobEntry)
            else entry_or_key
        )
        done = self.registry.update_jobs(analysis, [key], match, change) == 1
        if not done:
            log.debug("%s refused for %s/%s (the job changed meanwhile)", event.value, analysis, key)
        return done

    def _many(self, event: JobEvent, analysis: str, keys: Iterable[str], **compare: object) -> int:
        return self.registry.update_jobs(analysis, keys, self._match(event, **compare), self._to(event))

    # ---- registration -------------------------------------------------------------------------
    def register(self, entries: Sequence[JobEntry]) -> RegisterOutcome:
        """REGISTERED for new keys; REREGISTERED for keys whose fingerprint changed. The last entry
        for a key wins; entries of several analyses may be mixed. A constant number of queries per
        batch, plus one conditional update per changed job."""
        wanted: dict[tuple[str, str], JobEntry] = {}
        for entry in entries:
            wanted[(entry.analysis, entry.partition_key)] = entry
        outcome = RegisterOutcome(added=[], changed=[], unchanged=[])
        if not wanted:
            return outcome
        inserted = self.registry.insert_jobs(list(wanted.values()))
        outcome.added.extend(key for pair in wanted if pair in inserted for key in [pair[1]])
        rest = [pair for pair in wanted if pair not in inserted]
        by_analysis: dict[str, list[str]] = {}
        for analysis, key in rest:
            by_analysis.setdefault(analysis, []).append(key)
        for analysis, keys in by_analysis.items():
            current = self.registry.get_jobs(analysis, keys)
            changed = [
                (key, current[key])
                for key in keys
                if key in current and current[key].fingerprint != wanted[(analysis, key)].fingerprint
            ]
            outcome.unchanged.extend(key for key in keys if key not in dict(changed))
            if changed:
                done = self.registry.update_each(
                    analysis,
                    [
                        (
                            key,
                            self._match(JobEvent.REREGISTERED, fingerprint=old.fingerprint),
                            self._reregister(wanted[(analysis, key)]),
                        )
                        for key, old in changed
                    ],
                )
                if done < len(changed):  # another writer changed some of them first: say what is true
                    now = self.registry.get_jobs(analysis, [key for key, _old in changed])
                    changed = [
                        (key, old)
                        for key, old in changed
                        if key in now and now[key].fingerprint == wanted[(analysis, key)].fingerprint
                    ]
                outcome.changed.extend(key for key, _old in changed)
        return outcome

    def _reregister(self, entry: JobEntry) -> JobChange:
        return self._to(
            JobEvent.REREGISTERED,
            run_id=None,
            error=None,
            attempts="reset",
            fingerprint=entry.fingerprint,
            job=dict(entry.job),
            source=entry.source or "",
        )

    def reregister(self, old: JobEntry, new: JobEntry) -> bool:
        """REREGISTERED: ``old`` (as read) gets ``new``'s fingerprint and job, due again."""
        match = self._match(JobEvent.REREGISTERED, fingerprint=old.fingerprint)
        return self._one(JobEvent.REREGISTERED, old, match, self._reregister(new))

    def reregister_many(self, pairs: Sequence[tuple[JobEntry, JobEntry]]) -> int:
        """:meth:`reregister` for many jobs of one analysis, in one batch of conditional updates."""
        if not pairs:
            return 0
        return self.registry.update_each(
            pairs[0][0].analysis,
            [
                (
                    old.partition_key,
                    self._match(JobEvent.REREGISTERED, fingerprint=old.fingerprint),
                    self._reregister(new),
                )
                for old, new in pairs
            ],
        )

    def already_recorded(self, analysis: str, recorded: Iterable[tuple[str, str]]) -> int:
        """ALREADY_RECORDED for (partition key, fingerprint) pairs whose fingerprint has a record: nothing
        to run. A job re-registered meanwhile (another fingerprint, not recorded) stays due."""
        match = self._match
        return self.registry.update_each(
            analysis,
            [
                (key, match(JobEvent.ALREADY_RECORDED, fingerprint=fp), self._to(JobEvent.ALREADY_RECORDED))
                for key, fp in recorded
            ],
        )

    # ---- the inbox sensor's requests ----------------------------------------------------------
    def requested(self, analysis: str, keys: Iterable[str]) -> int:
        return self._many(JobEvent.REQUESTED, analysis, keys)

    def sent_back(self, entries: Sequence[JobEntry]) -> int:
        """SENT_BACK for jobs as read: a job that moved on meanwhile (its run started it) stays."""
        if not entries:
            return 0
        return self.registry.update_each(
            entries[0].analysis,
            [
                (
                    e.partition_key,
                    JobMatch(
                        states=frozenset({e.state}) & TRANSITIONS[JobEvent.SENT_BACK].sources, run_id=e.run_id
                    ),
                    self._to(JobEvent.SENT_BACK),
                )
                for e in entries
            ],
        )

    def retry_due(self, entries: Sequence[JobEntry]) -> int:
        """RETRY_DUE for failed jobs as read (a job that failed again meanwhile keeps waiting)."""
        if not entries:
            return 0
        return self.registry.update_each(
            entries[0].analysis,
            [
                (
                    e.partition_key,
                    self._match(JobEvent.RETRY_DUE, attempts=e.attempts),
                    self._to(JobEvent.RETRY_DUE),
                )
                for e in entries
            ],
        )

    def retry_asked(self, entry: JobEntry) -> bool:
        match = JobMatch(
            states=frozenset({entry.state}) & TRANSITIONS[JobEvent.RETRY_ASKED].sources, run_id=entry.run_id
        )
        return self._one(JobEvent.RETRY_ASKED, entry, match, self._to(JobEvent.RETRY_ASKED))

    # ---- a run's own events -------------------------------------------------------------------
    def started(self, entry: JobEntry, run_id: str, dry_run: bool = False) -> bool:
        """STARTED: the run holding the fingerprint's lease starts the analysis (attempts + 1).
        Refused when the job changed since ``entry`` was read. A dry run is DRY_RUN_STARTED, refused
        for a recorded job (a dry run is no result, so a ``done`` job stays ``done``) and for a
        running one (dry runs hold their own lease: the running run may be posting it)."""
        event = JobEvent.DRY_RUN_STARTED if dry_run else JobEvent.STARTED
        match = JobMatch(
            states=frozenset({entry.state}) & TRANSITIONS[event].sources,
            run_id=entry.run_id,
            attempts=entry.attempts,
            fingerprint=entry.fingerprint,
        )
        return self._one(event, entry, match, self._to(event, run_id=run_id, attempts="increment"))

    def recorded(self, analysis: str, key: str, run_id: str) -> bool:
        match = self._match(JobEvent.RECORDED, run_id=run_id)
        return self._one(JobEvent.RECORDED, (analysis, key), match, self._to(JobEvent.RECORDED, error=None))

    def found_recorded(self, analysis: str, key: str, fingerprint: str, run_id: str | None = None) -> bool:
        match = self._match(JobEvent.FOUND_RECORDED, fingerprint=fingerprint)
        change = self._to(JobEvent.FOUND_RECORDED, error=None, **({"run_id": run_id} if run_id else {}))
        return self._one(JobEvent.FOUND_RECORDED, (analysis, key), match, change)

    def dry_ran(self, analysis: str, key: str, run_id: str) -> bool:
        match = self._match(JobEvent.DRY_RAN, run_id=run_id)
        return self._one(JobEvent.DRY_RAN, (analysis, key), match, self._to(JobEvent.DRY_RAN))

    def failed(self, analysis: str, key: str, run_id: str, error: str) -> bool:
        match = self._match(JobEvent.FAILED, run_id=run_id)
        return self._one(JobEvent.FAILED, (analysis, key), match, self._to(JobEvent.FAILED, error=error))

    def refused(self, entry: JobEntry, run_id: str, error: str) -> bool:
        """REFUSED before it started: an attempt all the same (a dirty tree is not retried forever)."""
        match = self._match(JobEvent.REFUSED, attempts=entry.attempts)
        change = self._to(JobEvent.REFUSED, run_id=run_id, error=error, attempts="increment")
        return self._one(JobEvent.REFUSED, entry, match, change)

    # ---- what others learn about a run --------------------------------------------------------
    def run_lost(self, entry: JobEntry, run_id: str, error: str, run_attempt: int | None) -> bool:
        """RUN_LOST: run ``run_id`` of ``entry``'s job died, failed or was canceled.

        A running job is failed only if it is running under that run; a pending or queued one only
        if the run was an attempt it never started (``run_attempt`` above its attempts: the attempt
        is counted). Anything else is stale news and refused: a finished job, a newer attempt.
        """
        if entry.state == S.RUNNING:
            match = JobMatch(states=frozenset({S.RUNNING}), run_id=run_id, fingerprint=entry.fingerprint)
            change = self._to(JobEvent.RUN_LOST, error=error)
        elif (
            entry.state in (S.PENDING, S.QUEUED) and run_attempt is not None and entry.attempts < run_attempt
        ):
            match = JobMatch(
                states=frozenset({entry.state}), attempts=entry.attempts, fingerprint=entry.fingerprint
            )
            change = self._to(JobEvent.RUN_LOST, run_id=run_id, error=error, attempts="increment")
        else:
            return False
        return self._one(JobEvent.RUN_LOST, entry, match, change)
