"""``<analysis>_summary``: one row per recorded job in Parquet and CSV beside a figure, updated
incrementally (only new jobs' records and folders are read), requested by its automation condition
after new results; and ``results_frame`` for notebooks, with the filters of ``analysis-wrapper results``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from dagster import AssetKey, Definitions, evaluate_automation_conditions, materialize

from analysis_wrapper.analyses.isi_violations import analysis as isi
from analysis_wrapper.records import results_frame
from analysis_wrapper_tests.harness import Harness


def summarize(h: Harness) -> Any:
    """Materialize isi_violations_summary in-process; its materialization's metadata."""
    summary = h.built["isi_violations"].summary
    result = materialize([summary], instance=h.instance, resources=h.resources)
    assert result.success
    (event,) = result.get_asset_materialization_events()
    return event.step_materialization_data.materialization.metadata


def summary_folder(h: Harness) -> Path:
    return h.settings.RESULTS_ROOT.absolute() / "isi_violations_summary"


def another_job(example_jobs: list[Path], folder: Path, cutoff: float) -> Path:
    """The first example job again with another ``isi_violations_cutoff``: a new job, a new fingerprint."""
    job = json.loads(example_jobs[0].read_text())
    job["analysis_code"]["parameters"]["isi_violations_cutoff"] = cutoff
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"cutoff-{cutoff}.json"
    path.write_text(json.dumps(job))
    return path


@pytest.fixture()
def recorded(harness_factory: Any, example_jobs: list[Path]) -> tuple[Harness, list[Any]]:
    h = harness_factory([isi])
    jobs = h.submit(example_jobs)
    assert h.run_batch("isi_violations", [j.partition_key for j in jobs]).success
    return h, jobs


def test_summary_has_one_row_per_job_parquet_csv_and_figure(recorded: tuple[Harness, list[Any]]) -> None:
    h, jobs = recorded
    meta = summarize(h)
    folder = summary_folder(h)
    rows = pd.read_parquet(folder / "summary.parquet")
    assert sorted(rows["partition_key"]) == sorted(j.partition_key for j in jobs)
    for job in jobs:
        row = rows[rows["partition_key"] == job.partition_key].iloc[0]
        record = h.store.get_record("isi_violations", job.fingerprint)
        process = record["processing"]["data_processes"][0]
        assert row["fingerprint"] == job.fingerprint and row["analysis_version"] == isi.version
        assert json.loads(row["inputs"]) == job.inputs
        assert json.loads(row["parameters"]) == job.parameters
        assert row["param.isi_violations_cutoff"] == job.parameters["isi_violations_cutoff"]
        assert row["out.n_units"] == process["output_parameters"]["n_units"]
        assert row["out.fraction_violating"] == pytest.approx(
            process["output_parameters"]["fraction_violating"]
        )
        assert row["location"] == record["location"]
    csv = pd.read_csv(folder / "summary.csv")
    assert list(csv.columns) == list(rows.columns) and len(csv) == len(jobs)
    units = pd.read_parquet(folder / "units.parquet")  # pooled per-unit ratios, for the figure
    assert len(units) == rows["out.n_units"].sum()
    assert set(units["partition_key"]) == set(rows["partition_key"])
    png = (folder / "summary.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert meta["jobs"].value == 3 and meta["result_folders_read"].value == 3
    preview = meta["table"].value
    assert {r.data["partition_key"] for r in preview.records} == {j.partition_key for j in jobs}
    assert "out.fraction_violating" in [c.name for c in preview.schema.columns]
    assert meta["figure"].value.startswith("![summary.png](data:image/png;base64,")
    assert meta["summary_link"].value == folder.as_uri()


def test_an_update_reads_only_the_new_jobs(
    recorded: tuple[Harness, list[Any]], example_jobs: list[Path], tmp_path: Path
) -> None:
    h, jobs = recorded
    summarize(h)
    before = pd.read_parquet(summary_folder(h) / "summary.parquet")
    (new,) = h.submit([another_job(example_jobs, tmp_path / "more", 0.9)])
    assert h.materialize("isi_violations", new.partition_key).success
    # The earlier jobs' folders are gone: an update that read them again would fail.
    for job in jobs:
        shutil.rmtree(h.settings.RESULTS_ROOT.absolute() / job.fingerprint)
    meta = summarize(h)
    assert meta["jobs"].value == 4
    assert meta["new_or_updated_jobs"].value == 1 and meta["result_folders_read"].value == 1
    rows = pd.read_parquet(summary_folder(h) / "summary.parquet")
    assert len(rows) == 4
    old = rows[rows["partition_key"] != new.partition_key].reset_index(drop=True)
    pd.testing.assert_frame_equal(old[before.columns], before)
    assert rows[rows["partition_key"] == new.partition_key]["param.isi_violations_cutoff"].item() == 0.9
    units = pd.read_parquet(summary_folder(h) / "units.parquet")
    assert set(units["partition_key"]) == set(rows["partition_key"])

    nothing = summarize(h)  # nothing new: reads no record and no folder
    assert nothing["new_or_updated_jobs"].value == 0 and nothing["result_folders_read"].value == 0
    assert nothing["jobs"].value == 4


def test_automation_requests_the_summary_after_new_results(
    harness_factory: Any, example_jobs: list[Path]
) -> None:
    h = harness_factory([isi])
    key = AssetKey("isi_violations_summary")
    built = h.built["isi_violations"]
    defs = Definitions(assets=[built.asset, built.summary], resources=h.resources)

    def due(cursor: Any) -> tuple[bool, Any]:
        evaluated = evaluate_automation_conditions(defs=defs, instance=h.instance, cursor=cursor)
        return key in {r.key for r in evaluated.results if r.true_subset.size}, evaluated.cursor

    jobs = h.submit(example_jobs)
    requested, cursor = due(None)  # the sensor's first tick, before any result: no run for nothing
    assert not requested
    assert h.run_batch("isi_violations", [j.partition_key for j in jobs]).success
    requested, cursor = due(cursor)
    assert requested, "new results were recorded: the summary is due"
    summarize(h)
    requested, cursor = due(cursor)
    assert not requested, "nothing new since the summary ran: not due"
    assert h.materialize("isi_violations", jobs[0].partition_key, force=True).success
    requested, cursor = due(cursor)
    assert requested, "a result was re-recorded: due"


def test_results_frame_filters_like_the_cli(
    recorded: tuple[Harness, list[Any]], example_jobs: list[Path], tmp_path: Path
) -> None:
    h, jobs = recorded
    (new,) = h.submit([another_job(example_jobs, tmp_path / "more", 0.9)])
    assert h.materialize("isi_violations", new.partition_key).success
    everything = results_frame("isi_violations", settings=h.settings)
    assert sorted(everything["partition_key"]) == sorted(
        [*(j.partition_key for j in jobs), new.partition_key]
    )
    only = results_frame("isi_violations", params={"isi_violations_cutoff": 0.9}, settings=h.settings)
    assert list(only["partition_key"]) == [new.partition_key]
    assert results_frame("isi_violations", code_version="0.0.0-none", settings=h.settings).empty
    latest = results_frame("isi_violations", latest=True, settings=h.settings)
    assert len(latest) == len(jobs)  # the new job has the first job's input: the newest of the two
    assert new.partition_key in set(latest["partition_key"])
    assert set(latest.columns) >= {"partition_key", "inputs", "parameters", "analysis_version", "location"}
