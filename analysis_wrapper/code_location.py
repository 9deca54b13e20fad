"""A code location's Definitions: every analysis's partitions, asset and job, with resources from settings.

:func:`build_definitions` is the library's entry to Dagster: a team's own ``definitions.py`` is
``defs = build_definitions(analyses=[analysis])``, and serves those analyses only; this repository's
location (:mod:`analysis_wrapper.definitions`), the CLI and the tests come through it too.

This is the one place where the environment decides the parts: SQLite or pymongo for jobs, records
and leases, a local folder or S3 for results. Everything else receives resources and never reads settings.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import Any

from dagster import Definitions, EnvVar, in_process_executor
from dagster_aws.s3 import S3Resource

from analysis_wrapper.analyses import discover_analyses
from analysis_wrapper.analysis import Analysis
from analysis_wrapper.dispatching.definitions import build_dispatch_definitions
from analysis_wrapper.factory import RESULTS_IO_MANAGER_KEY, AnalysisDefinitions, build_analysis_definitions
from analysis_wrapper.resources.record_store import StoreResource
from analysis_wrapper.resources.results_io import ResultsIOManager
from analysis_wrapper.resources.results_resources import (
    LocalResultsResource,
    ResultsStorageResource,
    S3ResultsResource,
)
from analysis_wrapper.resources.runtime import AnalysisRuntime
from analysis_wrapper.resources.s3_client import BoundedS3Resource
from analysis_wrapper.sensors import build_sensors
from analysis_wrapper.settings import Settings
from analysis_wrapper.summary.asset import summary_sensor


def store_resource(settings: Settings) -> StoreResource:
    if settings.DOCDB_URI is None:
        return StoreResource(
            backend="sqlite",
            sqlite_path=str(settings.sqlite_path),
            lease_ttl_s=settings.LEASE_TTL_S,
            busy_timeout_s=settings.STORE_BUSY_TIMEOUT_S,
        )
    return StoreResource(
        backend="mongodb",
        lease_ttl_s=settings.LEASE_TTL_S,
        uri=EnvVar(_uri_variable(settings.DOCDB_URI.get_secret_value())),
        database=settings.DOCDB_DATABASE,
        collection=settings.DOCDB_COLLECTION,
        tls=settings.DOCDB_TLS,
        tls_ca_file=settings.DOCDB_TLS_CA_FILE,
        timeout_ms=settings.DOCDB_TIMEOUT_MS,
    )


def _uri_variable(uri: str) -> str:
    """The environment variable holding ``uri``, passed as an ``EnvVar`` so that the Dagster UI shows
    the variable's name, never the password. ``DOCDB_URI`` when it holds this URI (settings read from
    the environment, the usual case); settings given in code get a variable of their own, named after
    the URI's hash, so ``DOCDB_URI`` itself is never set, nor read when it holds another server."""
    if os.environ.get("DOCDB_URI") == uri:
        return "DOCDB_URI"
    name = f"ANALYSIS_WRAPPER_DOCDB_URI_{hashlib.sha256(uri.encode()).hexdigest()[:12].upper()}"
    os.environ[name] = uri
    return name


def results_storage_resource(settings: Settings, s3: S3Resource) -> ResultsStorageResource:
    """S3 when ``ANALYSIS_BUCKET`` is set, else the local ``RESULTS_ROOT``; dry runs: ``DRY_RUN_ROOT``."""
    dry_run_root = str(settings.DRY_RUN_ROOT.absolute())
    if settings.ANALYSIS_BUCKET:
        return S3ResultsResource(s3=s3, bucket=settings.ANALYSIS_BUCKET, dry_run_root=dry_run_root)
    return LocalResultsResource(s3=s3, root=str(settings.RESULTS_ROOT.absolute()), dry_run_root=dry_run_root)


def build_resources(settings: Settings) -> dict[str, Any]:
    store = store_resource(settings)
    # Credentials come from boto3's usual chain (environment, profile, instance role), never from config,
    # so the UI shows none; AWS_ENDPOINT_URL points boto3 at S3-compatible servers. One client config for
    # results, S3 inputs and the S3 inbox, with every wait bounded (S3_* settings).
    s3 = BoundedS3Resource(
        endpoint_url=settings.AWS_ENDPOINT_URL,
        connect_timeout_s=settings.S3_CONNECT_TIMEOUT_S,
        read_timeout_s=settings.S3_READ_TIMEOUT_S,
        max_attempts=settings.S3_MAX_ATTEMPTS,
        retry_mode=settings.S3_RETRY_MODE,
    )
    return {
        "s3": s3,
        "store": store,
        "runtime": AnalysisRuntime(
            dry_run=settings.DRY_RUN,
            allow_dirty=settings.ALLOW_DIRTY,
            git_commit=settings.GIT_COMMIT,
            code_repository=str(settings.CODE_REPOSITORY) if settings.CODE_REPOSITORY else None,
            s3=s3,
            scratch_root=str(settings.SCRATCH_ROOT.absolute()) if settings.SCRATCH_ROOT else None,
        ),
        RESULTS_IO_MANAGER_KEY: ResultsIOManager(store=store, results=results_storage_resource(settings, s3)),
    }


def build_analysis_set(
    analyses: Iterable[Analysis[Any, Any]] | None = None, settings: Settings | None = None
) -> dict[str, AnalysisDefinitions]:
    """The Dagster side of ``analyses`` (default: the analyses served here,
    :func:`~analysis_wrapper.analyses.discover_analyses`: installed entry points, else the shipped
    example, and ``ANALYSIS_MODULES``)."""
    settings = settings or Settings()
    if analyses is None:
        analyses = discover_analyses(settings.analysis_modules).values()
    chosen = list(analyses)
    names = [a.name for a in chosen]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"two analyses given are named {', '.join(map(repr, twice))}")
    return {a.name: build_analysis_definitions(a, settings.BACKFILL_PARTITIONS_PER_RUN) for a in chosen}


def build_definitions(
    analyses: Iterable[Analysis[Any, Any]] | None = None,
    settings: Settings | None = None,
    *,
    built: dict[str, AnalysisDefinitions] | None = None,
) -> Definitions:
    """The Definitions of a code location serving ``analyses``: per analysis its partitions, result
    asset, jobs, summary and sensors, plus dispatch, with resources from ``settings`` (default: read from
    the environment, as every setting is). A team's ``definitions.py``::

        from analysis_wrapper import build_definitions
        from team_analyses.spike_rate import analysis

        defs = build_definitions(analyses=[analysis])

    ``analyses=None`` serves what :func:`~analysis_wrapper.analyses.discover_analyses` finds (this
    repository's location and the CLI); ``built`` reuses analyses already built (the CLI's session)."""
    settings = settings or Settings()
    built = built if built is not None else build_analysis_set(analyses, settings)
    dispatch = build_dispatch_definitions(built, settings)
    sensor = settings.sensor
    with_summary = [(d.analysis, d.summary) for d in built.values() if d.summary is not None]
    return Definitions(
        assets=[d.asset for d in built.values()] + [s for _a, s in with_summary] + dispatch.assets,
        jobs=[j for d in built.values() for j in (d.job, d.batch_job)] + dispatch.jobs,
        sensors=build_sensors(built, sensor)
        + dispatch.sensors
        + [summary_sensor(a, s, sensor.interval_s, sensor.default_status) for a, s in with_summary],
        resources=build_resources(settings),
        # Every job's steps in its run worker, Dagster's own asset job too (the UI's materializations and
        # backfills): the default multiprocess executor would start one more Python process per step,
        # about 2.5 s before a run's first job (benchmarks/). A run here is one step, or a result and its
        # summary one after the other.
        executor=in_process_executor,
    )
