"""One dispatch pass against a real MongoDB server (SecantusDB) holding aind-data-schema metadata records:
every dispatcher feature, the jobs compared with AIND's own ``AnalysisDispatchModel``, skips, the cap,
files on disk and in S3, written job files, paging, and errors that say what is wrong."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from analysis_pipeline_utils.analysis_dispatch_model import AnalysisDispatchModel
from dagster import DagsterInstance

from analysis_wrapper.dispatching.dispatch_config import DispatchSettings
from analysis_wrapper.dispatching.dispatch_run import DispatchReport, dispatch
from analysis_wrapper.dispatching.metadata_db import MetadataDatabase
from analysis_wrapper.dispatching.query import DispatchQueryError
from analysis_wrapper.store.base import JobState, StoreError
from analysis_wrapper.store.sqlite import SqliteStore
from analysis_wrapper_tests.dispatching.metadata_records import MetadataCollection, seeded
from analysis_wrapper_tests.mongo_server import fresh_database_name
from analysis_wrapper_tests.s3_servers import S3Endpoint
from analysis_wrapper_tests.sample_analyses import echo

ECEPHYS = json.dumps({"data_description.modalities.abbreviation": "ecephys"})


def run(
    metadata: MetadataCollection, store: SqliteStore, instance: DagsterInstance | None, **settings: Any
) -> DispatchReport:
    batch_size = settings.pop("batch_size", 1000)
    deadline = settings.pop("deadline", None)
    after = settings.pop("after", None)
    s3 = settings.pop("s3", None)
    db = metadata.db()
    try:
        return dispatch(
            echo,
            DispatchSettings(**settings),
            store,
            db,
            instance,
            s3_client=s3,
            batch_size=batch_size,
            deadline=deadline,
            after=after,
        )
    finally:
        db.close()


def registered_jobs(store: SqliteStore) -> list[dict[str, Any]]:
    return [dict(e.job) for e in store.list_jobs("echo")]


def assert_aind_jobs(jobs: list[dict[str, Any]]) -> None:
    """Each job is valid for AIND's model and is exactly what that model dumps (no field more or less)."""
    for job in jobs:
        model = AnalysisDispatchModel.model_validate(job)
        assert model.model_dump(mode="json") == job


def test_query_gives_one_aind_job_per_asset(
    metadata: MetadataCollection, store: SqliteStore, instance: DagsterInstance
) -> None:
    report = run(metadata, store, instance, docdb_query=ECEPHYS)
    ecephys = [
        r
        for r in metadata.records
        if any(m["abbreviation"] == "ecephys" for m in r["data_description"]["modalities"])
    ]
    assert report.found == len(ecephys) == 5 and report.registered == 5 and report.already_recorded == 0
    jobs = registered_jobs(store)
    assert_aind_jobs(jobs)
    by_id = {job["docdb_record_id"][0]: job for job in jobs}
    assert set(by_id) == {r["_id"] for r in ecephys}
    for record in ecephys:
        job = by_id[record["_id"]]
        assert job["s3_location"] == [record["location"]] and job["asset_name"] == [record["name"]]
        assert job["query"] == ECEPHYS and job["file_location"] is None and job["group_metadata"] is None
        code = job["analysis_code"]
        assert code["parameters"] == {"analysis_name": "echo"} and code["version"] == echo.version
        assert code["input_data"] == [{"object_type": "Data asset", "name": None, "url": record["location"]}]
    keys = set(instance.get_dynamic_partitions(echo.partitions_name))
    assert keys == {e.partition_key for e in store.list_jobs("echo")} == set(report.keys)
    assert {e.state for e in store.list_jobs("echo")} == {JobState.PENDING}
    assert all(e.source == f"dispatch {report.dispatch_id} (cli)" for e in store.list_jobs("echo"))

    again = run(metadata, store, instance, docdb_query=ECEPHYS)
    assert (again.found, again.already_registered, again.registered) == (5, 5, 0)


def test_recorded_jobs_are_skipped_before_registration(
    metadata: MetadataCollection, tmp_path: Path, instance: DagsterInstance
) -> None:
    first = SqliteStore(tmp_path / "a.sqlite")
    run(metadata, first, instance, docdb_query=ECEPHYS)
    entries = first.list_jobs("echo")
    fresh = SqliteStore(tmp_path / "b.sqlite")
    for entry in entries[:2]:  # recorded by an earlier run (under whatever key): nothing to register
        fresh.insert_record("echo", {"_id": entry.fingerprint, "name": entry.fingerprint})
    before = fresh.query_count
    report = run(metadata, fresh, instance, docdb_query=ECEPHYS)
    assert (report.already_recorded, report.registered) == (2, 3)
    assert {e.partition_key for e in fresh.list_jobs("echo")} == {e.partition_key for e in entries[2:]}
    assert report.store_queries <= fresh.query_count - before <= 12, "batched: a few queries, not one per job"
    first.close()
    fresh.close()


def test_asset_csv_matches_code_ocean_ids(
    metadata: MetadataCollection, store: SqliteStore, instance: DagsterInstance, tmp_path: Path
) -> None:
    chosen = metadata.records[1:3]
    csv = tmp_path / "assets.csv"
    csv.write_text(
        "asset_id,comment\n"
        + "".join(f"{r['external_links']['Code Ocean'][0]},x\n" for r in chosen)
        + ",blank\n"
    )
    report = run(metadata, store, instance, data_asset_csv=str(csv))
    assert report.registered == 2
    jobs = registered_jobs(store)
    assert sorted(j["docdb_record_id"][0] for j in jobs) == sorted(r["_id"] for r in chosen)
    assert all(j["query"] is None for j in jobs)  # as the dispatcher: no query text for a CSV
    assert_aind_jobs(jobs)
    (tmp_path / "empty.csv").write_text("asset_id\n\n")
    with pytest.raises(DispatchQueryError, match="'asset_id' column is empty"):
        run(metadata, store, instance, data_asset_csv=str(tmp_path / "empty.csv"))
    (tmp_path / "other.csv").write_text("id\nx\n")
    with pytest.raises(DispatchQueryError, match=r"other\.csv: no 'asset_id' column"):
        run(metadata, store, instance, data_asset_csv=str(tmp_path / "other.csv"))


@pytest.mark.parametrize("drop_null_groups", [True, False])
def test_group_by_subject(
    metadata: MetadataCollection, store: SqliteStore, instance: DagsterInstance, drop_null_groups: bool
) -> None:
    report = run(
        metadata,
        store,
        instance,
        docdb_query="{}",
        group_by="subject.subject_id",
        drop_null_groups=drop_null_groups,
    )
    subjects = ["600001", "600002", "600003"] + ([] if drop_null_groups else [None])
    assert report.registered == len(subjects)
    jobs = {j["group_metadata"]["subject__subject_id"]: j for j in registered_jobs(store)}
    assert sorted(jobs, key=str) == sorted(subjects, key=str)
    for subject in subjects:
        assets = metadata.by_subject(subject)
        job = jobs[subject]
        assert sorted(job["docdb_record_id"]) == sorted(r["_id"] for r in assets)
        assert sorted(job["s3_location"]) == sorted(r["location"] for r in assets)
        assert len(job["asset_name"]) == len(assets)
    assert_aind_jobs(list(jobs.values()))


def test_filter_latest_keeps_the_newest_asset_per_subject(
    metadata: MetadataCollection, store: SqliteStore, instance: DagsterInstance
) -> None:
    report = run(
        metadata, store, instance, docdb_query="{}", filter_latest="created", filter_by=["subject.subject_id"]
    )
    newest: dict[str, dict[str, Any]] = {}
    for record in metadata.records:
        subject = record["subject"]["subject_id"]
        if subject and (subject not in newest or record["created"] > newest[subject]["created"]):
            newest[subject] = record
    assert report.registered == 3
    assert sorted(j["asset_name"][0] for j in registered_jobs(store)) == sorted(
        r["name"] for r in newest.values()
    )


def test_unwind_a_list_field_then_group_by_it(
    metadata: MetadataCollection, store: SqliteStore, instance: DagsterInstance
) -> None:
    report = run(
        metadata,
        store,
        instance,
        docdb_query="{}",
        unwind_list_fields=["data_description.modalities"],
        group_by=["data_description.modalities.abbreviation"],
    )
    jobs = {
        j["group_metadata"]["data_description__modalities__abbreviation"]: j for j in registered_jobs(store)
    }
    assert report.registered == 3 and set(jobs) == {"ecephys", "behavior", "pophys"}
    for modality, job in jobs.items():
        expected = [
            r["_id"]
            for r in metadata.records
            if modality in [m["abbreviation"] for m in r["data_description"]["modalities"]]
        ]
        assert sorted(job["docdb_record_id"]) == sorted(expected)


def test_parameter_sets_are_crossed_with_the_assets(
    metadata: MetadataCollection, store: SqliteStore, instance: DagsterInstance, tmp_path: Path
) -> None:
    parameters = tmp_path / "analysis_parameters.json"
    parameters.write_text(
        json.dumps(
            {"distributed_parameters": [{"scale": 2.0}, {"scale": 3.0}], "fixed_parameters": {"fail": False}}
        )
    )
    query = json.dumps({"subject.subject_id": "600002"})
    report = run(metadata, store, instance, docdb_query=query, parameters_file=str(parameters))
    assert report.registered == 4  # 2 assets x 2 parameter sets
    entries = store.list_jobs("echo")
    assert len({e.fingerprint for e in entries}) == 4
    jobs = registered_jobs(store)
    assert sorted((j["asset_name"][0], j["distributed_parameters"]["scale"]) for j in jobs) == sorted(
        (r["name"], s) for r in metadata.by_subject("600002") for s in (2.0, 3.0)
    )
    for job in jobs:
        assert job["analysis_code"]["parameters"] == {
            "analysis_name": "echo",
            "fail": False,
            **job["distributed_parameters"],
        }
    assert_aind_jobs(jobs)
    parameters.write_text('{"distributed_parameters": {"scale": 2}}')
    with pytest.raises(DispatchQueryError, match="must be a JSON list of objects"):
        run(metadata, store, instance, docdb_query=query, parameters_file=str(parameters))


def test_the_cap_leaves_out_and_reports_the_rest(
    metadata: MetadataCollection, store: SqliteStore, instance: DagsterInstance
) -> None:
    first = run(metadata, store, instance, docdb_query=ECEPHYS, max_number_of_tasks_dispatched=2)
    assert (first.registered, first.left_out) == (2, 3)
    second = run(metadata, store, instance, docdb_query=ECEPHYS, max_number_of_tasks_dispatched=2)
    assert (second.already_registered, second.registered, second.left_out) == (2, 2, 1)
    assert "1 left out by max_number_of_tasks_dispatched" in second.summary()


def test_a_bad_parameter_rejects_the_job_naming_it(
    metadata: MetadataCollection, store: SqliteStore, instance: DagsterInstance
) -> None:
    report = run(metadata, store, instance, docdb_query=ECEPHYS, fixed_parameters={"scale": -1})
    assert report.registered == 0 and len(report.rejected) == 5
    assert "parameters.scale" in report.rejected[0] and "greater than 0" in report.rejected[0]


def make_asset_files(root: Path, metadata: MetadataCollection, counts: dict[str, int]) -> None:
    for record in metadata.records:
        n = counts.get(record["name"], 0)
        folder = root / record["name"]
        (folder / "nested" / "deeper").mkdir(parents=True, exist_ok=True)
        (folder / "notes.txt").write_text("not a match")
        for i in range(n):
            where = folder if i % 2 == 0 else folder / "nested" / "deeper"
            (where / f"part{i}.nwb").write_bytes(b"x" * (i + 1))


def test_file_extension_on_a_local_folder_one_job_per_file(
    mongo_server: Any, store: SqliteStore, instance: DagsterInstance, tmp_path: Path
) -> None:
    root = tmp_path / "assets"
    local = seeded(mongo_server, str(root))
    make_asset_files(root, local, {"600002_2024-03-02_10-30-00": 3})  # 600002's other asset has none
    query = json.dumps({"subject.subject_id": "600002"})
    report = run(local, store, instance, docdb_query=query, file_extension=".nwb")
    assert report.registered == 3, report
    assert len(report.unusable) == 1 and "no .nwb file under" in report.unusable[0]
    asset = root / "600002_2024-03-02_10-30-00"
    expected = sorted(str(p) for p in asset.rglob("*.nwb"))  # found at every depth
    jobs = registered_jobs(store)
    assert sorted(f for j in jobs for f in j["file_location"]) == expected
    assert all(j["s3_location"] == [str(asset)] and len(j["file_location"]) == 1 for j in jobs)
    assert all(j["analysis_code"]["parameters"]["file_location"] == j["file_location"] for j in jobs)
    assert_aind_jobs(jobs)


def test_split_files_n_gives_a_job_per_n_files_of_an_asset(
    mongo_server: Any, store: SqliteStore, instance: DagsterInstance, tmp_path: Path
) -> None:
    root = tmp_path / "assets"
    local = seeded(mongo_server, str(root))
    make_asset_files(root, local, {"600002_2024-03-02_10-30-00": 5})
    query = json.dumps({"subject.subject_id": "600002"})
    report = run(local, store, instance, docdb_query=query, file_extension=".nwb", split_files=2)
    assert report.registered == 3 and not report.rejected, report
    jobs = registered_jobs(store)
    assert sorted(len(j["file_location"]) for j in jobs) == [1, 2, 2]
    asset = root / "600002_2024-03-02_10-30-00"
    assert sorted(f for j in jobs for f in j["file_location"]) == sorted(str(p) for p in asset.rglob("*.nwb"))
    assert all(j["s3_location"] == [str(asset)] for j in jobs)
    assert_aind_jobs(jobs)


def test_files_of_a_group_in_one_job(
    mongo_server: Any, store: SqliteStore, instance: DagsterInstance, tmp_path: Path
) -> None:
    """split_files 0 with group_by: one job per subject holding every matching file of its assets
    (any number per asset, as the dispatcher writes them)."""
    root = tmp_path / "assets"
    local = seeded(mongo_server, str(root))
    make_asset_files(
        root,
        local,
        {"600001_2024-03-01_10-30-00": 1, "600001_2024-03-03_10-30-00": 1, "600002_2024-03-02_10-30-00": 2},
    )
    report = run(
        local,
        store,
        instance,
        docdb_query="{}",
        group_by=["subject.subject_id"],
        file_extension=".nwb",
        split_files=0,
    )
    assert report.registered == 2 and not report.rejected, report
    jobs = {job["group_metadata"]["subject__subject_id"]: job for job in registered_jobs(store)}
    assert sorted(jobs) == ["600001", "600002"]
    first, second = jobs["600001"], jobs["600002"]
    assert sorted(first["asset_name"]) == ["600001_2024-03-01_10-30-00", "600001_2024-03-03_10-30-00"]
    assert [Path(f).parent.name for f in first["file_location"]] == [
        Path(loc).name for loc in first["s3_location"]
    ]
    # 600002's asset has two matching files (one nested deeper): both in its group's one job.
    assert second["asset_name"] == ["600002_2024-03-02_10-30-00"] and len(second["file_location"]) == 2
    assert all(f.startswith(second["s3_location"][0] + "/") for f in second["file_location"])
    assert_aind_jobs([first, second])
    # Left out: 600001's third session and 600002's second (no file), 600003's only asset (none at all).
    assert sum("no .nwb file" in r for r in report.unusable) == 3


def test_file_extension_in_s3_and_job_files_written_there(
    mongo_server: Any, moto_s3: S3Endpoint, store: SqliteStore, instance: DagsterInstance, tmp_path: Path
) -> None:
    bucket = moto_s3.new_bucket("raw")
    root = tmp_path / "assets"
    located = seeded(mongo_server, f"s3://{bucket}/assets")
    make_asset_files(root, located, {"600001_2024-03-01_10-30-00": 2, "600001_2024-03-03_10-30-00": 1})
    moto_s3.upload_tree(root, bucket, "assets")
    client = moto_s3.client()
    out = moto_s3.new_bucket("inbox")
    report = run(
        located,
        store,
        instance,
        docdb_query=json.dumps({"subject.subject_id": "600001"}),
        file_extension=".nwb",
        output_directory=f"s3://{out}/dispatched",
        tasks_per_job=2,
        s3=lambda: client,
    )
    assert report.registered == 3 and len(report.unusable) == 1  # the third session has no .nwb
    files = sorted(f for j in registered_jobs(store) for f in j["file_location"])
    assert files == sorted(
        f"s3://{bucket}/assets/{p.relative_to(root).as_posix()}"
        for p in root.rglob("*.nwb")
        if "600001" in str(p)
    )
    written = moto_s3.objects(out, "dispatched/")
    names = sorted(written)
    assert [n.split("/")[1] for n in names].count("0") == 2 and [n.split("/")[1] for n in names].count(
        "1"
    ) == 1
    by_key = {e.partition_key: dict(e.job) for e in store.list_jobs("echo")}
    for key in names:
        body = json.loads(client.get_object(Bucket=out, Key=key)["Body"].read())
        assert AnalysisDispatchModel.model_validate(body).model_dump(mode="json") == body
        assert body in by_key.values()


def test_job_files_written_to_a_folder_named_as_the_dispatcher_names_them(
    metadata: MetadataCollection, store: SqliteStore, instance: DagsterInstance, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    report = run(metadata, store, instance, docdb_query=ECEPHYS, output_directory=str(out), tasks_per_job=2)
    files = sorted(out.rglob("*.json"))
    assert len(files) == 5 and sorted({p.parent.name for p in files}) == ["0", "1", "2"]
    assert all(len(p.stem) == 36 and p.stem.count("-") == 4 for p in files)  # <job index>/<uuid>.json
    assert sorted(json.loads(p.read_text())["docdb_record_id"][0] for p in files) == sorted(
        j["docdb_record_id"][0] for j in registered_jobs(store)
    )
    assert report.written == [
        str(p) for p in sorted(out.rglob("*.json"), key=lambda p: report.written.index(str(p)))
    ]
    run(metadata, store, instance, docdb_query=ECEPHYS, output_directory=str(out))
    assert len(list(out.rglob("*.json"))) == 5  # nothing new registered, nothing new written


def test_a_pass_stopped_by_its_deadline_goes_on_from_where_it_stopped(
    metadata: MetadataCollection, store: SqliteStore, instance: DagsterInstance
) -> None:
    after, passes, registered = None, 0, 0
    while True:
        report = run(
            metadata,
            store,
            instance,
            docdb_query=ECEPHYS,
            batch_size=2,
            deadline=time.monotonic() - 1,
            after=after,
        )
        passes += 1
        registered += report.registered
        assert report.registered <= 2
        after = report.next_after
        if after is None:
            break
    assert passes == 3 and registered == 5 and len(store.list_jobs("echo")) == 5


def test_dry_run_registers_nothing(metadata: MetadataCollection, store: SqliteStore) -> None:
    report = run(metadata, store, None, docdb_query=ECEPHYS, dry_run=True)
    assert report.registered == 5 and len(report.keys) == 5 and "would register 5" in report.summary()
    assert store.list_jobs("echo") == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ('{"name": ', "docdb_query is not valid JSON: Expecting value (line 1, column 9)"),
        ('{"name": {"$regx": "^6"}}', "unknown operator $regx at 'name.$regx'"),
        ('{"$or": [{"a": 1}, {"b": {"$inn": [1]}}]}', "unknown operator $inn at '$or[1].b.$inn'"),
        ('{"$where": "this.a == 1"}', "operator $where at '$where' runs server-side JavaScript"),
        ("[1, 2]", "must be a JSON object (a MongoDB filter), got list"),
        ("no_such_query.json", "neither a JSON object nor an existing JSON file"),
    ],
)
def test_bad_queries_are_refused_before_the_database_is_asked(
    store: SqliteStore, query: str, message: str
) -> None:
    nowhere = MetadataDatabase(
        "mongodb://127.0.0.1:9/", database="x", collection="y", server_selection_timeout_ms=100
    )
    with pytest.raises(DispatchQueryError) as caught:
        dispatch(echo, DispatchSettings(docdb_query=query), store, nowhere, None)
    assert message in str(caught.value)


def test_query_file_with_broken_json_names_file_and_line(store: SqliteStore, tmp_path: Path) -> None:
    path = tmp_path / "query.json"
    path.write_text('{\n  "subject.subject_id": "600001",\n  "name": {"$regex": "^6"\n}\n')
    nowhere = MetadataDatabase(
        "mongodb://127.0.0.1:9/", database="x", collection="y", server_selection_timeout_ms=100
    )
    with pytest.raises(DispatchQueryError, match=rf"docdb_query file {path} is not valid JSON: .*line 5"):
        dispatch(echo, DispatchSettings(docdb_query=str(path)), store, nowhere, None)


def test_unreachable_metadata_database_error_has_no_password(store: SqliteStore) -> None:
    db = MetadataDatabase(
        "mongodb://reader:Pa55word-xyz@127.0.0.1:9/?authSource=admin",
        database="metadata_index",
        collection="data_assets",
        server_selection_timeout_ms=200,
    )
    with pytest.raises(StoreError) as caught:
        dispatch(echo, DispatchSettings(docdb_query=ECEPHYS, dry_run=True), store, db, None)
    text = str(caught.value)
    assert "Pa55word-xyz" not in text and "127.0.0.1:9" in text and "data_assets" in text


def test_ten_thousand_assets_in_one_pass_with_batched_store_queries(
    mongo_server: Any, store: SqliteStore, instance: DagsterInstance
) -> None:
    from analysis_wrapper_tests.dispatching.metadata_records import many_records

    collection = MetadataCollection(mongo_server, fresh_database_name("scale"), [])
    client = mongo_server.client()
    client[collection.database]["data_assets"].insert_many(many_records(10_000, "s3://raw-data/scale"))
    client.close()
    began = time.monotonic()
    report = run(collection, store, instance, docdb_query="{}", max_number_of_tasks_dispatched=10_000)
    elapsed = time.monotonic() - began
    assert (report.found, report.registered) == (10_000, 10_000)
    # Per batch of 1000: a registry lookup, a record lookup and the registration's few statements.
    # At most 8 per batch of 1,000 (74 measured; 84 while the registration repeated the skip check).
    assert report.store_queries <= 10 * 8, report.store_queries
    assert len(instance.get_dynamic_partitions(echo.partitions_name)) == 10_000
    again = run(collection, store, instance, docdb_query="{}", max_number_of_tasks_dispatched=10_000)
    assert (again.already_registered, again.registered) == (10_000, 0)
    assert again.store_queries <= 10 * 2
    print(f"10,000 assets dispatched in {elapsed:.1f} s, {report.store_queries} store queries")
