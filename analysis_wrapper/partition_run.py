"""One partition's work, whoever runs it: the result asset (one partition per run) or a batch run.

:func:`compute_partition` loads the partition's job from the registry (with run-config overrides),
skips a fingerprint already recorded, runs the analysis into a scratch folder and builds the
provenance record; it returns the :class:`AnalysisResult` for the results IO manager and the
materialization metadata. It keeps the job registry current (running, failed) as it goes; the IO
manager marks the job done once its record is committed.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import Config, Failure, MetadataValue, TableColumn, TableRecord, TableSchema
from pydantic import BaseModel, ValidationError

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.config import overrides_from_config
from analysis_wrapper.dispatch import AnalysisJob, DispatchJob, JobFileError, build_analysis_job
from analysis_wrapper.inputs import InputNotFoundError, resolve_inputs
from analysis_wrapper.provenance import CodeState, DirtyTreeError, build_record, check_may_post
from analysis_wrapper.resources.records import RecordStoreResource
from analysis_wrapper.resources.results_io import AnalysisResult
from analysis_wrapper.resources.runtime import AnalysisRuntime
from analysis_wrapper.resources.s3_storage import S3InputCache
from analysis_wrapper.resources.store_base import JobState


@dataclass(frozen=True)
class PartitionContext:
    """Where a partition runs: its run, the asset it materializes, the log to tell."""

    run_id: str
    asset_key: str
    log: Any


@dataclass
class PartitionOutcome:
    result: AnalysisResult
    metadata: dict[str, Any]


def json_scalar(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value if isinstance(value, str) else repr(value) if value is None else str(value)


def _outputs_table(outputs: BaseModel) -> MetadataValue:
    values = outputs.model_dump(mode="json")
    rows = [TableRecord({"output": name, "value": json_scalar(value)}) for name, value in values.items()]
    schema = TableSchema(columns=[TableColumn("output", "string"), TableColumn("value", "string")])
    return MetadataValue.table(rows, schema=schema)


def _figure_markdown(path: Path) -> MetadataValue | None:
    if not path.is_file() or path.stat().st_size > 4_000_000:
        return None
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return MetadataValue.md(f"![{path.name}](data:image/png;base64,{data})")


def load_job(
    analysis: Analysis[Any, Any], records: RecordStoreResource, key: str, config: Config, log: Any
) -> tuple[AnalysisJob, str]:
    """The partition's job from the registry, with run-config overrides applied and validated."""
    entry = records.get_store().get_job(analysis.name, key)
    if entry is None:
        raise Failure(
            f"Partition {key!r} of {analysis.name} is not in the job registry. Register its job file first "
            "(`analysis-wrapper submit FILE`, or drop it in the dispatch inbox)."
        )
    source = entry.source or "registry"
    try:
        dispatch = DispatchJob.model_validate(dict(entry.job))
        job = build_analysis_job(
            dispatch, analysis, overrides_from_config(config, analysis), source=source, logger=log
        )
    except (JobFileError, ValidationError) as exc:
        raise Failure(f"Invalid parameters for partition {key}, nothing was run: {exc}") from None
    if job.partition_key != key:
        log.info(
            f"Run-config overrides change this job's parameters: it runs and is recorded under partition "
            f"{key} with fingerprint {job.fingerprint} (a job file with these parameters would get key "
            f"{job.partition_key})."
        )
        job = job.model_copy(update={"partition_key": key})
    return job, source


def compute_partition(
    analysis: Analysis[Any, Any],
    key: str,
    config: Any,
    records: RecordStoreResource,
    runtime: AnalysisRuntime,
    where: PartitionContext,
    run_script: str,
    code_state: Callable[[], CodeState] | None = None,
) -> PartitionOutcome:
    """Run ``analysis`` on partition ``key`` (or skip it when its fingerprint is recorded).

    ``config`` is the analysis's generated ``Config`` (overrides, ``dry_run``, ``force``). Raises
    :class:`~dagster.Failure` for a job that cannot run (not registered, bad overrides, dirty tree)
    and re-raises the analysis's own exception after marking the job failed. ``code_state`` (default:
    ``runtime.code_state``) lets a batch read the git state once for all its partitions.
    """
    store = records.get_store()
    log = where.log
    job, source = load_job(analysis, records, key, config, log)
    dry_run = runtime.dry_run if config.dry_run is None else bool(config.dry_run)
    log.info(
        f"{analysis.name} {analysis.version} on partition {key}: fingerprint {job.fingerprint}, "
        f"{len(job.inputs)} input(s), dry run {'on' if dry_run else 'off'}."
    )
    common_metadata: dict[str, Any] = {
        "fingerprint": job.fingerprint,
        "inputs": MetadataValue.json({"locations": job.inputs}),
        "parameters": MetadataValue.json(job.parameters),
        "analysis_version": analysis.version,
        "job_source": source,
    }
    if not config.force and store.existing_fingerprints(analysis.name, [job.fingerprint]):
        log.info(
            f"Skipping {key}: fingerprint {job.fingerprint} is already recorded. "
            "Set force: true in run config to run it again."
        )
        store.update_job(analysis.name, key, state=JobState.DONE, run_id=where.run_id)
        skipped = AnalysisResult(
            job=job, outputs=analysis.outputs.model_construct(), dry_run=dry_run, skipped=True
        )
        return PartitionOutcome(skipped, common_metadata)
    code = (code_state or runtime.code_state)()
    try:
        check_may_post(code, dry_run, runtime.allow_dirty)
    except DirtyTreeError as exc:
        # Refused before it started, yet an attempt: a dirty tree must not be retried forever.
        store.update_job(
            analysis.name, key, state=JobState.FAILED, run_id=where.run_id, error=str(exc), count_attempt=True
        )
        raise Failure(str(exc)) from None
    store.update_job(analysis.name, key, state=JobState.RUNNING, run_id=where.run_id, count_attempt=True)
    scratch = Path(
        tempfile.mkdtemp(prefix=f"{analysis.name}-{job.fingerprint[:12]}-", dir=runtime.scratch_dir())
    )
    cache: S3InputCache | None = None
    try:
        cache = S3InputCache(runtime.s3_client, scratch.with_name(scratch.name + "-inputs"))
        started = dt.datetime.now(dt.UTC)
        clock = time.perf_counter()
        job = job.model_copy(update={"input_paths": resolve_inputs(job.inputs, source, cache)})
        outputs = analysis.run(job, analysis.params.model_validate(job.parameters), scratch, log)
        outputs = analysis.outputs.model_validate(outputs)
        cache.cleanup()
        duration = time.perf_counter() - clock
        record = build_record(
            job=job,
            outputs=outputs,
            location="",
            started=started,
            finished=dt.datetime.now(dt.UTC),
            code=code,
            run_id=where.run_id,
            asset_key=where.asset_key,
            run_script=run_script,
            experimenters=runtime.people(),
            dry_run=dry_run,
        )
        metadata: dict[str, Any] = {
            **common_metadata,
            "git_commit": code.commit or "unknown",
            "git_dirty": code.dirty,
            "duration_s": round(duration, 3),
            "outputs": _outputs_table(outputs),
            "dry_run": dry_run,
        }
        if analysis.figure:
            figure = _figure_markdown(scratch / analysis.figure)
            if figure is not None:
                metadata["figure"] = figure
    except Exception as exc:  # nothing half-done is kept: the scratch folder goes, the job is failed
        shutil.rmtree(scratch, ignore_errors=True)
        if cache is not None:
            cache.cleanup()
        reason = f"{type(exc).__name__}: {exc}"
        store.update_job(analysis.name, key, state=JobState.FAILED, run_id=where.run_id, error=reason)
        if isinstance(exc, InputNotFoundError):
            raise Failure(str(exc)) from None
        raise
    log.info(f"{analysis.name} finished {key} in {duration:.2f} s.")
    result = AnalysisResult(
        job=job, outputs=outputs, dry_run=dry_run, force=bool(config.force), scratch=scratch, record=record
    )
    return PartitionOutcome(result, metadata)
