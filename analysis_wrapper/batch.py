"""Batch runs: many partitions of one analysis in one Dagster run.

A Dagster run costs about a second of its own (run record, event log, launching a run worker that
imports the code), whatever the job. For small jobs that is most of the work, so the inbox sensor
(``SENSOR_BATCH_SIZE``) and ``analysis-wrapper run`` (``--batch-size``) put several partitions into
one run of ``<analysis>_batch_job``. Each partition goes through exactly the steps of the result
asset (:meth:`~analysis_wrapper.commit.CommitService.run_partition`), and
the run reports one ``AssetMaterialization`` per partition of ``<analysis>_result``, so the asset's
partitions, their metadata and their data versions look the same in the UI either way.

A partition that fails is marked failed in the registry (to be retried like any other) and the run
goes on with the next one (a partition whose fingerprint another run is computing is skipped); the
run fails at the end, naming every partition that failed. The keys of
a batch are in its run config (:func:`batch_keys`), where the sensors read them back.

:func:`run_each` is that loop; a UI backfill's run of a range of partitions of the result asset
(:mod:`analysis_wrapper.factory`, its ``BackfillPolicy``) runs it too.
"""

import functools
from collections.abc import Collection, Iterator
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    Config,
    DagsterInstance,
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
from analysis_wrapper.checks import CHECK_NAMES
from analysis_wrapper.commit import CommitService
from analysis_wrapper.errors import one_line
from analysis_wrapper.ownership import heartbeat_held
from analysis_wrapper.partition_outcome import PartitionOutcome, failure_text
from analysis_wrapper.partition_run import RunPlace
from analysis_wrapper.resources.record_store import StoreResource
from analysis_wrapper.resources.results_io import ResultsIOManager
from analysis_wrapper.resources.runtime import AnalysisRuntime
from analysis_wrapper.tags import ANALYSIS_TAG

MAX_ERRORS_SHOWN = 10
OUTCOME_TAG = "analysis_wrapper/outcome"
"""What a run did, on its run page's header (:func:`outcome_tags`): a run that only skipped says so there."""
OUTCOME_KINDS = ("recorded", "skipped", "dry run", "failed")
"""What ``analysis_wrapper/outcome`` counts; a run whose config was refused says ``refused: <why>``."""


class BatchConfig(Config):
    """Run config of a batch run: which partitions, and the same switches as a one-partition run."""

    partition_keys: list[str] = Field(description="Partitions of the result asset to run, in order")
    force: bool = Field(False, description="Run even partitions whose fingerprint is recorded")
    dry_run: bool | None = Field(None, description="Post nothing; unset: the DRY_RUN setting")


def outcome_table(outcomes: dict[str, str]) -> MetadataValue:
    """Partition and outcome, one row each: what a failed batch run's page shows."""
    rows = [TableRecord({"partition": key, "outcome": outcome}) for key, outcome in outcomes.items()]
    schema = TableSchema(columns=[TableColumn("partition", "string"), TableColumn("outcome", "string")])
    return MetadataValue.table(rows, schema=schema)


def outcome_tags(outcomes: Collection[PartitionOutcome]) -> dict[str, str]:
    """The run tag saying what a run's partitions came to: one partition's skip with its reason
    (``skipped: already recorded``), else what they came to (``recorded``; ``3 recorded, 2 skipped``)."""
    if len(outcomes) == 1 and (only := next(iter(outcomes))).skipped:
        return {OUTCOME_TAG: only.status}
    kinds = [o.kind for o in outcomes]
    order = [*OUTCOME_KINDS, *sorted(set(kinds) - set(OUTCOME_KINDS))]
    counts = [f"{kinds.count(k)} {k}" if len(kinds) > 1 else k for k in order if k in kinds]
    return {OUTCOME_TAG: ", ".join(counts)}


def end_as_refused(context: AssetExecutionContext | OpExecutionContext, refused: Exception) -> None:
    """Before a run that refused its config raises: tag it ``refused: <why>`` and have it end CANCELED.

    Dagster shows a partition as failed (red on the Partitions tab) when a run that planned it ends
    FAILED before materializing it, and keeps it so until its next materialization, which never comes
    for a recorded job. A refused run changed nothing, so it must not paint a recorded result red: a run
    marked canceling whose step then fails ends CANCELED ("Run was canceled. Failed steps: ..."), its
    step's failure carrying the reason."""
    tag = {OUTCOME_TAG: f"refused: {one_line(str(refused), 200)}"}
    context.instance.add_run_tags(context.run.run_id, tag)
    context.instance.report_run_canceling(context.run, message=str(refused))


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


def partitions_service(
    analysis: Analysis[Any, Any],
    place: RunPlace,
    store: StoreResource,
    runtime: AnalysisRuntime,
    results_io_manager: ResultsIOManager,
) -> CommitService:
    """The commit service of a run of several partitions (a batch run, a ranged backfill run): git is
    asked once for the run's code state (three subprocesses), not once per partition, and a partition
    refused before it started is failed here (such a run has no attempt tag the run-end sensor counts)."""
    git = functools.cache(functools.partial(runtime.code_state, analysis))
    records, results, ttl = store.get_store(), results_io_manager.results, store.lease_ttl_s
    return CommitService(analysis, records, results, runtime, place, ttl, git, counts_refusals=True)


def run_each(
    service: CommitService,
    asset_key: AssetKey,
    keys: list[str],
    config: Any,
    checks: Collection[str],
    instance: DagsterInstance,
) -> Iterator[AssetMaterialization | AssetObservation | AssetCheckEvaluation]:
    """Run ``keys`` one by one through ``service``, reporting each partition's own events as it ends
    (its materialization or its observation, and the ``checks`` named), tag the run with what they came
    to (``3 recorded, 2 skipped, 1 failed``: the run page's header), then raise a
    :class:`~dagster.Failure` naming every partition that failed, if any did."""
    analysis, log, run_id = service.analysis, service.log, service.place.run_id
    keys = list(dict.fromkeys(keys))
    outcomes: dict[str, PartitionOutcome] = {}  # per partition, what happened: the run's page lists them
    with heartbeat_held(service.store, run_id, service.lease_ttl_s):
        for number, key in enumerate(keys, start=1):
            outcome = outcomes[key] = service.run_partition(key, config).reported(asset_key, instance)
            if outcome.error is not None:
                log.error(
                    f"{analysis.name} partition {key} ({number}/{len(keys)}) failed: "
                    f"{failure_text(outcome.error)}"
                )
            for event in outcome.events(asset_key, analysis.version, instance):
                if not isinstance(event, AssetCheckEvaluation) or event.check_name in checks:
                    yield event
    instance.add_run_tags(run_id, outcome_tags(list(outcomes.values())))
    failures = [f"{key}: {o.status.removeprefix('failed: ')}" for key, o in outcomes.items() if o.error]
    log.info(
        f"{analysis.name} batch: {len(keys) - len(failures)} of {len(keys)} partition(s) ok:\n"
        + "\n".join(f"  {key}: {outcome.status}" for key, outcome in outcomes.items())
    )
    if failures:
        shown = "; ".join(failures[:MAX_ERRORS_SHOWN])
        more = f" (and {len(failures) - MAX_ERRORS_SHOWN} more)" if len(failures) > MAX_ERRORS_SHOWN else ""
        raise Failure(
            f"{len(failures)} of {len(keys)} partition(s) of {analysis.name} failed: {shown}{more}. "
            "They are marked failed in the job registry; the inbox sensor retries them, or run "
            "`analysis-wrapper retry`.",
            metadata={"partitions": outcome_table({k: o.status for k, o in outcomes.items()})},
        )


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
        partition_config = config_class(force=config.force, dry_run=config.dry_run)
        place = RunPlace(context.run_id, asset_key.to_user_string(), run_script, context.log)
        service = partitions_service(analysis, place, store, runtime, results_io_manager)
        keys = config.partition_keys
        yield from run_each(service, asset_key, keys, partition_config, CHECK_NAMES, context.instance)

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
