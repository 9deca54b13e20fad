"""From a saved query to recorded results with nobody at the keyboard: a real ``dagster dev`` whose
saved-query sensor dispatches from the metadata collection (SecantusDB), whose inbox sensor runs the
jobs, and which picks up a session added to the collection while it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from analysis_wrapper.store.base import JobState
from analysis_wrapper.store.sqlite import SqliteStore
from analysis_wrapper_tests.dagster_dev import REPO_ROOT, DagsterDev, wait_for
from analysis_wrapper_tests.dispatching.metadata_records import COLLECTION, Session, metadata_record, seeded
from analysis_wrapper_tests.mongo_server import MongoServer

PHASE_TIMEOUT_S = 200.0  # the daemon also runs the other analyses' sensors and summaries on 2 busy cores


def asset_files(root: Path, records: list[dict[str, Any]], skip: str) -> None:
    for record in records:
        folder = Path(record["location"])
        (folder / "ephys").mkdir(parents=True, exist_ok=True)
        if record["name"] != skip:
            (folder / "ephys" / "spikes.bin").write_bytes(b"\0" * 128)


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_saved_query_to_recorded_results_through_the_daemon(
    dagster_dev: tuple[DagsterDev, Path, Path, Path], mongo_server: MongoServer, tmp_path: Path
) -> None:
    dev, home, _inbox, results = dagster_dev
    root = tmp_path / "assets"
    metadata = seeded(mongo_server, str(root))
    ecephys = [r for r in metadata.records if "ecephys" in str(r["data_description"]["modalities"])]
    without_file = ecephys[0]["name"]
    asset_files(root, metadata.records, skip=without_file)
    queries = tmp_path / "queries"
    queries.mkdir()
    (queries / "echo_ecephys.yaml").write_text(
        "analysis: echo\n"
        "docdb_query:\n  data_description.modalities.abbreviation: ecephys\n"
        "file_extension: .bin\n"
    )
    dev.env.update(
        METADATA_DOCDB_URI=mongo_server.uri,
        METADATA_DOCDB_DATABASE=metadata.database,
        METADATA_DOCDB_COLLECTION=COLLECTION,
        DISPATCH_QUERIES=str(queries),
        DISPATCH_INTERVAL_S="1",
        ANALYSIS_MODULES="analysis_wrapper_tests.sample_analyses",
        PYTHONPATH=str(REPO_ROOT),
        SENSOR_BATCH_SIZE="10",
    )
    store = SqliteStore(home / "analysis_records.sqlite")

    def all_recorded(n: int) -> bool:
        entries = store.list_jobs("echo")
        fps = [e.fingerprint for e in entries]
        return (
            len(entries) == n
            and all(e.state == JobState.DONE for e in entries)
            and len(store.existing_fingerprints("echo", fps)) == n
        )

    dev.start()
    wait_for(
        "the saved query's 4 jobs (one asset has no .bin file) to be recorded",
        lambda: all_recorded(4),
        dev,
        timeout=PHASE_TIMEOUT_S,
    )

    added = metadata_record(Session("600009", 9, ["ecephys"]), str(root), seed=5)
    asset_files(root, [added], skip="")
    metadata.collection().insert_one(added)
    wait_for(
        "the session added later to be dispatched and recorded",
        lambda: all_recorded(5),
        dev,
        timeout=PHASE_TIMEOUT_S,
    )
    dev.kill()

    entries = {dict(e.job)["asset_name"][0]: e for e in store.list_jobs("echo")}
    assert without_file not in entries and added["name"] in entries
    assert all(
        e.source.startswith("dispatch ") and "(saved query echo_ecephys)" in e.source
        for e in entries.values()
    )
    records = store.find_records("echo")
    assert sorted(r["_id"] for r in records) == sorted(e.fingerprint for e in entries.values())
    for entry in entries.values():  # (RESULTS_ROOT also holds the analyses' summary folders)
        assert (results / entry.fingerprint / "metadata.nd.json").is_file()
    for entry in entries.values():
        job = dict(entry.job)
        assert job["file_location"] == [f"{job['s3_location'][0]}/ephys/spikes.bin"]

    from dagster import AssetKey, DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        dispatches = instance.fetch_materializations(AssetKey("echo_dispatches"), limit=1000).records
    assert dispatches, "each tick's dispatch is recorded"
    registered = 0
    for record in dispatches:
        materialization = record.asset_materialization
        assert materialization is not None
        registered += int(str(materialization.metadata["registered"].value))
    assert registered == 5, "every job was registered once, by one of the ticks"
    store.close()
