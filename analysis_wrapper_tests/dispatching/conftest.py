"""Fixtures of the dispatch tests: a metadata collection on the MongoDB test server (SecantusDB),
seeded with aind-data-schema records, a SQLite store and an ephemeral Dagster instance."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance

from analysis_wrapper.dispatching.metadata_db import MetadataDatabase
from analysis_wrapper.store.sqlite import SqliteStore
from analysis_wrapper_tests.dispatching.metadata_records import seed_records
from analysis_wrapper_tests.mongo_server import MongoServer, fresh_database_name

COLLECTION = "data_assets"


@dataclass
class MetadataCollection:
    server: MongoServer
    database: str
    records: list[dict[str, Any]]

    def db(self) -> MetadataDatabase:
        return MetadataDatabase(self.server.uri, database=self.database, collection=COLLECTION)

    def collection(self) -> Any:
        return self.server.client()[self.database][COLLECTION]

    def by_subject(self, subject: str | None) -> list[dict[str, Any]]:
        return [r for r in self.records if r["subject"]["subject_id"] == subject]


def seeded(server: MongoServer, location_root: str) -> MetadataCollection:
    database = fresh_database_name("dispatch")
    client = server.client()
    try:
        records = seed_records(client[database][COLLECTION], location_root)
    finally:
        client.close()
    return MetadataCollection(server, database, records)


@pytest.fixture
def metadata(mongo_server: MongoServer) -> MetadataCollection:
    """The seeded collection; assets live under s3://raw-data/ (not read unless a test lists files)."""
    return seeded(mongo_server, "s3://raw-data/assets")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    sqlite = SqliteStore(tmp_path / "records.sqlite")
    yield sqlite
    sqlite.close()


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral
