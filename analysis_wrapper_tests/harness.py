"""Helpers many test modules share: job files for the test analyses, settings, git work trees, and an
in-process Dagster harness (``Harness``: definitions, an ephemeral instance and the record store).
The fixtures that hand them out live in ``conftest.py``; test modules import the helpers from here."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, Definitions

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.batch import batch_run_config
from analysis_wrapper.code_location import build_analysis_set, build_resources
from analysis_wrapper.registration import find_job_files, prepare_files, register
from analysis_wrapper.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_examples_module() -> Any:
    """The shipped example generator (``examples/make_examples.py``)."""
    from examples import make_examples

    return make_examples


def git_repo(path: Path, dirty: bool) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    run = lambda *a: subprocess.run(["git", "-C", str(path), *a], check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    run("config", "user.email", "t@example.org")
    run("config", "user.name", "test")
    (path / "code.py").write_text("x = 1\n")
    run("add", "code.py")
    run("commit", "-qm", "init")
    if dirty:
        (path / "code.py").write_text("x = 2\n")
    return path


def write_job(folder: Path, inputs: Sequence[Path | str], analysis: str = "echo", **params: Any) -> Path:
    """An AIND-format job file for the test analyses."""
    folder.mkdir(parents=True, exist_ok=True)
    job = {
        "s3_location": [str(p) for p in inputs],
        "asset_name": [Path(str(p)).stem for p in inputs],
        "docdb_record_id": [str(uuid.uuid4()) for _ in inputs],
        "file_location": None,
        "distributed_parameters": None,
        "group_metadata": None,
        "query": None,
        "analysis_code": {
            "url": "https://example.org/code",
            "parameters": {"analysis_name": analysis, **params},
        },
    }
    path = folder / f"{uuid.uuid4()}.json"
    path.write_text(json.dumps(job))
    return path


@dataclass
class Harness:
    """Definitions + ephemeral instance + store, for in-process materializations."""

    settings: Settings
    defs: Definitions
    built: dict[str, Any]
    instance: DagsterInstance
    resources: dict[str, Any]

    @property
    def store(self) -> Any:
        return self.resources["store"].get_store()

    def submit(self, paths: Sequence[Path]) -> list[Any]:
        files, missing = find_job_files(paths)
        prepared = prepare_files(files, {n: d.analysis for n, d in self.built.items()})
        assert not missing and not prepared.rejected, prepared.rejected
        jobs = []
        for name, analysis_jobs in prepared.jobs.items():
            register(analysis_jobs, self.built[name].analysis, self.store, self.instance)
            jobs.extend(analysis_jobs)
        return jobs

    def run_batch(self, analysis: str, keys: Sequence[str], **config: Any) -> Any:
        """One batch run of ``keys`` (see analysis_wrapper.batch), in-process."""
        spec = self.built[analysis].analysis
        return self.defs.resolve_job_def(spec.batch_job_name).execute_in_process(
            instance=self.instance,
            run_config=batch_run_config(spec, list(keys), **config),
            raise_on_error=False,
        )

    def materialize(self, analysis: str, key: str, raise_on_error: bool = True, **config: Any) -> Any:
        spec = self.built[analysis].analysis
        job_def = self.defs.resolve_job_def(spec.job_name)
        return job_def.execute_in_process(
            instance=self.instance,
            partition_key=key,
            run_config={"ops": {spec.asset_name: {"config": config}}} if config else None,
            raise_on_error=raise_on_error,
        )


def make_settings(tmp_path: Path, code_repository: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "DAGSTER_HOME": tmp_path / "home",
        "RESULTS_ROOT": tmp_path / "results",
        "DRY_RUN_ROOT": tmp_path / "dry_run",
        "DRY_RUN": False,
        "CODE_REPOSITORY": code_repository,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def make_harness(settings: Settings, analyses: Sequence[Analysis[Any, Any]] | None = None) -> Harness:
    built = build_analysis_set(analyses)
    resources = build_resources(settings)
    defs = Definitions(
        assets=[d.asset for d in built.values()],
        jobs=[j for d in built.values() for j in (d.job, d.batch_job)],
        resources=resources,
    )
    return Harness(settings, defs, built, DagsterInstance.ephemeral(), resources)
