"""Fetching input assets' metadata records by docdb_record_id (mongomock as the metadata database)."""

from __future__ import annotations

import logging

import mongomock
import pytest

from analysis_wrapper.analyses.isi_violations import analysis as isi
from analysis_wrapper.input_metadata import InputMetadataError, fetch_input_metadata
from analysis_wrapper.job_file import DispatchJob
from analysis_wrapper.make_job import build_analysis_job
from analysis_wrapper.settings import Settings


def job_with_ids(*ids: str) -> object:
    dispatch = DispatchJob(s3_location=[f"s3://b/{i}" for i in ids], docdb_record_id=list(ids))
    return build_analysis_job(dispatch, isi)


def test_records_come_back_in_job_order_and_missing_ones_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    client = mongomock.MongoClient()
    settings = Settings(_env_file=None, METADATA_DOCDB_DATABASE="meta", METADATA_DOCDB_COLLECTION="assets")  # type: ignore[call-arg]
    client["meta"]["assets"].insert_many(
        [{"_id": "id-2", "subject": {"subject_id": "2"}}, {"_id": "id-1", "subject": {"subject_id": "1"}}]
    )
    with caplog.at_level(logging.WARNING):
        found = fetch_input_metadata(job_with_ids("id-1", "id-x", "id-2"), client=client, settings=settings)  # type: ignore[arg-type]
    assert [r["_id"] for r in found] == ["id-1", "id-2"]
    assert "No metadata record found for id id-x" in caplog.text


def test_without_a_database_the_error_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DOCDB_URI", "METADATA_DOCDB_URI"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(InputMetadataError, match="METADATA_DOCDB_URI"):
        fetch_input_metadata(job_with_ids("id-1"), settings=Settings(_env_file=None))  # type: ignore[arg-type,call-arg]


def test_unreachable_database_error_names_no_password() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, METADATA_DOCDB_URI="mongodb://reader:hunter2pw@127.0.0.1:1/", DOCDB_TIMEOUT_MS=200
    )
    with pytest.raises(InputMetadataError) as caught:
        fetch_input_metadata(job_with_ids("id-1"), settings=settings)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "127.0.0.1:1" in message and "hunter2pw" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_no_record_ids_means_no_query() -> None:
    class Unusable:
        def __getitem__(self, name: str) -> object:
            raise AssertionError("queried the database for a job without record ids")

    dispatch = DispatchJob(s3_location=["s3://b/a"], docdb_record_id=[])
    job = build_analysis_job(dispatch, isi)
    assert fetch_input_metadata(job, Settings(_env_file=None), client=Unusable()) == []  # type: ignore[call-arg]
