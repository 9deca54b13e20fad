"""``register_jobs``: one batched registration and one batched skip check per analysis, and the
dispatch pass's way to say it has just made that check (``checked_unrecorded``)."""

from __future__ import annotations

from pathlib import Path

from analysis_wrapper.job_file import AnalysisJob
from analysis_wrapper.registration import prepare_files, register_jobs
from analysis_wrapper.store.base import JobState
from analysis_wrapper.store.sqlite import SqliteStore
from analysis_wrapper_tests.harness import write_job
from analysis_wrapper_tests.sample_analyses import echo


def jobs_of(tmp_path: Path, n: int) -> list[AnalysisJob]:
    files = [write_job(tmp_path / "jobs", [tmp_path / f"asset_{i}"]) for i in range(n)]
    prepared = prepare_files(files, {"echo": echo}, max_bytes=1 << 20)
    assert not prepared.rejected
    return prepared.jobs["echo"]


def register_counting(tmp_path: Path, n: int) -> tuple[int, list[AnalysisJob], SqliteStore]:
    """Register ``n`` jobs, the first recorded already; (store queries it took, the jobs, the store)."""
    store = SqliteStore(tmp_path / f"records_{n}.sqlite")
    jobs = jobs_of(tmp_path / str(n), n)
    store.insert_record("echo", {"_id": jobs[0].fingerprint, "name": jobs[0].fingerprint})
    before = store.query_count
    registration = register_jobs(jobs, store)
    assert registration.outcome.added == [job.partition_key for job in jobs]
    assert registration.recorded == {jobs[0].partition_key}
    return store.query_count - before, jobs, store


def test_a_recorded_fingerprint_is_registered_skipped_in_batched_queries(tmp_path: Path) -> None:
    few, jobs, store = register_counting(tmp_path, 3)
    states = {
        key: entry.state for key, entry in store.get_jobs("echo", [j.partition_key for j in jobs]).items()
    }
    assert states == {
        jobs[0].partition_key: JobState.SKIPPED,
        jobs[1].partition_key: JobState.PENDING,
        jobs[2].partition_key: JobState.PENDING,
    }
    store.close()
    many, _jobs, store = register_counting(tmp_path, 60)
    store.close()
    assert many == few, "the same queries for 60 jobs as for 3: batched, not one per job"


def test_checked_unrecorded_does_not_repeat_the_skip_check(tmp_path: Path) -> None:
    """The dispatch pass has just looked the fingerprints up: none is asked again. A record written in
    between leaves its job pending, and the run's own skip check finds it before anything runs."""
    store = SqliteStore(tmp_path / "records.sqlite")
    jobs = jobs_of(tmp_path, 3)
    store.insert_record("echo", {"_id": jobs[0].fingerprint, "name": jobs[0].fingerprint})
    asked: list[list[str]] = []
    real = store.existing_fingerprints

    def counted(analysis: str, fingerprints: list[str]) -> set[str]:
        asked.append(list(fingerprints))
        return real(analysis, fingerprints)

    store.existing_fingerprints = counted  # type: ignore[method-assign]
    registration = register_jobs(jobs, store, checked_unrecorded=True)
    assert asked == [] and registration.recorded == set()
    assert {e.state for e in store.get_jobs("echo", registration.keys).values()} == {JobState.PENDING}
    register_jobs(jobs, store)  # without it: the check is made, once, for all three
    assert asked == [[job.fingerprint for job in jobs]]
    store.close()
