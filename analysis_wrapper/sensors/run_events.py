"""The run-end sensors: Dagster's own run status sensors keep the job registry current when a run of
an analysis job fails (``analysis_wrapper_run_failures``) or is canceled (``analysis_wrapper_run_cancels``).

For each such run they mark its jobs failed with the run's error when that is news to the registry
(:func:`~analysis_wrapper.sensors.runs.apply_run_end_to_jobs`): the asset marks the failures it sees
itself; this catches runs that end before or around it (launch failure, bad config, a run failed by
run monitoring or recovery). Dagster keeps the cursor over the run status events: a sensor starts at
the newest event on its first tick and then handles every later one, after downtime too, at most
``DAGSTER_RUN_STATUS_SENSOR_PROCESS_LIMIT`` (5) runs a tick. What it has not reached yet, the inbox
sensor's audit (:mod:`~analysis_wrapper.sensors.recovery`) finds after ``SENSOR_AUDIT_AFTER_S``, as it
finds runs that die without any event (a killed run worker of the default run launcher, a CLI run).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dagster import (
    DagsterRunStatus,
    RunStatusSensorContext,
    SensorDefinition,
    run_failure_sensor,
    run_status_sensor,
)

from analysis_wrapper.factory import AnalysisDefinitions
from analysis_wrapper.resources.record_store import StoreResource
from analysis_wrapper.sensors.runs import apply_run_end_to_jobs, run_error
from analysis_wrapper.settings import SensorSettings

RUN_FAILURES_SENSOR_NAME = "analysis_wrapper_run_failures"
RUN_CANCELS_SENSOR_NAME = "analysis_wrapper_run_cancels"


def _mark_jobs(jobs: Mapping[str, str], canceled: bool) -> Callable[..., None]:
    """The sensor function: the jobs of the run that ended (of an analysis in ``jobs``, Dagster job
    name -> analysis) marked failed with its error. It returns nothing, so one tick handles every
    event Dagster gives it (a return value would end the tick after one run)."""

    def mark_jobs(context: RunStatusSensorContext, store: StoreResource) -> None:
        run = context.dagster_run
        message = context.dagster_event.message or ""
        if canceled:
            error = f"run {run.run_id} was canceled" + (f": {message}" if message else "")
        else:
            error = run_error(context.instance, run.run_id, message or "the run failed")
        marked = apply_run_end_to_jobs(store.get_store(), jobs[run.job_name], run, error)
        if marked:
            context.log.info(f"{marked} job(s) of {jobs[run.job_name]} marked failed: {error}")

    return mark_jobs


def build_run_end_sensors(
    built: Mapping[str, AnalysisDefinitions], config: SensorSettings
) -> list[SensorDefinition]:
    """The run failure and run cancel sensors over every analysis job in ``built``."""
    monitored = [job for d in built.values() for job in (d.job, d.batch_job)]
    jobs = {job.name: name for name, d in built.items() for job in (d.job, d.batch_job)}
    common: dict[str, Any] = {
        "monitored_jobs": monitored,
        "minimum_interval_seconds": config.interval_s,
        "default_status": config.default_status,
    }
    failures = run_failure_sensor(
        name=RUN_FAILURES_SENSOR_NAME,
        description="A failed run of an analysis job marks its job failed (with the run's error) when the "
        "asset could not, so the inbox sensor retries it.",
        **common,
    )(_mark_jobs(jobs, canceled=False))
    cancels = run_status_sensor(
        run_status=DagsterRunStatus.CANCELED,
        name=RUN_CANCELS_SENSOR_NAME,
        description="A canceled run of an analysis job marks its started job failed, so the inbox sensor "
        "retries it.",
        **common,
    )(_mark_jobs(jobs, canceled=True))
    return [failures, cancels]
