"""Batch runs: many partitions of one analysis in one Dagster run.

A Dagster run costs about a second of its own (run record, event log, launching a run worker that
imports the code), whatever the job. For small jobs that is most of the work, so the inbox sensor
(``SENSOR_BATCH_SIZE``) and ``analysis-wrapper run`` (``--batch-size``) put several partitions into
one run of ``<analysis>_batch_job``. Each partition goes through exactly the steps of the result
asset (:func:`~analysis_wrapper.partition_run.compute_partition`, then the results IO manager), and
the run reports one ``AssetMaterialization`` per partition of ``<analysis>_result``, so the asset's
partitions, their metadata and their data versions look the same in the UI either way.

A partition that fails is marked failed in the registry (to be retried like any other) and the run
goes on with the next one (a partition whose fingerprint another run is computing is skipped); the
run fails at the end, naming every partition that failed. The keys of
a batch are in its run config (:func:`batch_keys`), where the sensors read them back.
"""

import functools
from collections.abc import Iterator
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    Config,
    DagsterRun,
    Failure,
    JobDefinition,
    MetadataValue,
    OpExecutionContext,
    ResourceParam,
    TableColumn,
    TableRecord,
    TableSchema,
    in_process_executor,
    job,
    op,
)
from pydantic import Field

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.checks import evaluate_checks
from analysis_wrapper.ownership import end_heartbeat, heartbeat
from analysis_wrapper.partition_run import PartitionContext, compute_partition
from analysis_wrapper.resources.record_store import StoreResource
from analysis_wrapper.resources.results_io import ResultsIOManager
from analysis_wrapper.resources.runtime import AnalysisRuntime
from analysis_wrapper.tags import ANALYSIS_TAG, CODE_VERSION_TAG, DATA_VERSION_TAG

MAX_ERRORS_SHOWN = 10


class BatchConfig(Config):
    """Run config of a batch run: which partitions, and the same switches as a one-partition run."""

    partition_keys: list[str] = Field(description="Partitions of the result asset to run, in order")
    force: bool = Field(False, description="Run even partitions whose fingerprint is recorded")
    dry_run: bool | None = Field(None, description="Post nothing; unset: the DRY_RUN setting")


def failure_text(exc: Exception) -> str:
    return str(exc.description) if isinstance(exc, Failure) else f"{type(exc).__name__}: {exc}"


def failure_metadata(exc: Exception, run_id: str) -> dict[str, Any]:
    """What a failed partition's observation says: the reason and the run whose log has the rest."""
    message = failure_text(exc)
    return {
        "status": f"failed: {message.splitlines()[0] if message else type(exc).__name__}",
        "reason": MetadataValue.md(f"```\n{message}\n```") if "\n" in message else message,
        "run_id": run_id,
    }


def mark_failed(store: StoreResource, analysis: str, key: str, run_id: str, exc: Exception) -> None:
    """Make sure a partition that failed in this batch is ``failed`` with an attempt counted.

    A job this run started was failed where it failed (the analysis, the commit); one refused before
    it started (bad parameters, no git state) is refused here, as one attempt. A one-partition run
    leaves that to the run-events sensor (its run carries its attempt); a batch cannot.
    """
    entry = store.get_store().get_job(analysis, key)
    if entry is None or entry.run_id == run_id:
        return  # gone, or marked by this run already
    store.lifecycle().refused(entry, run_id, failure_text(exc))


def outcome_table(outcomes: dict[str, str]) -> MetadataValue:
    """Partition and outcome, one row each: what a failed batch run's page shows."""
    rows = [TableRecord({"partition": key, "outcome": outcome}) for key, outcome in outcomes.items()]
    schema = TableSchema(columns=[TableColumn("partition", "string"), TableColumn("outcome", "string")])
    return MetadataValue.table(rows, schema=schema)


def batch_op_name(analysis: Analysis[Any, Any]) -> str:
    return f"{analysis.name}_batch"


def batch_run_config(
    analysis: Analysis[Any, Any], keys: list[str], force: bool = False, dry_run: bool | None = None
) -> dict[str, Any]:
    op_config: dict[str, Any] = {"partition_keys": list(keys), "force": force}
    if dry_run is not None:
        op_config["dry_run"] = dry_run
    return {"ops": {batch_op_name(analysis): {"config": op_config}}}


def batch_keys(run: DagsterRun) -> list[str] | None:
    """The partition keys of a batch run (from its run config); None for any other run."""
    ops = (run.run_config or {}).get("ops")
    if not isinstance(ops, dict):
        return None
    for name, body in ops.items():
        if name.endswith("_batch") and isinstance(body, dict):
            keys = (body.get("config") or {}).get("partition_keys")
            if isinstance(keys, list):
                return [str(k) for k in keys]
    return None


def build_batch_job(
    analysis: Analysis[Any, Any], config_class: type[Config], asset_key: AssetKey, run_script: str
) -> JobDefinition:
    """``<analysis>_batch_job``: one op that runs the partitions named in its config one by one."""

    @op(
        name=batch_op_name(analysis),
        description=f"Run {analysis.name} on several partitions of {analysis.asset_name}, one by one.",
        tags={"analysis": analysis.name},
        out={},  # it reports materializations, one per partition; it has no output to pass on
    )
    def run_batch(
        context: OpExecutionContext,
        config: BatchConfig,
        store: StoreResource,
        runtime: AnalysisRuntime,
        results_io_manager: ResourceParam[ResultsIOManager],
    ) -> Iterator[AssetMaterialization | AssetObservation | AssetCheckEvaluation]:
        heartbeat(store.get_store(), context.run_id, store.lease_ttl_s)
        try:
            yield from _run_partitions(context, config, store, runtime, results_io_manager)
        finally:
            end_heartbeat(context.run_id)

    def _run_partitions(
        context: OpExecutionContext,
        config: BatchConfig,
        store: StoreResource,
        runtime: AnalysisRuntime,
        results_io_manager: ResultsIOManager,
    ) -> Iterator[AssetMaterialization | AssetObservation | AssetCheckEvaluation]:
        keys = list(dict.fromkeys(config.partition_keys))
        partition_config = config_class(force=config.force, dry_run=config.dry_run)
        where = PartitionContext(context.run_id, asset_key.to_user_string(), context.log)
        # One run, one code state: git is asked once (three subprocesses), not once per partition.
        code_state = functools.cache(runtime.code_state)
        failures: list[str] = []
        outcomes: dict[str, str] = {}  # per partition, what happened: the run's page lists them
        for number, key in enumerate(keys, start=1):
            try:
                outcome = compute_partition(
                    analysis, key, partition_config, store, runtime, where, run_script, code_state
                )
                stored = results_io_manager.store_result(outcome.result, context.run_id, context.log)
            except Exception as exc:  # this partition failed (and is marked so); the batch goes on
                mark_failed(store, analysis.name, key, context.run_id, exc)
                message = failure_text(exc)
                context.log.error(f"{analysis.name} partition {key} ({number}/{len(keys)}) failed: {message}")
                failures.append(f"{key}: {message.splitlines()[0] if message else type(exc).__name__}")
                outcomes[key] = f"failed: {failures[-1].removeprefix(f'{key}: ')}"
                yield AssetObservation(
                    asset_key=asset_key, partition=key, metadata=failure_metadata(exc, context.run_id)
                )
                continue
            outcomes[key] = str(stored.get("status") or "done")
            fingerprint = outcome.result.job.fingerprint
            if outcome.result.skipped or outcome.result.dry_run:  # no new result: see factory.compute
                yield AssetObservation(
                    asset_key=asset_key, partition=key, metadata={**outcome.metadata, **stored}
                )
                continue
            yield AssetMaterialization(
                asset_key=asset_key,
                partition=key,
                metadata={**outcome.metadata, **stored},
                tags={DATA_VERSION_TAG: fingerprint, CODE_VERSION_TAG: analysis.version},
            )
            for checked in evaluate_checks(analysis, fingerprint, store, results_io_manager.results):
                yield checked.evaluation(asset_key, key)
        context.log.info(
            f"{analysis.name} batch: {len(keys) - len(failures)} of {len(keys)} partition(s) ok:\n"
            + "\n".join(f"  {key}: {outcome}" for key, outcome in outcomes.items())
        )
        if failures:
            shown = "; ".join(failures[:MAX_ERRORS_SHOWN])
            more = (
                f" (and {len(failures) - MAX_ERRORS_SHOWN} more)" if len(failures) > MAX_ERRORS_SHOWN else ""
            )
            raise Failure(
                f"{len(failures)} of {len(keys)} partition(s) of {analysis.name} failed: {shown}{more}. "
                "They are marked failed in the job registry; the inbox sensor retries them, or run "
                "`analysis-wrapper retry`.",
                metadata={"partitions": outcome_table(outcomes)},
            )

    @job(
        name=analysis.batch_job_name,
        tags={ANALYSIS_TAG: analysis.name},
        description=f"Run {analysis.name} on several dispatched jobs (partitions of {analysis.asset_name}) "
        "in one run: the keys are in the run config.",
        executor_def=in_process_executor,
    )
    def batch_job() -> None:
        run_batch()

    return batch_job
