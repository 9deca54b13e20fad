"""What the sensors take from :class:`~analysis_wrapper.settings.Settings`, in one frozen value."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from dagster import DefaultSensorStatus

from analysis_wrapper.job_bytes import DEFAULT_MAX_JOB_FILE_BYTES
from analysis_wrapper.settings import Settings

RECONCILE_PAGE = 5000
"""Registry jobs one tick re-fingerprints after a version change (about 0.3 s)."""


@dataclass(frozen=True)
class SensorSettings:
    inbox: str = "dispatch_inbox"
    interval_s: int = 30
    start_stopped: bool = False
    max_runs_per_tick: int = 50
    batch_size: int = 25
    max_queued_runs: int = 200
    max_files_per_tick: int = 1000
    tick_budget_s: float = 30.0
    settle_s: float = 10.0
    max_attempts: int = 3
    retry_delay_s: float = 60.0
    rerun_on_new_version: bool = True
    run_max_runtime_s: int | None = None
    audit_after_s: float = 60.0
    lease_ttl_s: float = 60.0
    reconcile_page: int = RECONCILE_PAGE
    max_job_file_bytes: int = DEFAULT_MAX_JOB_FILE_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> SensorSettings:
        return cls(
            inbox=settings.DISPATCH_INBOX,
            interval_s=settings.SENSOR_INTERVAL_S,
            start_stopped=settings.SENSOR_START_STOPPED,
            max_runs_per_tick=settings.SENSOR_MAX_RUNS_PER_TICK,
            batch_size=settings.SENSOR_BATCH_SIZE,
            max_queued_runs=settings.SENSOR_MAX_QUEUED_RUNS,
            max_files_per_tick=settings.SENSOR_MAX_FILES_PER_TICK,
            tick_budget_s=settings.SENSOR_TICK_BUDGET_S,
            settle_s=settings.INBOX_SETTLE_S,
            max_attempts=settings.MAX_ATTEMPTS,
            retry_delay_s=settings.RETRY_DELAY_S,
            rerun_on_new_version=settings.RERUN_ON_NEW_VERSION,
            run_max_runtime_s=settings.RUN_MAX_RUNTIME_S,
            audit_after_s=settings.SENSOR_AUDIT_AFTER_S,
            lease_ttl_s=settings.LEASE_TTL_S,
            max_job_file_bytes=settings.MAX_JOB_FILE_BYTES,
        )

    @property
    def default_status(self) -> DefaultSensorStatus:
        return DefaultSensorStatus.STOPPED if self.start_stopped else DefaultSensorStatus.RUNNING

    def retry_delay(self, attempts: int) -> dt.timedelta:
        """How long a job that failed after ``attempts`` attempts waits: doubling from RETRY_DELAY_S."""
        return dt.timedelta(seconds=self.retry_delay_s * 2 ** max(attempts - 1, 0))
