"""The store over TLS, as AWS DocumentDB needs it: a real server (SecantusDB) that speaks only TLS, its
certificate signed by a CA made for the test (standing in for ``global-bundle.pem``), reached from the
settings a deployment sets (``DOCDB_URI`` without TLS options, ``DOCDB_TLS=1``, ``DOCDB_TLS_CA_FILE``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from analysis_wrapper.cli import main
from analysis_wrapper.code_location import store_resource
from analysis_wrapper.resources.record_store import _open_store, close_all_stores
from analysis_wrapper.settings import Settings
from analysis_wrapper.store.base import JobState, Lease, StoreError, utcnow
from analysis_wrapper.store.mongo import MongoStore
from analysis_wrapper_tests.dispatching.metadata_records import seed_records
from analysis_wrapper_tests.job_states import register_entries
from analysis_wrapper_tests.mongo_server import MongoServer, MongoServerFactory, fresh_database_name
from analysis_wrapper_tests.store_rows import entry, record

SETTINGS_ENV = ("DOCDB_URI", "DOCDB_TLS", "DOCDB_TLS_CA_FILE", "DOCDB_DATABASE")


@pytest.fixture
def tls_server(mongo_server_factory: MongoServerFactory) -> MongoServer:
    return mongo_server_factory(tls=True)


def plain_uri(server: MongoServer, userinfo: str = "") -> str:
    """The server's URI with no TLS options, as a DocumentDB URI often is (TLS set by DOCDB_TLS)."""
    return f"mongodb://{userinfo}{server.host}:{server.port}/?replicaSet=secantus"


@pytest.fixture
def docdb_env(tls_server: MongoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The settings a deployment to DocumentDB sets (deploy/), pointed at the TLS server; the database."""
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    database = fresh_database_name("tls")
    assert tls_server.tls is not None
    monkeypatch.setenv("DOCDB_URI", plain_uri(tls_server))
    monkeypatch.setenv("DOCDB_TLS", "1")
    monkeypatch.setenv("DOCDB_TLS_CA_FILE", str(tls_server.tls.ca_file))
    monkeypatch.setenv("DOCDB_DATABASE", database)
    yield database
    close_all_stores()


def test_the_store_works_over_tls_with_the_ca_bundle(docdb_env: str, tls_server: MongoServer) -> None:
    store = _open_store(store_resource(Settings(_env_file=None)))  # type: ignore[call-arg]
    assert isinstance(store, MongoStore) and store.tls is True
    outcome = register_entries(store, [entry("k1", "fp1"), entry("k2", "fp2")])
    assert outcome.added == ["k1", "k2"]
    now = utcnow()
    first = Lease("fp1", "run-1", "host-a", 1, "token-1", now + dt.timedelta(minutes=1))
    assert store.claim_lease(first, now)
    assert not store.claim_lease(dataclasses.replace(first, run_id="run-2", token="token-2"), now)
    store.insert_record("demo", record("fp1"))
    assert store.existing_fingerprints("demo", ["fp1", "fp2"]) == {"fp1"}
    assert store.get_jobs("demo", ["k1"])["k1"].state == JobState.PENDING
    store.close()
    # What the store wrote is on the TLS server (read back with a client of the test's own).
    client: Any = tls_server.client()
    try:
        assert client[docdb_env]["demo"].find_one({"_id": "fp1"})["name"] == "fp1"  # type: ignore[index]
    finally:
        client.close()


def test_a_certificate_of_an_unknown_ca_is_refused_and_the_error_keeps_the_password(
    tls_server: MongoServer,
) -> None:
    """TLS without the CA bundle (the system's CAs only): the server's certificate is not trusted, and
    the error says so, names the server and never shows the URI's password."""
    store = MongoStore(
        plain_uri(tls_server, "writer:s3cr%40t-pw@"),
        database=fresh_database_name("tls"),
        tls=True,
        server_selection_timeout_ms=1500,
    )
    with pytest.raises(StoreError) as caught:
        store.existing_fingerprints("demo", ["fp"])
    message = str(caught.value)
    assert "certificate verify failed" in message, message
    assert f"127.0.0.1:{tls_server.port}" in message
    assert "s3cr" not in message and "t-pw" not in message, message
    store.close()


def test_a_client_without_tls_is_refused_with_a_clear_error(tls_server: MongoServer) -> None:
    store = MongoStore(
        plain_uri(tls_server), database=fresh_database_name("tls"), server_selection_timeout_ms=1500
    )
    with pytest.raises(StoreError, match=rf"cannot reach .*127\.0\.0\.1:{tls_server.port}"):
        store.existing_fingerprints("demo", ["fp"])
    store.close()


def test_the_cli_runs_jobs_into_the_tls_server(
    docdb_env: str,
    tls_server: MongoServer,
    example_jobs: list[Path],
    tmp_path: Path,
    clean_repo: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``analysis-wrapper run`` with DocumentDB's settings: jobs, leases and records all go over TLS."""
    monkeypatch.chdir(tmp_path)
    for name in ("DAGSTER_HOME", "ANALYSIS_BUCKET", "RESULTS_ROOT", "ALLOW_DIRTY", "GIT_COMMIT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DRY_RUN", "0")
    monkeypatch.setenv("CODE_REPOSITORY", str(clean_repo))
    code = main(["run", str(example_jobs[0].parent)])
    close_all_stores()
    out = capsys.readouterr().out
    assert code == 0, out
    assert "3 job(s): 3 done, 0 already done, 0 dry run, 0 failed" in out
    code = main(["results", "--json"])
    close_all_stores()
    found = json.loads(capsys.readouterr().out)
    assert code == 0 and len(found) == 3
    client: Any = tls_server.client()
    try:
        assert client[docdb_env]["isi_violations"].count_documents({}) == 3
        states = {doc["state"] for doc in client[docdb_env]["analysis_wrapper_jobs"].find()}
        assert states == {"done"}
    finally:
        client.close()


def test_dispatch_reads_the_metadata_and_registers_over_tls(
    docdb_env: str,
    tls_server: MongoServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``analysis-wrapper dispatch`` as at AIND, where the metadata database is DocumentDB too: the
    query runs over TLS on the metadata collection (``METADATA_DOCDB_URI`` without TLS options, the
    same ``DOCDB_TLS`` and CA bundle) and the jobs are registered in the store on the same server."""
    client: Any = tls_server.client()
    try:
        records = seed_records(client["metadata_index"]["data_assets"], "s3://raw-data/assets")
    finally:
        client.close()
    ecephys = [r for r in records if "ecephys" in json.dumps(r["data_description"]["modalities"])]
    assert ecephys, "the seeded records hold ecephys sessions"
    monkeypatch.chdir(tmp_path)
    for name in ("METADATA_DOCDB_DATABASE", "METADATA_DOCDB_COLLECTION", "DISPATCH_QUERIES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("METADATA_DOCDB_URI", plain_uri(tls_server))
    monkeypatch.setenv("ANALYSIS_MODULES", "analysis_wrapper_tests.sample_analyses")
    query = json.dumps({"data_description.modalities.abbreviation": "ecephys"})
    code = main(["dispatch", "--analysis", "echo", "--query", query])
    close_all_stores()
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"registered: {len(ecephys)}\n" in out, out
    client = tls_server.client()
    try:
        jobs = list(client[docdb_env]["analysis_wrapper_jobs"].find({"analysis": "echo"}))
    finally:
        client.close()
    assert len(jobs) == len(ecephys) and {j["state"] for j in jobs} == {"pending"}
    assert {j["job"]["docdb_record_id"][0] for j in jobs} == {r["_id"] for r in ecephys}
