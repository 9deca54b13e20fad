"""The fixtures every test folder shares (pytest finds them; nobody imports them): the test servers
(``pytest_plugins``), clean/dirty git work trees, example NWB jobs, the in-process Dagster harness, the
record store of each backend, and a real ``dagster dev``. Helpers the tests call live in plain modules
(:mod:`analysis_wrapper_tests.harness`, :mod:`analysis_wrapper_tests.dagster_dev`, ...)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.resources.record_store import close_all_stores
from analysis_wrapper.store.base import Store
from analysis_wrapper.store.mongo import MongoStore
from analysis_wrapper.store.sqlite import SqliteStore
from analysis_wrapper_tests.dagster_dev import SHIPPED_INSTANCE_YAML, DagsterDev, dagster_dev_env
from analysis_wrapper_tests.harness import (
    Harness,
    git_repo,
    load_examples_module,
    make_harness,
    make_settings,
)

pytest_plugins = [
    "analysis_wrapper_tests.s3_servers",
    "analysis_wrapper_tests.mongo_server",
    "analysis_wrapper_tests.postgres_server",
]


@pytest.fixture(scope="session")
def clean_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return git_repo(tmp_path_factory.mktemp("clean_repo"), dirty=False)


@pytest.fixture(scope="session")
def dirty_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return git_repo(tmp_path_factory.mktemp("dirty_repo"), dirty=True)


@pytest.fixture(scope="session")
def example_jobs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three AIND job files over synthetic NWB files, written by the shipped example generator."""
    out = tmp_path_factory.mktemp("examples")
    return list(load_examples_module().write_examples(out, n_jobs=3, seed=0))


@pytest.fixture
def harness_factory(tmp_path: Path, clean_repo: Path) -> Iterator[Any]:
    def factory(analyses: Sequence[Analysis[Any, Any]] | None = None, **overrides: Any) -> Harness:
        return make_harness(
            make_settings(tmp_path, overrides.pop("code_repository", clean_repo), **overrides), analyses
        )

    yield factory
    close_all_stores()


@pytest.fixture(params=["sqlite", "mongodb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each record store backend in turn: SQLite in a nested folder, and MongoDB (a fresh database on the
    session's server, dropped afterwards)."""
    made: Store
    if request.param == "sqlite":
        made = SqliteStore(tmp_path / "nested" / "folders" / "records.sqlite")
        try:
            yield made
        finally:
            made.close()
        return
    server = request.getfixturevalue("mongo_server")
    database = f"aw_test_{uuid.uuid4().hex[:12]}"
    made = MongoStore(server.uri, database=database, server_selection_timeout_ms=5000)
    try:
        yield made
    finally:
        made.close()
        client = server.client()
        try:
            client.drop_database(database)
        finally:
            client.close()


@pytest.fixture
def dagster_dev(tmp_path: Path, clean_repo: Path) -> Iterator[tuple[DagsterDev, Path, Path, Path]]:
    """A ``dagster dev`` (not started) over a fresh DAGSTER_HOME with the shipped instance config:
    ``(dev, home, inbox, results)``; killed at the end."""
    home, inbox, results = tmp_path / "home", tmp_path / "inbox", tmp_path / "results"
    home.mkdir()
    inbox.mkdir()
    shutil.copy(SHIPPED_INSTANCE_YAML, home / "dagster.yaml")
    dev = DagsterDev(dagster_dev_env(home, inbox, results, clean_repo), tmp_path / "dagster_dev.log")
    try:
        yield dev, home, inbox, results
    finally:
        dev.kill()
