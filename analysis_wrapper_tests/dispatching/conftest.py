"""Fixtures of the dispatch tests: a metadata collection on the MongoDB test server (SecantusDB),
seeded with aind-data-schema records, a SQLite store and an ephemeral Dagster instance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance

from analysis_wrapper.store.sqlite import SqliteStore
from analysis_wrapper_tests.dispatching.metadata_records import MetadataCollection, seeded
from analysis_wrapper_tests.mongo_server import MongoServer


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
