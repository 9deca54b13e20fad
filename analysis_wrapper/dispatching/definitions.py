"""The Dagster side of dispatch: per analysis ``<analysis>_dispatch_job`` (the settings as a typed
Launchpad form) and the ``<analysis>_dispatches`` asset its records belong to; per saved query a
sensor that re-runs it, registering only new jobs.

The sensor's tick runs one dispatch within ``SENSOR_TICK_BUDGET_S`` (Dagster stops a tick at 60 s):
it takes the query's results in batches and, when time runs out, stores where it stopped in its
cursor; the next tick goes on from there, and a pass that reached the end starts over on the next
tick. Changing the saved query's settings starts the pass over. Registered jobs are run by the
analysis's inbox sensor, like jobs from files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import (
    Failure,
    JobDefinition,
    OpExecutionContext,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    job,
    op,
    sensor,
)
from dagster_aws.s3 import S3Resource

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.dispatching.dispatch_config import DispatchSettings, DispatchSettingsError
from analysis_wrapper.dispatching.dispatch_run import dispatch
from analysis_wrapper.dispatching.metadata_db import MetadataDatabase, MetadataDatabaseNotConfigured
from analysis_wrapper.dispatching.query import DispatchQueryError
from analysis_wrapper.dispatching.record import dispatch_asset_spec, dispatch_materialization
from analysis_wrapper.dispatching.saved import SavedQuery, load_saved_queries
from analysis_wrapper.resources.record_store import StoreResource
from analysis_wrapper.resources.s3_client import cached_client
from analysis_wrapper.settings import Settings
from analysis_wrapper.store.base import StoreError

DISPATCH_TAG = "analysis_wrapper/dispatch"
"""Tag of dispatch runs (not ``analysis_wrapper/analysis``: they must not take an analysis's run slots)."""
DISPATCH_ERRORS = (
    DispatchQueryError,
    DispatchSettingsError,
    MetadataDatabaseNotConfigured,
    StoreError,
    ValueError,
)


@dataclass(frozen=True)
class DispatchDefinitions:
    assets: list[Any] = field(default_factory=list)  # AssetSpec, listed beside AssetsDefinitions
    jobs: list[JobDefinition] = field(default_factory=list)
    sensors: list[SensorDefinition] = field(default_factory=list)


def build_dispatch_job(analysis: Analysis[Any, Any], settings: Settings) -> JobDefinition:
    """``<analysis>_dispatch_job``: one dispatch with the Launchpad's settings."""

    def dispatch_op(context: OpExecutionContext, config: Any, store: StoreResource, s3: S3Resource) -> None:
        try:
            metadata = MetadataDatabase.from_settings(settings)
        except MetadataDatabaseNotConfigured as exc:
            raise Failure(description=f"{analysis.name} dispatch refused: {exc}") from None
        try:
            report = dispatch(
                analysis,
                config,
                store.get_store(),
                metadata,
                context.instance,
                s3_client=lambda: cached_client(s3),
                origin=f"launchpad run {context.run_id}",
                batch_size=settings.DISPATCH_BATCH_SIZE,
                logger=context.log,
            )
        except DISPATCH_ERRORS as exc:
            raise Failure(description=f"{analysis.name} dispatch refused: {exc}") from None
        finally:
            metadata.close()
        if not report.dry_run:
            context.log_event(dispatch_materialization(report))
        context.log.info(report.summary())

    # Dagster reads the config class from the annotation of `config` (a real class, not a string).
    dispatch_op.__annotations__.update(
        {"context": OpExecutionContext, "config": DispatchSettings, "store": StoreResource, "s3": S3Resource}
    )
    dispatch_op.__annotations__["return"] = None
    dispatch_step = op(
        name=f"{analysis.name}_dispatch", description=f"Dispatch {analysis.name} jobs from a query"
    )(dispatch_op)

    @job(
        name=f"{analysis.name}_dispatch_job",
        tags={DISPATCH_TAG: analysis.name},
        description=f"Find assets in the metadata database and register them as {analysis.name} jobs "
        "(the AIND dispatcher's settings); the inbox sensor then runs them.",
    )
    def dispatch_job() -> None:
        dispatch_step()

    return dispatch_job


@dataclass
class DispatchCursor:
    """Where a saved query's pass stands: the settings it is for, and the last result handled."""

    query: str = ""
    after: str | None = None
    passes: int = 0

    @classmethod
    def parse(cls, text: str | None) -> DispatchCursor:
        try:
            data = json.loads(text) if text else {}
            return cls(
                query=str(data.get("query", "")), after=data.get("after"), passes=int(data.get("passes", 0))
            )
        except (ValueError, TypeError, AttributeError):
            return cls()

    def dump(self) -> str:
        return json.dumps(
            {"query": self.query, "after": self.after, "passes": self.passes}, separators=(",", ":")
        )


def build_saved_query_sensor(
    saved: SavedQuery, analysis: Analysis[Any, Any], settings: Settings
) -> SensorDefinition:
    budget_s = settings.sensor.tick_budget_s

    @sensor(
        name=saved.sensor_name,
        minimum_interval_seconds=settings.DISPATCH_INTERVAL_S,
        default_status=settings.sensor.default_status,
        description=f"Re-runs the saved query {saved.path.name} and registers the new {analysis.name} jobs "
        f"(every {settings.DISPATCH_INTERVAL_S} s, at most {budget_s:g} s per tick).",
    )
    def saved_query_sensor(
        context: SensorEvaluationContext, store: StoreResource, s3: S3Resource
    ) -> SensorResult:
        cursor = DispatchCursor.parse(context.cursor)
        if cursor.query != saved.fingerprint:
            cursor = DispatchCursor(query=saved.fingerprint)
        metadata = MetadataDatabase.from_settings(settings)
        try:
            report = dispatch(
                analysis,
                saved.settings,
                store.get_store(),
                metadata,
                context.instance,
                s3_client=lambda: cached_client(s3),
                origin=f"saved query {saved.name}",
                after=cursor.after,
                deadline=time.monotonic() + budget_s,
                batch_size=settings.DISPATCH_BATCH_SIZE,
                logger=context.log,
            )
        finally:
            metadata.close()
        cursor.after = report.next_after
        if report.next_after is None:
            cursor.passes += 1
        events = [] if report.dry_run else [dispatch_materialization(report)]
        return SensorResult(asset_events=events, cursor=cursor.dump(), skip_reason=report.summary())

    return saved_query_sensor


def build_dispatch_definitions(built: Mapping[str, Any], settings: Settings) -> DispatchDefinitions:
    """Dispatch job and asset per analysis in ``built``; a sensor per saved query in ``DISPATCH_QUERIES``."""
    analyses: dict[str, Analysis[Any, Any]] = {name: d.analysis for name, d in built.items()}
    saved = load_saved_queries(Path(settings.DISPATCH_QUERIES).expanduser(), set(analyses))
    return DispatchDefinitions(
        assets=[dispatch_asset_spec(name) for name in analyses],
        jobs=[build_dispatch_job(a, settings) for a in analyses.values()],
        sensors=[build_saved_query_sensor(q, analyses[q.analysis], settings) for q in saved],
    )
