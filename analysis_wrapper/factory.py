"""Build the Dagster side of one analysis: partitions, typed config, result asset and job.

Each registered :class:`~analysis_wrapper.analysis.Analysis` gets

* ``<name>_partitions``: a dynamic partitions definition, one partition per dispatched job;
* ``<Name>Config``: run config mirrored from its ``Params`` (optional overrides, ``dry_run``, ``force``);
* ``<name>_result``: the result asset; it loads its job from the registry by partition key (so UI
  materializations and backfills need no config), skips fingerprints already recorded, runs the
  analysis into a scratch folder and hands the result to the results IO manager;
* ``<name>_job``: an asset job over that asset.
"""

import base64
import datetime as dt
import inspect
import math
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    BetaWarning,
    Config,
    DataVersion,
    DynamicPartitionsDefinition,
    Failure,
    MetadataValue,
    Output,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
    define_asset_job,
    in_process_executor,
)
from pydantic import BaseModel, ValidationError

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.config import build_config_class, overrides_from_config
from analysis_wrapper.dispatch import AnalysisJob, DispatchJob, JobFileError, build_analysis_job
from analysis_wrapper.inputs import InputNotFoundError, resolve_inputs
from analysis_wrapper.provenance import DirtyTreeError, build_record, check_may_post
from analysis_wrapper.resources.records import RecordStoreResource
from analysis_wrapper.resources.results_io import OUTPUTS_MODEL_METADATA_KEY, AnalysisResult
from analysis_wrapper.resources.runtime import AnalysisRuntime
from analysis_wrapper.resources.s3_storage import S3InputCache
from analysis_wrapper.resources.store_base import JobState

# `Output(data_version=...)` is marked beta in Dagster 1.13; we rely on it knowingly (data version =
# fingerprint), so its warning would only be noise in every run log.
warnings.filterwarnings("ignore", message=r".*`data_version`.*", category=BetaWarning)

RESULTS_IO_MANAGER_KEY = "results_io_manager"
ANALYSIS_TAG = "analysis_wrapper/analysis"
FINGERPRINT_TAG = "analysis_wrapper/fingerprint"


@dataclass(frozen=True)
class AnalysisDefinitions:
    """The Dagster objects generated for one analysis."""

    analysis: Analysis[Any, Any]
    partitions: DynamicPartitionsDefinition
    config_class: type[Config]
    asset: AssetsDefinition
    job: Any  # the unresolved asset job from define_asset_job


def _outputs_table(outputs: BaseModel) -> MetadataValue:
    values = outputs.model_dump(mode="json")
    rows = [TableRecord({"output": name, "value": json_scalar(value)}) for name, value in values.items()]
    schema = TableSchema(columns=[TableColumn("output", "string"), TableColumn("value", "string")])
    return MetadataValue.table(rows, schema=schema)


def json_scalar(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value if isinstance(value, str) else repr(value) if value is None else str(value)


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


def build_analysis_definitions(analysis: Analysis[Any, Any]) -> AnalysisDefinitions:
    """Generate partitions, config class, asset and job for ``analysis``."""
    partitions = DynamicPartitionsDefinition(name=analysis.partitions_name)
    config_class = build_config_class(analysis)
    run_script = inspect.getsourcefile(analysis.run) or analysis.name
    outputs_ref = f"{analysis.outputs.__module__}:{analysis.outputs.__qualname__}"

    def compute(
        context: AssetExecutionContext,
        config: Any,
        records: RecordStoreResource,
        runtime: AnalysisRuntime,
    ) -> Output[AnalysisResult]:
        key = context.partition_key
        store = records.get_store()
        job, source = load_job(analysis, records, key, config, context.log)
        dry_run = runtime.dry_run if config.dry_run is None else bool(config.dry_run)
        context.log.info(
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
            context.log.info(
                f"Skipping {key}: fingerprint {job.fingerprint} is already recorded. "
                "Set force: true in run config to run it again."
            )
            store.update_job(analysis.name, key, state=JobState.DONE, run_id=context.run.run_id)
            return Output(
                AnalysisResult(
                    job=job, outputs=analysis.outputs.model_construct(), dry_run=dry_run, skipped=True
                ),
                data_version=DataVersion(job.fingerprint),
                metadata=common_metadata,
            )
        code = runtime.code_state()
        try:
            check_may_post(code, dry_run, runtime.allow_dirty)
        except DirtyTreeError as exc:
            store.update_job(
                analysis.name, key, state=JobState.FAILED, run_id=context.run.run_id, error=str(exc)
            )
            raise Failure(str(exc)) from None
        store.update_job(
            analysis.name, key, state=JobState.RUNNING, run_id=context.run.run_id, count_attempt=True
        )
        scratch = Path(
            tempfile.mkdtemp(prefix=f"{analysis.name}-{job.fingerprint[:12]}-", dir=runtime.scratch_dir())
        )
        cache = S3InputCache(runtime.s3_client, scratch.with_name(scratch.name + "-inputs"))
        started = dt.datetime.now(dt.UTC)
        clock = time.perf_counter()
        try:
            job = job.model_copy(update={"input_paths": resolve_inputs(job.inputs, source, cache)})
            outputs = analysis.run(job, analysis.params.model_validate(job.parameters), scratch, context.log)
            outputs = analysis.outputs.model_validate(outputs)
        except Exception as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            cache.cleanup()
            reason = f"{type(exc).__name__}: {exc}"
            store.update_job(
                analysis.name, key, state=JobState.FAILED, run_id=context.run.run_id, error=reason
            )
            if isinstance(exc, InputNotFoundError):
                raise Failure(str(exc)) from None
            raise
        cache.cleanup()
        duration = time.perf_counter() - clock
        finished = dt.datetime.now(dt.UTC)
        record = build_record(
            job=job,
            outputs=outputs,
            location="",
            started=started,
            finished=finished,
            code=code,
            run_id=context.run.run_id,
            asset_key=context.asset_key.to_user_string(),
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
        context.log.info(f"{analysis.name} finished {key} in {duration:.2f} s.")
        return Output(
            AnalysisResult(
                job=job,
                outputs=outputs,
                dry_run=dry_run,
                force=bool(config.force),
                scratch=scratch,
                record=record,
            ),
            data_version=DataVersion(job.fingerprint),
            metadata=metadata,
        )

    # Dagster reads the config class from the annotation of the `config` parameter.
    compute.__annotations__["config"] = config_class
    compute.__annotations__["return"] = Output[AnalysisResult]

    result_asset = asset(
        name=analysis.asset_name,
        partitions_def=partitions,
        code_version=analysis.version,
        io_manager_key=RESULTS_IO_MANAGER_KEY,
        group_name="analyses",
        description=analysis.description
        or f"Results of the {analysis.name} analysis, one partition per job.",
        metadata={OUTPUTS_MODEL_METADATA_KEY: outputs_ref, "analysis": analysis.name},
        tags={"analysis": analysis.name},
    )(compute)
    job = define_asset_job(
        analysis.job_name,
        selection=[result_asset],
        tags={ANALYSIS_TAG: analysis.name},
        description=f"Run {analysis.name} on one dispatched job (a partition of {analysis.asset_name}).",
        # One step per run: Dagster's default multiprocess executor would start one more Python process
        # per run just for it (about 2.5 s of a 3 s daemon run of a small job, measured in benchmarks/).
        executor_def=in_process_executor,
    )
    return AnalysisDefinitions(analysis, partitions, config_class, result_asset, job)
