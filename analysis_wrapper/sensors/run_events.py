"""The run events sensor (``analysis_wrapper_run_events``): keeps the job registry current from
Dagster's run failure and cancel events.

It reads those events after its cursor and, for runs of an analysis job, marks their jobs failed with
the run's error when that is news to the registry (:func:`~analysis_wrapper.sensors.runs.apply_run_end`):
the asset marks the failures it sees itself; this catches runs that die before or around it
(launch failure, bad config, a run worker killed, a run failed by run monitoring or recovery).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping

from dagster import (
    DagsterEventType,
    DagsterInstance,
    RunsFilter,
    RunStatusChangeRecordsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from analysis_wrapper.factory import AnalysisDefinitions
from analysis_wrapper.resources.record_store import StoreResource
from analysis_wrapper.sensors.runs import apply_run_end_to_jobs, run_error
from analysis_wrapper.sensors.settings import SensorSettings
from analysis_wrapper.store.base import Store

RUN_EVENTS_SENSOR_NAME = "analysis_wrapper_run_events"
RUN_EVENTS_PER_TICK = 500
RUN_EVENTS_LOOKBACK_S = 24 * 3600
"""On its first tick the run events sensor reads the last day's events (handling them is idempotent)."""

_RUN_END_EVENTS = {"failure": DagsterEventType.RUN_FAILURE, "canceled": DagsterEventType.RUN_CANCELED}


def handle_run_events(
    instance: DagsterInstance,
    store: Store,
    jobs: Mapping[str, str],
    cursor_text: str | None,
    limit: int = RUN_EVENTS_PER_TICK,
) -> tuple[str, Counter[str]]:
    """Mark jobs failed from run failure / cancel events after the cursor; the new cursor and counts.

    ``jobs`` maps the Dagster job names to watch to their analysis.
    """
    try:
        cursor: dict[str, int] = {k: int(v) for k, v in json.loads(cursor_text or "{}").items()}
    except (ValueError, AttributeError, TypeError):
        cursor = {}
    counts: Counter[str] = Counter()
    use_job_filter = instance.event_log_storage.supports_run_status_change_job_name_filter
    for name, event_type in _RUN_END_EVENTS.items():
        if name in cursor:
            records_filter = RunStatusChangeRecordsFilter(
                event_type=event_type,  # type: ignore[arg-type]
                after_storage_id=cursor[name],
                job_names=list(jobs) if use_job_filter else None,
            )
        else:
            records_filter = RunStatusChangeRecordsFilter(
                event_type=event_type,  # type: ignore[arg-type]
                after_timestamp=time.time() - RUN_EVENTS_LOOKBACK_S,
            )
        events = instance.fetch_run_status_changes(records_filter, limit=limit, ascending=True).records
        if name not in cursor:
            latest = instance.fetch_run_status_changes(event_type, limit=1).records  # type: ignore[arg-type]
            cursor[name] = latest[0].storage_id if latest and not events else -1
        if not events:
            continue
        cursor[name] = max(cursor[name], *(e.storage_id for e in events))
        run_ids = list({e.event_log_entry.run_id for e in events})
        runs = {
            r.dagster_run.run_id: r.dagster_run for r in instance.get_run_records(RunsFilter(run_ids=run_ids))
        }
        for event in events:
            run = runs.get(event.event_log_entry.run_id)
            if run is None or run.job_name not in jobs:
                continue
            message = event.event_log_entry.message or ""
            if name == "canceled":
                error = f"run {run.run_id} was canceled" + (f": {message}" if message else "")
            else:
                error = run_error(instance, run.run_id, message or "the run failed")
            counts[name] += apply_run_end_to_jobs(store, jobs[run.job_name], run, error)
    return json.dumps(cursor, sort_keys=True), counts


def build_run_events_sensor(
    built: Mapping[str, AnalysisDefinitions], config: SensorSettings
) -> SensorDefinition:
    jobs = {
        job: name for name, d in built.items() for job in (d.analysis.job_name, d.analysis.batch_job_name)
    }

    @sensor(
        name=RUN_EVENTS_SENSOR_NAME,
        minimum_interval_seconds=config.interval_s,
        default_status=config.default_status,
        description=(
            "Keeps the job registry current from Dagster run events: a failed or canceled run of an "
            "analysis job marks its job failed (with the error), so the inbox sensors retry it."
        ),
    )
    def run_events(context: SensorEvaluationContext, store: StoreResource) -> SensorResult:
        cursor, counts = handle_run_events(context.instance, store.get_store(), jobs, context.cursor)
        summary = f"{counts['failure']} job(s) marked failed, {counts['canceled']} canceled"
        if counts:
            context.log.info(summary)
        return SensorResult(skip_reason=summary, cursor=cursor)

    return run_events
