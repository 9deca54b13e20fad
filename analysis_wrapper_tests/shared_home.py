"""One DAGSTER_HOME, record store and results storage shared by every process of a concurrency test
(``test_concurrency``, ``faults/test_races``), and the check that a record's folder holds exactly that
record's computation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis_wrapper.resources.results_storage import OUTPUTS_FILE, RECORD_FILE
from analysis_wrapper_tests.counting_analysis import NAME, RESULT_FILES, TOKEN_FILE, counting


@dataclass
class Setup:
    """One DAGSTER_HOME, record store and results storage, shared by every process of a test."""

    root: Path
    backend: str
    storage: str
    env: dict[str, str]
    s3: Any = None  # S3Endpoint when storage == "s3"
    bucket: str = ""
    store: Any = None
    logs: Path = field(init=False)
    _serial: int = 0
    _defs: Any = None
    _instance: Any = None
    _io_manager: Any = None

    def __post_init__(self) -> None:
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    @property
    def home(self) -> Path:
        return Path(self.env["DAGSTER_HOME"])

    @property
    def results_root(self) -> Path:
        return Path(self.env["RESULTS_ROOT"])

    @property
    def scratch(self) -> Path:
        return Path(self.env["TMPDIR"])

    def open_store(self) -> Any:
        """The record store, opened in this process (after the CLI created it)."""
        if self.store is None:
            if self.backend == "sqlite":
                from analysis_wrapper.store.sqlite import SqliteStore

                self.store = SqliteStore(self.home / "analysis_records.sqlite")
            else:
                from analysis_wrapper.store.mongo import MongoStore

                self.store = MongoStore(self.env["DOCDB_URI"], database=self.env["DOCDB_DATABASE"])
        return self.store

    def counting_defs(self) -> Any:
        """The counting analysis's Dagster definitions (asset, partitions), as the subprocesses build them."""
        from analysis_wrapper.code_location import build_analysis_set

        if self._defs is None:
            self._defs = build_analysis_set([counting])[NAME]
        return self._defs

    def instance(self) -> Any:
        """The shared Dagster instance, opened in this process."""
        from dagster import DagsterInstance

        if self._instance is None:
            self._instance = DagsterInstance.from_config(str(self.home))
        return self._instance

    def io_manager(self) -> Any:
        """The results IO manager the subprocesses use (same settings), in this process."""
        from analysis_wrapper.code_location import build_resources
        from analysis_wrapper.factory import RESULTS_IO_MANAGER_KEY
        from analysis_wrapper.settings import Settings

        if self._io_manager is None:
            names = ("DAGSTER_HOME", "RESULTS_ROOT", "DRY_RUN_ROOT", "DOCDB_URI", "DOCDB_DATABASE")
            names += ("ANALYSIS_BUCKET", "AWS_ENDPOINT_URL")
            values = {name: self.env[name] for name in names if name in self.env}
            settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
            self._io_manager = build_resources(settings)[RESULTS_IO_MANAGER_KEY]
        return self._io_manager

    def close(self) -> None:
        from analysis_wrapper.resources.record_store import close_all_stores

        if self.store is not None:
            self.store.close()
            self.store = None
        if self._instance is not None:
            self._instance.dispose()
            self._instance = None
        close_all_stores()

    def label(self, name: str) -> str:
        self._serial += 1
        return f"{self._serial:02d}-{name}"


def folder_files(setup: Setup, location: str) -> dict[str, bytes]:
    """The files of the folder at ``location`` (local path or s3:// URI) and their bytes."""
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://") :].partition("/")
        assert bucket == setup.bucket, location
        client = setup.s3.client()
        keys = [
            obj["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
            for obj in page.get("Contents", [])
        ]
        return {
            key[len(prefix) + 1 :]: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys
        }
    folder = Path(location)
    assert folder.is_dir(), f"{location}: no folder"
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def assert_record_matches_folder(setup: Setup, record: dict[str, Any]) -> None:
    """The record's folder holds exactly this record's computation, completely."""
    extra = record["analysis_wrapper"]
    fingerprint = extra["fingerprint"]
    location = record["location"]
    if setup.storage == "s3":
        assert location.startswith(f"s3://{setup.bucket}/results/{record['_id']}"), location
    else:
        assert location == str(setup.results_root / record["_id"]), location
    files = folder_files(setup, location)
    outputs = record["processing"]["data_processes"][0]["output_parameters"]
    assert set(files) == {*outputs["files"], OUTPUTS_FILE, RECORD_FILE}, (location, sorted(files))
    assert set(outputs["files"]) == set(RESULT_FILES)
    stored = json.loads(files[RECORD_FILE])
    assert stored["_id"] == stored["name"] == fingerprint, location
    assert stored["analysis_wrapper"]["run_id"] == extra["run_id"], location
    # The folder's own metadata names the fingerprint's folder; a superseded record names where it went.
    assert stored["location"].rsplit("/", 1)[-1] == fingerprint, location
    assert json.loads(files[OUTPUTS_FILE]) == outputs, location
    assert files[TOKEN_FILE].decode().strip() == outputs["token"], location
    assert stored["processing"]["data_processes"][0]["output_parameters"] == outputs, location
