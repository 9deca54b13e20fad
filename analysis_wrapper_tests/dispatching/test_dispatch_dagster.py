"""Dispatch from Dagster and the CLI: ``<analysis>_dispatch_job`` with its typed config, a saved query's
sensor spreading a pass over ticks with its cursor and registering only new jobs, the dispatch records,
saved-query files that are wrong, and ``analysis-wrapper dispatch`` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, DagsterInstance, Definitions, SensorResult, build_sensor_context
from dagster_aws.s3 import S3Resource

from analysis_wrapper.dispatching.definitions import DispatchCursor, build_dispatch_definitions
from analysis_wrapper.dispatching.saved import SavedQueryError, load_saved_queries
from analysis_wrapper.factory import build_analysis_definitions
from analysis_wrapper.resources.record_store import StoreResource, close_all_stores
from analysis_wrapper.settings import Settings
from analysis_wrapper.store.sqlite import SqliteStore
from analysis_wrapper_tests.dispatching.metadata_records import (
    COLLECTION,
    MetadataCollection,
    Session,
    metadata_record,
)
from analysis_wrapper_tests.environment import scrub_settings, scrubbed_environ
from analysis_wrapper_tests.sample_analyses import echo

REPO_ROOT = Path(__file__).resolve().parents[2]
ECEPHYS = {"data_description.modalities.abbreviation": "ecephys"}


def settings_for(metadata: MetadataCollection, tmp_path: Path, **values: Any) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        DAGSTER_HOME=tmp_path / "home",
        METADATA_DOCDB_URI=metadata.server.uri,
        METADATA_DOCDB_DATABASE=metadata.database,
        METADATA_DOCDB_COLLECTION=COLLECTION,
        **values,
    )


def store_resource(tmp_path: Path) -> StoreResource:
    return StoreResource(backend="sqlite", sqlite_path=str(tmp_path / "records.sqlite"))


@pytest.fixture(autouse=True)
def _close_stores() -> Any:
    yield
    close_all_stores()


def test_dispatch_job_runs_with_the_launchpad_config_and_records_the_dispatch(
    metadata: MetadataCollection, tmp_path: Path, instance: DagsterInstance
) -> None:
    settings = settings_for(metadata, tmp_path)
    dispatch_defs = build_dispatch_definitions({"echo": build_analysis_definitions(echo)}, settings)
    defs = Definitions(
        assets=dispatch_defs.assets,
        jobs=dispatch_defs.jobs,
        resources={"store": store_resource(tmp_path), "s3": S3Resource()},
    )
    job = defs.resolve_job_def("echo_dispatch_job")
    fields = job.run_config_schema.config_type.fields["ops"].config_type.fields["echo_dispatch"]  # type: ignore[attr-defined]
    typed = fields.config_type.fields["config"].config_type.fields
    assert {
        "docdb_query",
        "file_extension",
        "split_files",
        "group_by",
        "max_number_of_tasks_dispatched",
    } <= set(typed)

    config = {"docdb_query": json.dumps(ECEPHYS), "max_number_of_tasks_dispatched": 3, "group_by": []}
    result = job.execute_in_process(
        instance=instance, run_config={"ops": {"echo_dispatch": {"config": config}}}
    )
    assert result.success
    store = SqliteStore(tmp_path / "records.sqlite")
    assert len(store.list_jobs("echo")) == 3
    assert len(instance.get_dynamic_partitions(echo.partitions_name)) == 3
    events = instance.fetch_materializations(AssetKey("echo_dispatches"), limit=5).records
    assert len(events) == 1
    recorded = events[0].asset_materialization
    assert recorded is not None
    meta: dict[str, Any] = {k: v.value for k, v in recorded.metadata.items()}
    assert meta["query"] == ECEPHYS and meta["left_out_by_cap"] == 2
    assert meta["registered"] == 3 and meta["origin"].startswith("launchpad run ")
    assert sorted(meta["partition_keys"]) == sorted(e.partition_key for e in store.list_jobs("echo"))
    assert {e.source for e in store.list_jobs("echo")} == {
        f"dispatch {meta['dispatch_id']} ({meta['origin']})"
    }

    bad = {"docdb_query": '{"name": {"$regx": "x"}}'}
    failed = job.execute_in_process(
        instance=instance, run_config={"ops": {"echo_dispatch": {"config": bad}}}, raise_on_error=False
    )
    assert not failed.success
    failure = failed.get_step_failure_events()[0].step_failure_data.error
    assert (
        failure is not None
        and "echo dispatch refused: docdb_query: unknown operator $regx" in failure.message
    )
    store.close()


def test_saved_query_sensor_spreads_a_pass_over_ticks_and_picks_up_new_sessions(
    metadata: MetadataCollection, tmp_path: Path, instance: DagsterInstance
) -> None:
    folder = tmp_path / "queries"
    folder.mkdir()
    (folder / "echo_ecephys.yaml").write_text(
        "analysis: echo\ndocdb_query:\n  data_description.modalities.abbreviation: ecephys\n"
        "fixed_parameters:\n  scale: 2\n"
    )
    # A tick budget already spent after one batch of 2: each tick registers one batch.
    settings = settings_for(
        metadata, tmp_path, DISPATCH_QUERIES=str(folder), DISPATCH_BATCH_SIZE=2, SENSOR_TICK_BUDGET_S=1e-6
    )
    sensor = build_dispatch_definitions({"echo": build_analysis_definitions(echo)}, settings).sensors[0]
    assert sensor.name == "dispatch_echo_ecephys"
    resources = {"store": store_resource(tmp_path), "s3": S3Resource()}
    store = SqliteStore(tmp_path / "records.sqlite")

    def tick(cursor: str | None) -> tuple[SensorResult, DispatchCursor]:
        with build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
            result = sensor(context)
        assert isinstance(result, SensorResult) and result.cursor is not None
        return result, DispatchCursor.parse(result.cursor)

    cursor_text: str | None = None
    counts = []
    for _ in range(3):
        result, cursor = tick(cursor_text)
        cursor_text = result.cursor
        counts.append(len(store.list_jobs("echo")))
        assert len(result.asset_events) == 1  # each tick's dispatch is recorded
    assert counts == [2, 4, 5] and cursor.after is None and cursor.passes == 1

    result, cursor = tick(cursor_text)  # a new pass: nothing new
    assert len(store.list_jobs("echo")) == 5 and "2 already registered, registered 0" in reason(result)
    metadata.collection().insert_one(
        metadata_record(Session("600004", 9, ["ecephys"]), "s3://raw-data/assets", seed=1)
    )
    for _ in range(3):
        result, cursor = tick(result.cursor)
    assert len(store.list_jobs("echo")) == 6, "the new session is registered on the next pass"
    assert all(dict(e.job)["analysis_code"]["parameters"]["scale"] == 2 for e in store.list_jobs("echo"))

    (folder / "echo_ecephys.yaml").write_text(
        'analysis: echo\ndocdb_query: \'{"subject.subject_id": "600003"}\'\n'
    )
    changed = build_dispatch_definitions({"echo": build_analysis_definitions(echo)}, settings).sensors[0]
    with build_sensor_context(instance=instance, cursor=result.cursor, resources=resources) as context:
        after_change = changed(context)
    assert isinstance(after_change, SensorResult)
    assert "registered 1" in reason(after_change), "changed settings start a new pass"
    store.close()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("analysis: nope\ndocdb_query: '{}'\n", "field 'analysis': no analysis named 'nope' here"),
        ("docdb_query: '{}'\n", "field 'analysis': missing"),
        ("analysis: echo\ndocdb_query: '{}'\nfile_extention: .nwb\n", "unknown field(s) file_extention"),
        (
            "analysis: echo\ndocdb_query: '{}'\nsplit_files: -1\n",
            "field 'split_files': Input should be greater than or equal to 0",
        ),
        ("analysis: echo\n", "give exactly one of docdb_query"),
        ("analysis: [echo\n", "not valid YAML"),
    ],
)
def test_a_broken_saved_query_names_its_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "q.yaml").write_text(text)
    with pytest.raises(SavedQueryError) as caught:
        load_saved_queries(tmp_path, {"echo"})
    assert str(caught.value).startswith(f"{tmp_path / 'q.yaml'}: ") and message in str(caught.value)


def test_the_shipped_saved_query_loads() -> None:
    queries = load_saved_queries(REPO_ROOT / "examples" / "dispatch_queries", {"isi_violations"})
    assert [q.sensor_name for q in queries] == ["dispatch_isi_violations_ecephys"]
    assert json.loads(queries[0].settings.docdb_query) == {
        "data_description.modalities.abbreviation": "ecephys"
    }


def reason(result: SensorResult) -> str:
    return result.skip_reason.skip_message or "" if result.skip_reason else ""


def test_cli_dispatch_prints_found_registered_and_already_done(
    metadata: MetadataCollection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from analysis_wrapper.cli import main

    values = {
        "DAGSTER_HOME": str(tmp_path / "home"),
        "METADATA_DOCDB_URI": metadata.server.uri,
        "METADATA_DOCDB_DATABASE": metadata.database,
        "METADATA_DOCDB_COLLECTION": COLLECTION,
        "ANALYSIS_MODULES": "analysis_wrapper_tests.sample_analyses",
    }
    scrub_settings(monkeypatch)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    query = json.dumps(ECEPHYS)

    def dispatch_cli(*args: str) -> tuple[int, str, str]:
        code = main(["dispatch", "--analysis", "echo", *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, err = dispatch_cli("--query", query, "--dry-run")
    assert code == 0, err
    assert (
        "found: 5 asset(s)/group(s) from docdb_query, 5 job(s)" in out
        and out.count("would register echo ") == 5
    )

    # The installed console script, once, in its own process.
    exe = Path(sys.executable).parent / "analysis-wrapper"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    first = subprocess.run(
        [str(exe), "dispatch", "--analysis", "echo", "--query", query, "--max-jobs", "4", "--out", "out"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert first.returncode == 0, first.stderr
    assert "registered: 4\n" in first.stdout and "left out by the cap: 1\n" in first.stdout
    assert len(list((tmp_path / "out").rglob("*.json"))) == 4

    code, out, err = dispatch_cli("--query", query)
    assert code == 0 and "already registered: 4\n" in out and "registered: 1\n" in out
    store = SqliteStore(tmp_path / "home" / "analysis_records.sqlite")
    entries = store.list_jobs("echo")
    store.close()
    assert len(entries) == 5 and all(
        e.state.value == "pending" and e.source.startswith("dispatch ") for e in entries
    )
    with DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        records = instance.fetch_materializations(AssetKey("echo_dispatches"), limit=10).records
    assert len(records) == 2  # the dry run is not recorded

    code, out, err = dispatch_cli("--query", '{"name": {"$regx": 1}}')
    assert code == 2 and "unknown operator $regx at 'name.$regx'" in err
    code, out, err = dispatch_cli(
        "--query", "{}", "--group-by", "subject.subject_id", "--file-extension", ".nwb"
    )
    assert code == 2 and "set split_files to 0" in err


@pytest.mark.slow
def test_two_cli_dispatches_at_once_register_each_job_once(
    metadata: MetadataCollection, tmp_path: Path
) -> None:
    """Two real processes dispatch the same query into one DAGSTER_HOME at the same moment: both exit 0,
    each job is registered by exactly one of them, and every partition exists once."""
    env = scrubbed_environ(keep_aws_credentials=True)
    env.update(
        DAGSTER_HOME=str(tmp_path / "home"),
        METADATA_DOCDB_URI=metadata.server.uri,
        METADATA_DOCDB_DATABASE=metadata.database,
        METADATA_DOCDB_COLLECTION=COLLECTION,
        ANALYSIS_MODULES="analysis_wrapper_tests.sample_analyses",
        PYTHONPATH=str(REPO_ROOT),
    )
    exe = Path(sys.executable).parent / "analysis-wrapper"
    command = [str(exe), "dispatch", "--analysis", "echo", "--query", json.dumps(ECEPHYS), "--json"]
    procs = [
        subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=180) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err[-2000:] for _out, err in outputs]
    reports = [json.loads(out) for out, _err in outputs]
    assert sum(r["registered"] for r in reports) == 5
    assert all(r["registered"] + r["already_registered"] == 5 for r in reports)
    store = SqliteStore(tmp_path / "home" / "analysis_records.sqlite")
    entries = store.list_jobs("echo")
    store.close()
    assert len(entries) == 5
    with DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        keys = instance.get_dynamic_partitions(echo.partitions_name)
    assert sorted(keys) == sorted(e.partition_key for e in entries)
