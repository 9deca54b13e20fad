"""Each dispatch is recorded as a materialization of the asset ``<analysis>_dispatches``.

Why Dagster's event log and not a table of our own: every entry point already has the Dagster
instance (the CLI, the dispatch job's run, the sensors), the UI shows the history per asset with its
metadata, and it needs no new storage on either store backend. A record holds the dispatch id, where
it came from (``cli``, ``launchpad``, ``saved query <name>``), the query and its source, the settings,
the counts, the start and end times and the partition keys registered (the first
:data:`MAX_KEYS_SHOWN`; all of them carry ``dispatch <id>`` as their ``source`` in the job registry, so
``analysis-wrapper status`` shows which dispatch registered each job). Dry runs are not recorded.
"""

from __future__ import annotations

from typing import Any

from dagster import AssetKey, AssetMaterialization, AssetSpec, MetadataValue

from analysis_wrapper.dispatching.dispatch_run import DispatchReport

MAX_KEYS_SHOWN = 200


def dispatch_asset_key(analysis: str) -> AssetKey:
    return AssetKey(f"{analysis}_dispatches")


def dispatch_asset_spec(analysis: str) -> AssetSpec:
    """The asset the dispatch records belong to (declared so the UI lists it with a description)."""
    return AssetSpec(
        key=dispatch_asset_key(analysis),
        description=f"One materialization per dispatch of {analysis} jobs from the metadata database: "
        "query, settings, counts, time and the partitions registered.",
        group_name="dispatch",
        kinds={"mongodb"},
    )


def dispatch_materialization(report: DispatchReport) -> AssetMaterialization:
    counts = report.counts()
    metadata: dict[str, Any] = {
        "dispatch_id": report.dispatch_id,
        "origin": report.origin,
        "query": MetadataValue.json(report.query),
        "query_source": report.query_source,
        "settings": MetadataValue.json(report.settings),
        "counts": MetadataValue.json(counts),
        "registered": report.registered,
        "already_recorded": report.already_recorded,
        "already_registered": report.already_registered,
        "left_out_by_cap": report.left_out,
        "started_at": report.started_at,
        "finished_at": report.finished_at,
        "seconds": report.seconds,
        "partition_keys": MetadataValue.json(report.keys[:MAX_KEYS_SHOWN]),
        "pass_complete": report.next_after is None,
    }
    if report.unusable:
        metadata["unusable"] = MetadataValue.md("\n".join(f"- {r}" for r in report.unusable[:MAX_KEYS_SHOWN]))
    if report.rejected:
        metadata["rejected"] = MetadataValue.md("\n".join(f"- {r}" for r in report.rejected[:MAX_KEYS_SHOWN]))
    return AssetMaterialization(
        asset_key=dispatch_asset_key(report.analysis), description=report.summary(), metadata=metadata
    )
