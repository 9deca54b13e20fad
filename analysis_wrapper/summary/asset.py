"""``<analysis>_summary``: every recorded job of an analysis in one table, with a figure across jobs.

It lives beside the result folders, as ``<results root>/<analysis>_summary/`` (local folder or S3,
written like a result folder, complete or absent): ``summary.parquet`` and ``summary.csv`` (one row
per job, see :mod:`.table`), ``summary.png`` (:mod:`.figures`), for analyses with their own
``summary_rows`` ``details.parquet`` (those rows, each with its job's ``partition_key``,
``analysis_version`` and ``parameter_set``), and ``metadata.nd.json`` holding the cursor: the event-log
storage ids of the last materialization of ``<analysis>_result`` it has taken in, and of the last one a
minute old when read (:mod:`.new_results`).

**Incremental.** An update reads the result asset's materializations of the last minute and after the
cursor (one event-log query per 1,000), the records of the jobs it does not hold yet (one store read
each) and, for ``summary_rows``, only those jobs' folders; every earlier row comes from the previous
Parquet files. So after one new job it reads one record and one folder, whatever the summary holds.

**Kept current by declarative automation** (:func:`summary_condition`), evaluated by
``<analysis>_summary_sensor``, an automation condition sensor that runs by default; ``analysis-wrapper
run --summary`` updates it itself after recording (:func:`analysis_wrapper.runner.update_summaries`).
"""

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.ownership import end_heartbeat, heartbeat
from analysis_wrapper.resources.record_store import StoreResource
from analysis_wrapper.resources.results_io import ResultsIOManager
from analysis_wrapper.resources.results_resources import storage_for_location
from analysis_wrapper.resources.results_storage import RECORD_FILE, ResultsStorageError
from analysis_wrapper.resources.runtime import AnalysisRuntime
from analysis_wrapper.result_metadata import figure_markdown, location_link
from analysis_wrapper.scratch import make_scratch, remove_scratch
from analysis_wrapper.summary.figures import draw_summary_figure
from analysis_wrapper.summary.new_results import SummaryCursor, new_fingerprints
from analysis_wrapper.summary.table import merge_rows, summary_frame
from analysis_wrapper.tags import ANALYSIS_TAG

if TYPE_CHECKING:
    import pandas as pd

PARQUET = "summary.parquet"
CSV = "summary.csv"
FIGURE = "summary.png"
DETAILS = "details.parquet"
FORMAT = 2
"""The layout of a summary folder; one written in another (before ``parameter_set`` and
``details.parquet``) is rebuilt from every result, once."""
PREVIEW_ROWS = 25


def summary_folder_name(analysis: Analysis[Any, Any]) -> str:
    return f"{analysis.name}_summary"


def summary_condition() -> AutomationCondition:
    """Due when a result was recorded after the summary was last requested, or when there is no summary
    yet while a result is recorded; never while a run of the result asset or of the summary is in
    progress (so a batch run's jobs land in one update).

    **Reset by the request, not by the summary's update, and with both sides' times.** Dagster's
    ``since`` keeps a trigger that came after its reset in the same tick only when both sides carry
    their times; ``|`` drops them, and ``any_deps_updated()`` is an ``|`` inside, so Dagster's
    ``eager()`` and this condition's earlier form dropped a result recorded in the same tick interval
    as the summary's request or update, for good (a fresh-clone CI run of the many-hosts test ended
    with 199 of 200 jobs in the summary and nothing left to run). So the trigger is
    ``any_deps_match(newly_updated())`` (the result's materialization times) and the reset is
    ``newly_requested()`` (the requesting tick's time): the run a request starts reads every result
    recorded before it, and a result recorded after the request keeps the summary due. A summary
    materialized by hand (``analysis-wrapper run --summary``, the UI) does not reset it, so automation
    may update it once more, finding nothing new.

    The second trigger is why a summary exists as soon as a job is recorded: jobs recorded before the
    sensor's first tick (``analysis-wrapper run`` with no daemon; a new analysis's first result) are not
    "updated since the previous tick" on that tick, and Dagster's own ``since_last_handled`` resets on
    a condition's initial evaluation, so neither ``eager()`` nor ``on_missing()`` would fire there. It
    fires once, when it becomes true (a failed summary run is not retried every tick), and no run is
    spent on an empty summary before the first result."""
    requested = AutomationCondition.newly_requested()
    no_summary_yet = (
        AutomationCondition.missing() & AutomationCondition.any_deps_match(~AutomationCondition.missing())
    ).with_label("no summary yet, a result recorded")
    return (
        (
            AutomationCondition.any_deps_match(AutomationCondition.newly_updated()).since(requested)
            | no_summary_yet.newly_true().since(requested)
        )
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label("a result was recorded")


def summary_sensor(
    analysis: Analysis[Any, Any],
    summary: AssetsDefinition,
    interval_s: int,
    default_status: DefaultSensorStatus = DefaultSensorStatus.RUNNING,
) -> AutomationConditionSensorDefinition:
    """The automation condition sensor of one analysis's summary. Its runs carry the analysis tag, so
    the queue's per-analysis limit applies and the inbox sensor's recovery fails them if they die
    (their heartbeat lease stops, or their code server is gone)."""
    return AutomationConditionSensorDefinition(
        f"{analysis.name}_summary_sensor",
        target=AssetSelection.assets(summary),
        run_tags={ANALYSIS_TAG: analysis.name},
        default_status=default_status,
        minimum_interval_seconds=interval_s,
        emit_backfills=False,
        description=f"Updates {analysis.name}_summary after new results are recorded.",
    )


def _read_previous(storage: Any, folder: str) -> "tuple[pd.DataFrame, pd.DataFrame | None, SummaryCursor]":
    """The previous summary (jobs, details, cursor), or nothing when there is none yet."""
    import pandas as pd  # ~0.5 s to import: paid by a summary run, not by every process loading the code

    try:
        state = json.loads(storage.read_bytes(folder, RECORD_FILE))
        rows = pd.read_parquet(io.BytesIO(storage.read_bytes(folder, PARQUET)))
    except (ResultsStorageError, FileNotFoundError, KeyError):
        return summary_frame([]), None, SummaryCursor()
    if state.get("format") != FORMAT:
        return summary_frame([]), None, SummaryCursor()
    details = None
    if state.get("details"):
        details = pd.read_parquet(io.BytesIO(storage.read_bytes(folder, DETAILS)))
    return rows, details, SummaryCursor.from_state(state)


def _job_details(analysis: Analysis[Any, Any], record: dict[str, Any], s3_client: Any) -> "pd.DataFrame":
    """The analysis's own rows of one job (``summary_rows``), each with the job's keys in front."""
    import pandas as pd  # ~0.5 s to import: paid by a summary run, not by every process loading the code

    assert analysis.summary_rows is not None
    storage, name = storage_for_location(str(record["location"]), s3_client)
    frame = pd.DataFrame(analysis.summary_rows(record, lambda file: storage.read_bytes(name, file)))
    job = summary_frame([record]).iloc[0]
    for position, column in enumerate(["partition_key", "analysis_version", "parameter_set"]):
        frame.insert(position, column, job[column])
    return frame


def _preview(rows: "pd.DataFrame") -> MetadataValue:
    """The newest rows, with the columns a scientist scans first."""
    import pandas as pd  # ~0.5 s to import: paid by a summary run, not by every process loading the code

    outs = [c for c in rows.columns if c.startswith("out.")][:5]
    columns = ["partition_key", "session", "analysis_version", "parameter_set", "created", *outs, "location"]
    columns = [c for c in columns if c in rows.columns]
    shown = rows.sort_values("created", ascending=False).head(PREVIEW_ROWS) if len(rows) else rows
    records = [
        TableRecord({c: "" if pd.isna(v) else str(v) for c, v in zip(columns, values, strict=True)})
        for values in shown[columns].itertuples(index=False, name=None)
    ]
    return MetadataValue.table(records, schema=TableSchema([TableColumn(c, "string") for c in columns]))


def build_summary_asset(analysis: Analysis[Any, Any], result_key: AssetKey) -> AssetsDefinition:
    folder = summary_folder_name(analysis)
    has_details = analysis.summary_rows is not None

    @asset(
        name=f"{analysis.name}_summary",
        deps=[result_key],
        group_name="analyses",
        automation_condition=summary_condition(),
        description=f"Every recorded job of {analysis.name}: one row per job (Parquet, CSV) and a figure "
        "across jobs. Updated by itself after new results are recorded, reading only the new ones.",
        tags={"analysis": analysis.name},
        kinds={"parquet", "csv"},
    )
    def summary(
        context: AssetExecutionContext,
        store: StoreResource,
        runtime: AnalysisRuntime,
        results_io_manager: ResourceParam[ResultsIOManager],
    ) -> MaterializeResult:
        # A heartbeat, as every run of an analysis has: the inbox sensor fails this run if it dies.
        heartbeat(store.get_store(), context.run.run_id, store.lease_ttl_s)
        try:
            return _update(context, store, runtime, results_io_manager)
        finally:
            end_heartbeat(context.run.run_id)

    def _update(
        context: AssetExecutionContext,
        store: StoreResource,
        runtime: AnalysisRuntime,
        results_io_manager: ResultsIOManager,
    ) -> MaterializeResult:
        import pandas as pd  # ~0.5 s to import: paid by a summary run, not by every process loading the code

        storage = results_io_manager.results.results()
        s3_client = results_io_manager.results.s3_client() if has_details else None
        rows, details, cursor = _read_previous(storage, folder)
        held = set(zip(rows["partition_key"], rows["fingerprint"], strict=True))
        fingerprints, new_cursor = new_fingerprints(context.instance, result_key, cursor, held)
        records = store.get_store()
        new_records = []
        for _partition, fingerprint in sorted(fingerprints.items()):
            record = records.get_record(analysis.name, fingerprint)
            if record is not None:  # a materialization whose record went (or never came): no row
                new_records.append(record)
        new_rows = summary_frame(new_records)
        rows = merge_rows(rows, new_rows)
        fresh = [_job_details(analysis, record, s3_client) for record in new_records] if has_details else []
        if has_details:
            changed = set(new_rows["partition_key"]) if len(new_rows) else set()
            kept = details[~details["partition_key"].isin(changed)] if details is not None else None
            parts = [f for f in [kept, *fresh] if f is not None]
            details = pd.concat(parts, ignore_index=True) if parts else None
        folders_read = len(fresh)
        # The host's scratch root, as the analyses' own runs use it: a killed run's folder is swept.
        scratch = make_scratch(Path(runtime.scratch_root) if runtime.scratch_root else None, f"{folder}-")
        try:
            rows.to_parquet(scratch / PARQUET, index=False)
            rows.to_csv(scratch / CSV, index=False)
            draw_summary_figure(analysis, rows, details, scratch / FIGURE)
            png = (scratch / FIGURE).read_bytes()
            if details is not None:
                details.to_parquet(scratch / DETAILS, index=False)
            state = {
                "summary_of": analysis.name,
                "format": FORMAT,
                "cursor": new_cursor.last,
                "settled": new_cursor.settled,
                "rows": len(rows),
                "details": details is not None,
            }
            storage.put_result(folder, scratch, {"rows": len(rows), "new_rows": len(new_rows)}, state)
        finally:
            remove_scratch(scratch)
        location = storage.uri(folder)
        context.log.info(
            f"{analysis.name} summary: {len(rows)} jobs ({len(new_rows)} new or updated, {folders_read} "
            f"result folders read), written to {location}."
        )
        metadata: dict[str, Any] = {
            "jobs": len(rows),
            "new_or_updated_jobs": len(new_rows),
            "result_folders_read": folders_read,
            "cursor": new_cursor.last if new_cursor.last is not None else -1,
            "summary_link": location_link(location),
            "parquet": f"{location}/{PARQUET}",
            "csv": f"{location}/{CSV}",
            "table": _preview(rows),
        }
        figure = figure_markdown(FIGURE, png)
        if figure is not None:
            metadata["figure"] = figure
        return MaterializeResult(metadata=metadata)

    return summary
