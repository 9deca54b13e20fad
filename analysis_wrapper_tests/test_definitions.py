"""Resources are picked from settings in one place, and secrets stay out of resource config."""

from __future__ import annotations

from pathlib import Path

from dagster import EnvVar

from analysis_wrapper.code_location import build_definitions, build_resources
from analysis_wrapper.resources.results_resources import LocalResultsResource
from analysis_wrapper.resources.s3_storage import S3ResultsStorage
from analysis_wrapper.settings import Settings


def test_embedded_defaults(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, DAGSTER_HOME=tmp_path / "home")  # type: ignore[call-arg]
    resources = build_resources(settings)
    assert resources["store"].backend == "sqlite"
    assert resources["store"].sqlite_path == str(tmp_path / "home" / "analysis_records.sqlite")
    assert resources["runtime"].dry_run is True  # DRY_RUN=1 by default, as in the capsule
    assert isinstance(resources["results_io_manager"].results, LocalResultsResource)


def test_cloud_settings_pick_pymongo_and_s3_without_exposing_the_password(
    tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    uri = "mongodb://writer:t0ps3cret@docdb.example.org:27017/?tls=true"
    monkeypatch.setenv("DOCDB_URI", uri)  # restored after the test
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        DOCDB_TLS=True,
        DOCDB_TLS_CA_FILE="/etc/ssl/global-bundle.pem",
        ANALYSIS_BUCKET="results-bucket/analyses/isi",
        AWS_ENDPOINT_URL="http://127.0.0.1:9",
    )
    resources = build_resources(settings)
    records = resources["store"]
    assert records.backend == "mongodb" and records.tls is True
    assert isinstance(records.uri, EnvVar) and records.uri == "DOCDB_URI"
    assert "t0ps3cret" not in repr(records) and "t0ps3cret" not in repr(resources["results_io_manager"])
    storage = resources["results_io_manager"].results.results()
    assert isinstance(storage, S3ResultsStorage)
    assert storage.uri("f" * 64) == f"s3://results-bucket/analyses/isi/{'f' * 64}"
    assert storage.client.meta.endpoint_url == "http://127.0.0.1:9"
    build_definitions(settings=settings)  # the code location loads with cloud settings too
    store = records.get_store()  # used outside a run (CLI), the EnvVar is resolved, not taken literally
    assert store.uri == "mongodb://***@docdb.example.org:27017/?tls=true"


def test_an_empty_variable_means_the_default_and_the_sensors_read_their_group(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for name in ("DRY_RUN", "SCRATCH_ROOT", "RUN_MAX_RUNTIME_S", "DOCDB_URI", "SENSOR_INTERVAL_S"):
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("INBOX_SETTLE_S", "2.5")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.DRY_RUN, settings.SCRATCH_ROOT, settings.RUN_MAX_RUNTIME_S) == (True, None, None)
    assert settings.DOCDB_URI is None
    sensor = settings.sensor
    assert (sensor.interval_s, sensor.settle_s, sensor.inbox) == (30, 2.5, "dispatch_inbox")


def test_every_job_runs_its_steps_in_the_run_worker(tmp_path: Path) -> None:
    """The UI's materializations and backfills run Dagster's own asset job: it too must not start a
    process per step (about 2.5 s before a run's first job)."""
    defs = build_definitions(settings=Settings(DAGSTER_HOME=tmp_path / "home", RESULTS_ROOT=tmp_path / "r"))
    jobs = [
        defs.resolve_implicit_global_asset_job_def(),
        *(defs.resolve_job_def(j.name) for j in defs.jobs or []),
    ]
    assert {job.executor_def.name for job in jobs} == {"in_process"}, [
        (j.name, j.executor_def.name) for j in jobs
    ]
