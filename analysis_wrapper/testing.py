"""Run an analysis on a generated job through the real path, for a team's own tests.

A test of an analysis should show more than that ``run`` returns: that a dispatched job reaches it,
that its ``Params`` take the job's parameters, that its ``Outputs`` and files are recorded and stored.
:func:`run_analysis_job` does what ``analysis-wrapper run job.json`` does, in the test's process and
inside a folder of the test's own:

1. writes an AIND-format job file for ``inputs`` and ``parameters`` (:func:`make_job_file`);
2. registers it (the job registry and the analysis's dynamic partition);
3. materializes its partition with the in-process runner the CLI uses
   (:mod:`analysis_wrapper.runner`): the Dagster asset, the commit, the provenance record;
4. returns the record, the validated ``Outputs`` and the result folder (:class:`JobResult`).

Everything lives under ``workdir`` (pytest's ``tmp_path``): the Dagster instance and the SQLite record
store (``workdir/dagster_home``), the results (``workdir/results``). The settings are given in code, not
read from the environment or a ``settings.env``: a developer's ``DOCDB_URI`` or ``ANALYSIS_BUCKET`` never
reaches a test. Results are posted (``DRY_RUN=0``) from any code state (``ALLOW_DIRTY=1``: a test runs
uncommitted code by nature; the record says ``git_dirty``)::

    from analysis_wrapper.testing import run_analysis_job
    from my_team.spike_rate import analysis

    def test_spike_rate(tmp_path):
        data = tmp_path / "session.nwb"
        data.write_bytes(b"...")
        result = run_analysis_job(analysis, [data], tmp_path, parameters={"bin_s": 0.5})
        assert result.outputs.n_units == 3
        assert (result.result_dir / "rates.csv").is_file()

A second call with the same ``workdir``, inputs and parameters finds the job recorded
(``outcome == "already done"``, nothing computed), as a deployment would.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import DagsterInstance
from pydantic import BaseModel
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.errors import AnalysisWrapperError
from analysis_wrapper.job_file import AnalysisJob
from analysis_wrapper.registration import prepare_files, register
from analysis_wrapper.runner import RunOptions, run_jobs
from analysis_wrapper.session import Session
from analysis_wrapper.settings import Settings
from analysis_wrapper.store.base import JobState

__all__ = ["JobResult", "JobRunError", "make_job_file", "run_analysis_job", "settings_under"]


_INSTANCE = {"telemetry": {"enabled": False}}
"""The test instance's settings: no telemetry from a test."""


class JobRunError(AnalysisWrapperError, AssertionError):
    """The job was rejected or failed; the message says why (the job file's field, or the run's error
    and where its full log is). An ``AssertionError``, so pytest shows it as a test failure."""


@dataclass(frozen=True)
class JobResult:
    """What became of one job run by :func:`run_analysis_job`.

    ``outcome``: ``done`` (computed and recorded now), ``already done`` (recorded before) or
    ``failed``; ``detail`` says where or why. ``record`` is the provenance record as stored,
    ``outputs`` the analysis's ``Outputs`` read back from it, ``result_dir`` the stored result folder
    (its files, ``outputs.json`` and ``metadata.nd.json``), ``state`` the job's registry state.
    """

    outcome: str
    detail: str | None
    job: AnalysisJob
    record: dict[str, Any] | None
    outputs: Any
    result_dir: Path | None
    state: JobState | None


class _CodeSettings(Settings):
    """:class:`Settings` from the values given in code only: no environment, no settings files."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def settings_under(workdir: Path, **overrides: Any) -> Settings:
    """The settings :func:`run_analysis_job` runs with: everything under ``workdir``, results posted
    from any code state, nothing read from the environment; ``overrides`` (setting names) on top."""
    workdir = Path(workdir).absolute()
    values: dict[str, Any] = {
        "DAGSTER_HOME": workdir / "dagster_home",
        "RESULTS_ROOT": workdir / "results",
        "DRY_RUN_ROOT": workdir / "results_dry_run",
        "SCRATCH_ROOT": workdir / "scratch",
        "DISPATCH_INBOX": str(workdir / "dispatch_inbox"),
        "DISPATCH_QUERIES": str(workdir / "dispatch_queries"),
        "DRY_RUN": False,
        "ALLOW_DIRTY": True,
        "SENSOR_START_STOPPED": True,
        **overrides,
    }
    return _CodeSettings(**values)


def make_job_file(
    folder: Path,
    inputs: Sequence[Path | str],
    analysis_name: str,
    parameters: Mapping[str, Any] | None = None,
    distributed_parameters: Mapping[str, Any] | None = None,
) -> Path:
    """Write an AIND-format job file (the dispatcher's ``AnalysisDispatchModel`` JSON) into ``folder``:
    one input per entry of ``inputs`` (local paths or ``s3://`` URIs), ``parameters`` as the job's
    ``analysis_code.parameters``. Its path; feed it to :func:`run_analysis_job`'s path or the CLI."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    locations = [str(Path(i).absolute()) if "://" not in str(i) else str(i) for i in inputs]
    job = {
        "s3_location": locations,
        "asset_name": [Path(str(i)).name for i in inputs],
        "docdb_record_id": [str(uuid.uuid5(uuid.NAMESPACE_URL, loc)) for loc in locations],
        "file_location": None,
        "distributed_parameters": dict(distributed_parameters) if distributed_parameters else None,
        "group_metadata": None,
        "query": None,
        "analysis_code": {
            "object_type": "Code",
            "url": "https://example.org/analysis-wrapper-testing",
            "parameters": {"analysis_name": analysis_name, **(parameters or {})},
        },
    }
    path = folder / f"{uuid.uuid4()}.json"
    path.write_text(json.dumps(job, indent=2))
    return path


def run_analysis_job(
    analysis: Analysis[Any, Any],
    inputs: Sequence[Path | str],
    workdir: Path,
    parameters: Mapping[str, Any] | None = None,
    *,
    force: bool = False,
    check: bool = True,
    settings: Settings | None = None,
) -> JobResult:
    """Run ``analysis`` on one generated job with ``inputs`` and ``parameters``, as
    ``analysis-wrapper run`` does, under ``workdir``; see the module docstring.

    ``force`` runs it even when recorded. ``check`` (default) raises :class:`JobRunError` when the job
    file is rejected (e.g. an unknown parameter name) or the job fails; ``check=False`` returns the
    failed :class:`JobResult` instead (a rejected file still raises). ``settings`` replaces
    :func:`settings_under` (e.g. ``settings_under(tmp_path, DRY_RUN=True)``).
    """
    workdir = Path(workdir).absolute()
    settings = settings or settings_under(workdir)
    job_file = make_job_file(workdir / "jobs", inputs, analysis.name, parameters)
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    with DagsterInstance.local_temp(str(settings.dagster_home), _INSTANCE) as instance:
        session = Session.of(settings, instance, [analysis])
        prepared = prepare_files([job_file], session.analyses, analysis.name, settings.MAX_JOB_FILE_BYTES)
        if prepared.rejected:
            raise JobRunError(prepared.rejected[0].message)
        [job] = prepared.all_jobs()
        register([job], analysis, session.store, instance)
        [done] = run_jobs(session, [job], RunOptions(force=force, dry_run=settings.DRY_RUN, batch_size=1))
        if check and done.outcome not in ("done", "already done", "dry run"):
            raise JobRunError(f"{analysis.name} {job.partition_key}: {done.outcome}: {done.detail}")
        record = session.store.get_record(analysis.name, job.fingerprint)
        entry = session.store.get_job(analysis.name, job.partition_key)
    outputs = _outputs(analysis, record)
    location = (record or {}).get("location")
    return JobResult(
        outcome=done.outcome,
        detail=done.detail,
        job=job,
        record=record,
        outputs=outputs,
        result_dir=Path(location) if location and "://" not in location else None,
        state=entry.state if entry is not None else None,
    )


def _outputs(analysis: Analysis[Any, Any], record: Mapping[str, Any] | None) -> BaseModel | None:
    """The analysis's ``Outputs`` as recorded (``output_parameters`` of the record's data process)."""
    if record is None:
        return None
    process = record["processing"]["data_processes"][0]
    return analysis.outputs.model_validate(process.get("output_parameters") or {})
