"""Settings from the environment or a ``settings.env`` / ``.env`` file in the working folder.

Names are kept from the AIND capsule where one exists (``ANALYSIS_BUCKET``, ``DOCDB_*``,
``DRY_RUN``), so a capsule user's environment carries over. Environment variables win over files.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Any, Literal

from dagster import DefaultSensorStatus
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from analysis_wrapper.errors import AnalysisWrapperError

_CREDENTIALS = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^?]*@")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=("settings.env", ".env"),
        env_file_encoding="utf-8",
        env_ignore_empty=True,  # VARIABLE= (empty) means the default, in the environment and the files
        extra="ignore",
        case_sensitive=True,
    )

    DAGSTER_HOME: Path | None = Field(
        None, description="Dagster instance folder; the SQLite store lives here"
    )
    ANALYSIS_BUCKET: str | None = Field(None, description="bucket[/prefix] for results; set = S3")
    RESULTS_ROOT: Path = Field(Path("analysis_results"), description="Local results folder")
    DRY_RUN_ROOT: Path = Field(Path("analysis_results_dry_run"), description="Where dry runs write")
    AWS_ENDPOINT_URL: str | None = Field(None, description="S3-compatible endpoint, for local servers")
    DOCDB_URI: SecretStr | None = Field(None, description="mongodb:// URI; set = pymongo store")
    DOCDB_DATABASE: str = Field("analysis", description="Database of the record collections")
    DOCDB_COLLECTION: str | None = Field(None, description="Record collection; default: the analysis name")
    DOCDB_TLS: bool | None = Field(
        None, description="Use TLS to the database (DocumentDB: 1); unset: as the URI says"
    )
    DOCDB_TLS_CA_FILE: str | None = Field(
        None, description="CA bundle for TLS, e.g. global-bundle.pem (DocumentDB)"
    )
    DOCDB_TIMEOUT_MS: int = Field(
        10_000, description="Server selection timeout: how long to wait for the database"
    )
    METADATA_DOCDB_URI: SecretStr | None = Field(
        None, description="Where input assets' metadata records live; default: DOCDB_URI"
    )
    METADATA_DOCDB_DATABASE: str = Field("metadata_index", description="Database of input metadata records")
    METADATA_DOCDB_COLLECTION: str = Field("data_assets", description="Collection of input metadata records")
    DISPATCH_INBOX: str = Field("dispatch_inbox", description="Folder or s3:// prefix the sensor watches")
    DISPATCH_QUERIES: str = Field(
        "dispatch_queries", description="Folder of saved dispatch queries (*.yaml), one sensor each"
    )
    DISPATCH_INTERVAL_S: int = Field(300, ge=1, description="Seconds between two runs of a saved query")
    DISPATCH_BATCH_SIZE: int = Field(
        1000, ge=1, description="Query results per batch of a dispatch (one registry and one record lookup)"
    )
    DRY_RUN: bool = Field(True, description="1: write results locally only, post nothing")
    ALLOW_DIRTY: bool = Field(False, description="1: allow posting results from a dirty git tree")
    GIT_COMMIT: str | None = Field(None, description="Commit of the code where there is no .git")
    CODE_REPOSITORY: Path | None = Field(None, description="Git work tree of the analysis code")
    ANALYSIS_MODULES: str = Field(
        "",
        description="Comma-separated modules whose analyses are served too (kept in another package)",
    )
    # ---- the inbox sensors (analysis_wrapper.sensors) ----
    SENSOR_INTERVAL_S: int = Field(30, ge=1, description="Seconds between two ticks of an inbox sensor")
    SENSOR_START_STOPPED: bool = Field(
        False, description="1: the sensors start stopped (turn them on in the UI); 0: running"
    )
    SENSOR_MAX_RUNS_PER_TICK: int = Field(
        50, ge=1, description="Most runs one inbox sensor requests per tick; the rest wait in the registry"
    )
    SENSOR_BATCH_SIZE: int = Field(
        250,
        ge=1,
        description="Most jobs one sensor run holds (a batch run; a tick's jobs are shared evenly between "
        "its runs); 1: one run per job. A run costs 2-4 s through the daemon before its first job, a "
        "small job about 0.05 s inside one, so batches keep small jobs from waiting on Dagster",
    )
    SENSOR_RUN_SLOTS: int = Field(
        2,
        ge=1,
        description="Runs one tick shares its jobs between at the least (when it has that many): the runs "
        "the daemon starts at once (dagster.yaml's max_concurrent_runs), so a burst keeps every slot busy",
    )
    BACKFILL_PARTITIONS_PER_RUN: int = Field(
        100,
        ge=1,
        description="Most partitions one run of a UI backfill holds (the result asset's BackfillPolicy); 1: "
        "one run per partition. A run costs 2-4 s before its first job, a small job about 0.04 s inside one",
    )
    SENSOR_MAX_QUEUED_RUNS: int = Field(
        200, ge=0, description="Request no more while this many runs of the analysis are queued (0: no limit)"
    )
    SENSOR_MAX_FILES_PER_TICK: int = Field(
        1000, ge=1, description="Most inbox files one tick reads; the rest wait for the next tick"
    )
    SENSOR_TICK_BUDGET_S: float = Field(
        30.0, gt=0, description="Seconds a tick may spend reading files (Dagster stops a tick at 60 s)"
    )
    INBOX_SETTLE_S: float = Field(
        10.0, ge=0, description="A broken inbox file younger than this may be half-written: kept for later"
    )
    MAX_JOB_FILE_BYTES: int = Field(
        1 << 20, ge=1, description="A job file larger than this is rejected without being read (CLI, inbox)"
    )
    MAX_ATTEMPTS: int = Field(3, ge=1, description="Runs a failing job gets before it stays failed")
    RETRY_DELAY_S: float = Field(
        60.0, ge=0, description="Delay before the first retry; it doubles with every further attempt"
    )
    RERUN_ON_NEW_VERSION: bool = Field(
        True, description="1: a new analysis version makes every registered job of it due again"
    )
    RUN_MAX_RUNTIME_S: int | None = Field(
        None,
        ge=1,
        description="Seconds a sensor run may take per job (a batch: times its jobs); longer runs are "
        "failed by Dagster run monitoring (and retried)",
    )
    SENSOR_AUDIT_AFTER_S: float = Field(
        60.0, ge=0, description="Queued/running jobs unchanged this long are checked against their run"
    )
    # ---- S3 requests (results, S3 inputs, the S3 inbox): every wait is bounded ----
    S3_CONNECT_TIMEOUT_S: float = Field(10.0, gt=0, description="Seconds to open a connection to S3")
    S3_READ_TIMEOUT_S: float = Field(
        30.0, gt=0, description="Seconds to wait for S3 to answer on an open connection, per attempt"
    )
    S3_MAX_ATTEMPTS: int = Field(3, ge=1, description="Tries of one S3 request (the first included)")
    S3_RETRY_MODE: Literal["standard", "adaptive", "legacy"] = Field(
        "standard", description="botocore's retry mode for S3 requests"
    )
    SCRATCH_ROOT: Path | None = Field(
        None,
        description="Where analyses write before results are stored (inside an analysis-wrapper-scratch "
        "folder); default: the temp folder (TMPDIR)",
    )
    STORE_BUSY_TIMEOUT_S: float = Field(
        30.0,
        gt=0,
        description="Seconds a write to the SQLite store waits for another process's lock before it fails "
        "with 'database is locked'",
    )
    LEASE_TTL_S: float = Field(
        60.0,
        gt=0,
        description="A run's leases (the fingerprint it computes, its heartbeat) are renewed every third of "
        "this; one not renewed for this long marks its run dead",
    )

    @property
    def dagster_home(self) -> Path:
        return Path(self.DAGSTER_HOME or os.environ.get("DAGSTER_HOME") or ".dagster_home").absolute()

    @property
    def analysis_modules(self) -> list[str]:
        return [name.strip() for name in self.ANALYSIS_MODULES.split(",") if name.strip()]

    @property
    def sqlite_path(self) -> Path:
        return self.dagster_home / "analysis_records.sqlite"

    @property
    def sensor(self) -> SensorSettings:
        """The inbox and run-end sensors' group of these settings."""
        return SensorSettings.model_validate(self, from_attributes=True)


def _setting(name: str) -> Any:
    """A field that is the setting ``name``: read from that attribute of :class:`Settings`, and with
    its default (validated there, so its bounds are not repeated)."""
    return Field(Settings.model_fields[name].default, validation_alias=name)


class SensorSettings(BaseModel):
    """What the sensors take from :class:`Settings` (``settings.sensor``), under the sensors' names.

    Each field's alias is its setting, so the group is derived, not copied; tests and benchmarks
    build one by field name, with the settings' defaults for the rest."""

    model_config = ConfigDict(frozen=True, validate_by_name=True, validate_by_alias=True)

    inbox: str = _setting("DISPATCH_INBOX")
    interval_s: int = _setting("SENSOR_INTERVAL_S")
    start_stopped: bool = _setting("SENSOR_START_STOPPED")
    max_runs_per_tick: int = _setting("SENSOR_MAX_RUNS_PER_TICK")
    batch_size: int = _setting("SENSOR_BATCH_SIZE")
    run_slots: int = _setting("SENSOR_RUN_SLOTS")
    max_queued_runs: int = _setting("SENSOR_MAX_QUEUED_RUNS")
    max_files_per_tick: int = _setting("SENSOR_MAX_FILES_PER_TICK")
    tick_budget_s: float = _setting("SENSOR_TICK_BUDGET_S")
    settle_s: float = _setting("INBOX_SETTLE_S")
    max_attempts: int = _setting("MAX_ATTEMPTS")
    retry_delay_s: float = _setting("RETRY_DELAY_S")
    rerun_on_new_version: bool = _setting("RERUN_ON_NEW_VERSION")
    run_max_runtime_s: int | None = _setting("RUN_MAX_RUNTIME_S")
    audit_after_s: float = _setting("SENSOR_AUDIT_AFTER_S")
    lease_ttl_s: float = _setting("LEASE_TTL_S")
    max_job_file_bytes: int = _setting("MAX_JOB_FILE_BYTES")
    reconcile_page: int = 5000
    """Registry jobs one tick re-fingerprints after a version change (about 0.3 s); not a setting."""

    @property
    def default_status(self) -> DefaultSensorStatus:
        return DefaultSensorStatus.STOPPED if self.start_stopped else DefaultSensorStatus.RUNNING

    def retry_delay(self, attempts: int) -> dt.timedelta:
        """How long a job that failed after ``attempts`` attempts waits: doubling from RETRY_DELAY_S."""
        return dt.timedelta(seconds=self.retry_delay_s * 2 ** max(attempts - 1, 0))


BOOL_VALUES = "1, 0, true, false, yes, no, on, off"


class SettingsError(AnalysisWrapperError, ValueError):
    """A setting (environment variable or ``settings.env`` / ``.env`` line) holds a value it cannot take.

    The message names every bad variable, the value given (never for a secret) and what is allowed,
    in one line each, so the CLI shows it instead of pydantic's traceback."""


def load_settings(**values: Any) -> Settings:
    """:class:`Settings` from the environment and the settings files, or a :class:`SettingsError`."""
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    """One line per bad setting: its name, the value given (``***`` for a secret) and what is allowed."""
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        field = Settings.model_fields.get(name)
        secret = field is not None and "SecretStr" in str(field.annotation)
        given = "***" if secret else repr(error.get("input"))
        allowed = (
            f" (allowed: {BOOL_VALUES}, or empty for the default)" if error["type"] == "bool_parsing" else ""
        )
        lines.append(f"setting {name}={given} is invalid: {error['msg']}{allowed}")
    return "; ".join(lines) + " (from the environment, settings.env or .env)"


def redact_uri(uri: str) -> str:
    """A connection URI safe to log or show: user and password replaced by ``***``.

    Works on the raw text, not a parsed URL, so a password holding an unescaped ``/`` or ``:``
    cannot fool it: everything between ``scheme://`` and the last ``@`` before the query goes.
    """
    return _CREDENTIALS.sub(r"\1***@", uri)
