"""Build the Dagster side of one analysis: partitions, typed config, result asset and job.

Each registered :class:`~analysis_wrapper.analysis.Analysis` gets

* ``<name>_partitions``: a dynamic partitions definition, one partition per dispatched job;
* ``<Name>Config``: run config mirrored from its ``Params`` (optional overrides, ``dry_run``, ``force``);
* ``<name>_result``: the result asset; it loads its job from the registry by partition key (so UI
  materializations and backfills need no config), skips fingerprints already recorded, runs the
  analysis and commits its result through :mod:`analysis_wrapper.commit`;
  A backfill from the UI runs up to ``BACKFILL_PARTITIONS_PER_RUN`` partitions in one run (the asset's
  ``BackfillPolicy``): a range of partitions, each through the same commit path and reporting its own
  events (:func:`analysis_wrapper.batch.run_each`), the run failing at its end if one failed;
* ``<name>_job``: an asset job over that asset, one partition per run;
* ``<name>_batch_job``: several partitions per run (see :mod:`analysis_wrapper.batch`).
"""

import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    AssetOut,
    AssetsDefinition,
    BackfillPolicy,
    Config,
    DataVersion,
    DynamicPartitionsDefinition,
    JobDefinition,
    MaterializeResult,
    ResourceParam,
    define_asset_job,
    in_process_executor,
    multi_asset,
)

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.batch import (
    build_batch_job,
    end_as_refused,
    outcome_tags,
    partitions_service,
    run_each,
)
from analysis_wrapper.checks import check_specs
from analysis_wrapper.commit import CommitService, RunConfigRefused
from analysis_wrapper.config import build_config_class
from analysis_wrapper.ownership import heartbeat_held
from analysis_wrapper.partition_run import RunPlace
from analysis_wrapper.resources.record_store import StoreResource
from analysis_wrapper.resources.results_io import OUTPUTS_MODEL_METADATA_KEY, ResultsIOManager
from analysis_wrapper.resources.runtime import AnalysisRuntime
from analysis_wrapper.settings import Settings
from analysis_wrapper.summary.asset import build_summary_asset
from analysis_wrapper.tags import ANALYSIS_TAG, FINGERPRINT_TAG

__all__ = ["ANALYSIS_TAG", "FINGERPRINT_TAG", "AnalysisDefinitions", "build_analysis_definitions"]

RESULTS_IO_MANAGER_KEY = "results_io_manager"
RESULT_OUTPUT = "result"
BACKFILL_PARTITIONS_PER_RUN: int = Settings.model_fields["BACKFILL_PARTITIONS_PER_RUN"].default


@dataclass(frozen=True)
class AnalysisDefinitions:
    """The Dagster objects generated for one analysis."""

    analysis: Analysis[Any, Any]
    partitions: DynamicPartitionsDefinition
    config_class: type[Config]
    asset: AssetsDefinition
    job: Any  # the unresolved asset job from define_asset_job
    batch_job: JobDefinition
    summary: AssetsDefinition | None = None
    """``<name>_summary``: every recorded job in one table (:mod:`analysis_wrapper.summary.asset`)."""


def build_analysis_definitions(
    analysis: Analysis[Any, Any], max_partitions_per_run: int = BACKFILL_PARTITIONS_PER_RUN
) -> AnalysisDefinitions:
    """Generate partitions, config class, asset and job for ``analysis``; a backfill of the asset runs
    up to ``max_partitions_per_run`` partitions in one run."""
    partitions = DynamicPartitionsDefinition(name=analysis.partitions_name)
    config_class = build_config_class(analysis)
    run_script = inspect.getsourcefile(analysis.run) or analysis.name
    outputs_ref = f"{analysis.outputs.__module__}:{analysis.outputs.__qualname__}"
    asset_key = AssetKey(analysis.asset_name)

    def compute(
        context: AssetExecutionContext,
        config: Any,
        store: StoreResource,
        runtime: AnalysisRuntime,
        results_io_manager: ResourceParam[ResultsIOManager],
    ) -> Iterator[
        MaterializeResult | AssetMaterialization | AssetObservation | AssetCheckResult | AssetCheckEvaluation
    ]:
        keys, instance = context.partition_keys, context.instance
        selected = {check.name for check in context.selected_asset_check_keys}
        place = RunPlace(context.run.run_id, asset_key.to_user_string(), run_script, context.log)
        if len(keys) > 1:
            service = partitions_service(analysis, place, store, runtime, results_io_manager)
        else:
            records, results = store.get_store(), results_io_manager.results
            service = CommitService(analysis, records, results, runtime, place, store.lease_ttl_s)
        try:  # A config the analysis's Params refuse stops the run before anything is written, so no
            # partition's metadata or job state shows it (Dagster's launch-time check cannot).
            service.refuse_bad_config(keys, config)
        except RunConfigRefused as refused:
            # The checks this run planned show the recorded results' state, not "execution failed".
            for key in keys:
                checked = service.check_partition(key, config_class(), missing_ok=True)
                yield from (c.evaluation(asset_key, key, instance) for c in checked if c.name in selected)
            end_as_refused(context, refused)
            raise
        if len(keys) > 1:  # a range of a backfill (BackfillPolicy): each partition reports itself
            if asset_key in context.selected_asset_keys:
                yield from run_each(service, asset_key, keys, config, selected, context.instance)
            else:
                for key in keys:
                    checked = service.check_partition(key, config)
                    yield from (c.evaluation(asset_key, key, instance) for c in checked if c.name in selected)
            return
        key = keys[0]
        # The run's heartbeat, until the step ends: a started run without one, silent, is taken for dead.
        with heartbeat_held(service.store, place.run_id, store.lease_ttl_s):
            if asset_key not in context.selected_asset_keys:
                # Only checks selected (the UI's "Execute" on a check): check the stored result, run nothing.
                checks = service.check_partition(key, config)
            else:
                outcome = service.run_partition(key, config).reported(asset_key, context.instance)
                context.instance.add_run_tags(place.run_id, outcome_tags([outcome]))  # the run page says it
                if not outcome.materialized:
                    # A skip, a dry run or a failure is no new result: the partition keeps showing its
                    # recorded one. An observation says what this run did (a failure: why, on the
                    # partition's own history; its page says only that the run failed).
                    yield AssetObservation(asset_key=asset_key, partition=key, metadata=outcome.metadata)
                    if outcome.error is not None:
                        raise outcome.error
                else:  # committed already: no value for an IO manager to store
                    yield MaterializeResult(
                        asset_key=asset_key,
                        metadata=outcome.metadata,
                        data_version=DataVersion(str(outcome.fingerprint)),
                    )
                # A skip's checks are those of the recorded result it defers to (none for a dry run).
                checks = list(outcome.checks)
            yield from (checked.result() for checked in checks if checked.name in selected)

    # Dagster reads the config class from the annotation of the `config` parameter.
    compute.__annotations__["config"] = config_class

    result_asset = multi_asset(
        name=analysis.asset_name,
        partitions_def=partitions,
        outs={
            RESULT_OUTPUT: AssetOut(
                key=asset_key,
                code_version=analysis.version,
                io_manager_key=RESULTS_IO_MANAGER_KEY,
                group_name="analyses",
                description=analysis.description
                or f"Results of the {analysis.name} analysis, one partition per job.",
                metadata={OUTPUTS_MODEL_METADATA_KEY: outputs_ref, "analysis": analysis.name},
                tags={"analysis": analysis.name},
                # Optional: a skip or a dry run yields no output, so no materialization (see compute).
                is_required=False,
            )
        },
        check_specs=check_specs(asset_key, partitions),
        # Checks can run alone (re-checking a stored result computes nothing), so their outputs are
        # optional too: a skip or a dry run reports none.
        can_subset=True,
        # A backfill from the UI runs its partitions many to a run (ranges of them, see compute).
        backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=max_partitions_per_run),
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
    batch_job = build_batch_job(analysis, config_class, result_asset.key, run_script)
    summary = build_summary_asset(analysis, asset_key)
    return AnalysisDefinitions(analysis, partitions, config_class, result_asset, job, batch_job, summary)
