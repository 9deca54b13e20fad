"""``<analysis>_summary``: one row per recorded job in Parquet and CSV beside a figure, updated
incrementally (only new jobs' records and folders are read), requested by its automation condition
after new results and as soon as a job is recorded with no summary yet, made by ``analysis-wrapper run``
itself; rows carry their version and parameter set, the figure keeps them apart; the analysis's own
rows and figure come from its hooks; and ``results_frame`` for notebooks, the same table with the
filters of ``analysis-wrapper results``."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    RunsFilter,
    evaluate_automation_conditions,
    materialize,
)

from analysis_wrapper.analyses.isi_violations import analysis as isi
from analysis_wrapper.cli.app import main
from analysis_wrapper.records import results_frame
from analysis_wrapper.resources.record_store import close_all_stores
from analysis_wrapper.summary.figures import group_labels
from analysis_wrapper.summary.new_results import SETTLE_S, SummaryCursor, new_fingerprints
from analysis_wrapper.summary.table import parameter_set
from analysis_wrapper_tests.harness import Harness, write_job
from analysis_wrapper_tests.sample_analyses import echo


def summarize(h: Harness, name: str = "isi_violations") -> Any:
    """Materialize ``<name>_summary`` in-process; its materialization's metadata."""
    summary = h.built[name].summary
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
        assert row["parameter_set"] == parameter_set(job.parameters)
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
    units = pd.read_parquet(folder / "details.parquet")  # isi_violations' own rows: one per unit
    assert len(units) == rows["out.n_units"].sum()
    assert set(units["partition_key"]) == set(rows["partition_key"])
    assert set(units.columns) >= {"analysis_version", "parameter_set", "unit_id", "isi_violations_ratio"}
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
    units = pd.read_parquet(summary_folder(h) / "details.parquet")
    assert set(units["partition_key"]) == set(rows["partition_key"])

    nothing = summarize(h)  # nothing new: reads no record and no folder
    assert nothing["new_or_updated_jobs"].value == 0 and nothing["result_folders_read"].value == 0
    assert nothing["jobs"].value == 4


def test_a_summary_of_an_older_layout_is_rebuilt_once(recorded: tuple[Harness, list[Any]]) -> None:
    """A summary written before ``parameter_set`` and ``details.parquet`` (its state has no ``format``)
    is rebuilt from every result, so no row lacks its parameter set; then updates are incremental again."""
    h, _jobs = recorded
    summarize(h)
    state_file = summary_folder(h) / "metadata.nd.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({k: v for k, v in state.items() if k != "format"}))
    meta = summarize(h)
    assert meta["new_or_updated_jobs"].value == 3 and meta["result_folders_read"].value == 3
    assert pd.read_parquet(summary_folder(h) / "summary.parquet")["parameter_set"].notna().all()
    assert summarize(h)["new_or_updated_jobs"].value == 0


def test_a_result_committed_after_the_summary_read_past_it_is_taken_in_by_the_next_update(
    recorded: tuple[Harness, list[Any]], example_jobs: list[Path], tmp_path: Path
) -> None:
    """PostgreSQL gives an event its id before its writer commits: a summary can read past an id that
    becomes visible only afterwards. Made here by moving the stored cursor past a result the summary has
    not read; the next update re-reads the last minute and takes it in (and nothing else)."""
    h, jobs = recorded
    summarize(h)
    (late,) = h.submit([another_job(example_jobs, tmp_path / "late", 0.8)])
    assert h.materialize("isi_violations", late.partition_key).success
    (newest,) = h.instance.fetch_materializations(AssetKey("isi_violations_result"), limit=1).records
    state_file = summary_folder(h) / "metadata.nd.json"
    state = json.loads(state_file.read_text())
    state["cursor"] = newest.storage_id  # as if read past it: ``settled`` stays where the update left it
    state_file.write_text(json.dumps(state))
    meta = summarize(h)
    assert meta["new_or_updated_jobs"].value == 1 and meta["result_folders_read"].value == 1
    rows = pd.read_parquet(summary_folder(h) / "summary.parquet")
    assert set(rows["partition_key"]) == {j.partition_key for j in [*jobs, late]}


def test_new_results_re_reads_a_minute_and_skips_the_jobs_held(recorded: tuple[Harness, list[Any]]) -> None:
    h, jobs = recorded
    key = AssetKey("isi_violations_result")
    found, cursor = new_fingerprints(h.instance, key, SummaryCursor(), held=set())
    assert found == {j.partition_key: j.fingerprint for j in jobs}
    assert cursor.last is not None and cursor.settled is None, "all read, none a minute old yet"
    held = set(found.items())
    again, same = new_fingerprints(h.instance, key, cursor, held)
    assert again == {} and same == cursor, "re-read within the minute: every job already held"
    later = time.time() + SETTLE_S + 1
    again, settled = new_fingerprints(h.instance, key, cursor, held, now=later)
    assert again == {} and settled == SummaryCursor(cursor.last, cursor.last), "a minute on: settled"
    missing = set(list(held)[1:])  # a job the summary does not hold (its event seen late): re-read
    again, _ = new_fingerprints(h.instance, key, cursor, missing)
    assert again == dict(set(held) - missing)


def due_summaries(h: Harness, names: list[str], cursor: Any) -> tuple[set[str], Any]:
    """One tick of the summaries' automation condition sensor over ``names``: the analyses whose
    summary it requests, and its cursor."""
    built = [h.built[name] for name in names]
    defs = Definitions(assets=[a for b in built for a in (b.asset, b.summary)], resources=h.resources)
    evaluated = evaluate_automation_conditions(defs=defs, instance=h.instance, cursor=cursor)
    keys = {r.key for r in evaluated.results if r.true_subset.size}
    return {n for n in names if AssetKey(f"{n}_summary") in keys}, evaluated.cursor


def test_automation_requests_the_summary_after_new_results(
    harness_factory: Any, example_jobs: list[Path]
) -> None:
    h = harness_factory([isi])

    def due(cursor: Any) -> tuple[bool, Any]:
        names, cursor = due_summaries(h, ["isi_violations"], cursor)
        return bool(names), cursor

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


def test_a_result_recorded_while_the_summary_runs_is_not_lost(
    recorded: tuple[Harness, list[Any]], example_jobs: list[Path], tmp_path: Path
) -> None:
    """A result recorded between a summary's request and the next tick (the summary run may have read
    the events before it) keeps the summary due, however the tick's intervals fall: Dagster's ``since``
    lets its reset win when both happen in one tick unless both sides carry their times. Found in a
    fresh-clone CI run of the many-hosts test: the summary held 199 of 200 jobs, nothing left to run."""
    h, _jobs = recorded
    due, cursor = due_summaries(h, ["isi_violations"], None)
    assert due == {"isi_violations"}
    summarize(h)  # the requested run: it reads every result there is now
    (late,) = h.submit([another_job(example_jobs, tmp_path / "late", 0.8)])
    assert h.materialize("isi_violations", late.partition_key).success  # after the summary's read
    due, cursor = due_summaries(h, ["isi_violations"], cursor)
    assert due == {"isi_violations"}, "a result the summary has not read: due"
    assert summarize(h)["new_or_updated_jobs"].value == 1
    due, cursor = due_summaries(h, ["isi_violations"], cursor)
    assert due == set(), "the summary has read everything: not due"

    # The same while the summary is updated after the result (a run that read before the result).
    (later,) = h.submit([another_job(example_jobs, tmp_path / "later", 0.7)])
    assert h.materialize("isi_violations", later.partition_key).success
    due, cursor = due_summaries(h, ["isi_violations"], cursor)
    assert due == {"isi_violations"}
    assert h.materialize("isi_violations", later.partition_key, force=True).success
    summarize(h)
    due, cursor = due_summaries(h, ["isi_violations"], cursor)
    assert due == {"isi_violations"}, "recorded after the request: the run requested may not have read it"


def test_a_summary_is_due_on_the_first_tick_after_jobs_recorded_without_a_daemon(
    harness_factory: Any, example_jobs: list[Path], tmp_path: Path
) -> None:
    """Jobs recorded in-process (as ``analysis-wrapper run`` records them, no daemon) before the
    sensor's first tick: that tick requests the summary; and a new analysis added to a running
    deployment gets its summary with its first result, not its second."""
    h = harness_factory([isi, echo])
    jobs = h.submit(example_jobs)
    assert h.run_batch("isi_violations", [j.partition_key for j in jobs]).success
    due, cursor = due_summaries(h, ["isi_violations"], None)  # the sensor's first tick
    assert due == {"isi_violations"}
    summarize(h)
    due, cursor = due_summaries(h, ["isi_violations"], cursor)
    assert due == set()

    # echo is deployed now: its summary is not requested for nothing, then with its first result.
    due, cursor = due_summaries(h, ["isi_violations", "echo"], cursor)
    assert due == set()
    (job,) = h.submit([write_job(tmp_path / "echo", [example_jobs[0]])])
    assert h.materialize("echo", job.partition_key).success
    due, cursor = due_summaries(h, ["isi_violations", "echo"], cursor)
    assert due == {"echo"}


def test_the_cli_run_leaves_the_summary_of_what_it_recorded(
    tmp_path: Path,
    example_jobs: list[Path],
    clean_repo: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``analysis-wrapper run`` (the demo) with no daemon: the summary is there when it returns, and
    is the table ``results_frame`` gives."""
    monkeypatch.chdir(tmp_path)
    for name in ("DAGSTER_HOME", "ANALYSIS_BUCKET", "DOCDB_URI", "RESULTS_ROOT", "ALLOW_DIRTY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DRY_RUN", "0")
    monkeypatch.setenv("CODE_REPOSITORY", str(clean_repo))
    try:
        assert main(["run", "--summary", str(example_jobs[0].parent)]) == 0
        rows = pd.read_parquet(tmp_path / "analysis_results" / "isi_violations_summary" / "summary.parquet")
        assert len(rows) == 3 and (rows["analysis_version"] == isi.version).all()
        with DagsterInstance.from_config(str(tmp_path / ".dagster_home")) as instance:
            (run,) = instance.get_runs(RunsFilter(job_name="__ASSET_JOB"))  # as the daemon runs it
        assert run.status == DagsterRunStatus.SUCCESS and run.tags["analysis_wrapper/source"] == "cli"
        frame = results_frame("isi_violations")
        pd.testing.assert_frame_equal(
            frame.astype(str).reset_index(drop=True), rows[frame.columns].astype(str).reset_index(drop=True)
        )
    finally:
        close_all_stores()
    assert "3 done" in capsys.readouterr().out


def test_rows_carry_version_and_parameter_set_and_the_figure_names_them(
    recorded: tuple[Harness, list[Any]], example_jobs: list[Path], tmp_path: Path
) -> None:
    h, jobs = recorded
    (new,) = h.submit([another_job(example_jobs, tmp_path / "more", 0.9)])
    assert h.materialize("isi_violations", new.partition_key).success
    summarize(h)
    rows = pd.read_parquet(summary_folder(h) / "summary.parquet")
    sets = rows.set_index("partition_key")["parameter_set"]
    assert sets[new.partition_key] != sets[jobs[0].partition_key]
    assert sets[jobs[0].partition_key] == sets[jobs[1].partition_key]  # same parameters, same label
    labels = set(group_labels(rows).values())
    assert labels == {
        f"v1.0.0 {sets[jobs[0].partition_key]}: isi_violations_cutoff=0.5",
        f"v1.0.0 {sets[new.partition_key]}: isi_violations_cutoff=0.9",
    }
    units = pd.read_parquet(summary_folder(h) / "details.parquet")
    assert set(units["parameter_set"]) == set(sets)


def test_an_analysis_without_hooks_gets_the_generic_summary(
    harness_factory: Any, example_jobs: list[Path], tmp_path: Path
) -> None:
    h = harness_factory([echo])
    (one,) = h.submit([write_job(tmp_path / "a", [example_jobs[0]])])
    (two,) = h.submit([write_job(tmp_path / "b", [example_jobs[0]], scale=2.0)])
    for job in (one, two):
        assert h.materialize("echo", job.partition_key).success
    meta = summarize(h, "echo")
    folder = h.settings.RESULTS_ROOT.absolute() / "echo_summary"
    rows = pd.read_parquet(folder / "summary.parquet")
    assert len(rows) == 2 and rows["parameter_set"].nunique() == 2
    assert not (folder / "details.parquet").exists() and meta["result_folders_read"].value == 0
    assert (folder / "summary.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(group_labels(rows).values())[1].endswith("scale=2.0")


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
