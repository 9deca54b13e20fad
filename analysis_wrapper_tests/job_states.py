"""Test set-up only: put registry jobs into a given state directly, as a run or a sensor would have left
them. The package itself changes states only through :mod:`analysis_wrapper.lifecycle`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from analysis_wrapper.lifecycle import JobLifecycle, RegisterOutcome
from analysis_wrapper.store.base import KEEP, JobChange, JobEntry, JobMatch, JobRegistry, JobState


def set_state(
    store: JobRegistry,
    analysis: str,
    key: str,
    *,
    state: JobState,
    run_id: str | None = None,
    error: str | None = None,
    count_attempt: bool = False,
) -> None:
    """Set one job's state (and run id / error when given; ``count_attempt`` adds one attempt)."""
    change = JobChange(
        state=state,
        run_id=KEEP if run_id is None else run_id,
        error=KEEP if error is None else error,
        attempts="increment" if count_attempt else "keep",
    )
    assert store.update_jobs(analysis, [key], JobMatch(), change) == 1, f"no job {analysis}/{key}"


def set_states(
    store: JobRegistry,
    analysis: str,
    keys: Iterable[str],
    state: JobState,
    *,
    only_from: Iterable[JobState] | None = None,
) -> int:
    match = JobMatch(states=None if only_from is None else frozenset(only_from))
    return store.update_jobs(analysis, keys, match, JobChange(state=state))


def register_entries(store: JobRegistry, entries: Sequence[JobEntry]) -> RegisterOutcome:
    return JobLifecycle(store).register(entries)
