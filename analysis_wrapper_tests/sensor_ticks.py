"""Sensor ticks in-process, for the sensor tests (``test_sensors``, ``faults/test_bad_input``): definitions
with the inbox and run-end sensors over an ephemeral instance, ticks that carry their cursor on, and the
runs they request executed as the daemon would launch them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, Definitions, SensorResult, build_sensor_context

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.code_location import build_analysis_set, build_resources
from analysis_wrapper.sensors import SensorSettings, build_inbox_sensor, build_run_end_sensors
from analysis_wrapper.store.base import JobEntry, JobState, Store
from analysis_wrapper_tests.harness import make_settings, write_job
from analysis_wrapper_tests.sample_analyses import echo

SUMMARIES: list[str] = []
"""Each tick's summary line, kept by ``test_sensors``' ``capture_summaries`` fixture."""

DEFAULTS = {
    "batch_size": 1,  # one run per job unless a test is about batches
    "max_queued_runs": 0,
    "settle_s": 5.0,
    "retry_delay_s": 100.0,
    "audit_after_s": 60.0,
}


class Env:
    """Definitions with sensors, an ephemeral instance, and ticks that carry their cursor on."""

    def __init__(
        self,
        tmp_path: Path,
        repo: Path,
        analyses: Sequence[Analysis[Any, Any]] = (echo,),
        inbox: str | None = None,
        endpoint: str | None = None,
        instance: DagsterInstance | None = None,
        **config: Any,
    ) -> None:
        self.tmp_path = tmp_path
        self.inbox = inbox or str(tmp_path / "inbox")
        self.settings = make_settings(tmp_path, repo, DISPATCH_INBOX=self.inbox, AWS_ENDPOINT_URL=endpoint)
        self.config = SensorSettings(inbox=self.inbox, **{**DEFAULTS, **config})
        self.built = build_analysis_set(analyses)
        self.served = {name: d.analysis for name, d in self.built.items()}
        self.sensors = {
            name: build_inbox_sensor(d, self.served, self.config) for name, d in self.built.items()
        }
        self.run_end_sensors = build_run_end_sensors(self.built, self.config)
        self.runs_handled = 0
        self.resources = build_resources(self.settings)
        self.defs = Definitions(
            assets=[d.asset for d in self.built.values()],
            jobs=[j for d in self.built.values() for j in (d.job, d.batch_job)],
            sensors=[*self.sensors.values(), *self.run_end_sensors],
            resources=self.resources,
        )
        self.instance = instance or DagsterInstance.ephemeral()
        self.cursors: dict[str, str | None] = {}
        self.last_summary = ""

    @property
    def store(self) -> Store:
        return self.resources["store"].get_store()

    @property
    def root(self) -> Path:
        return Path(self.inbox)

    def drop(
        self, folder: str = "", analysis: str = "echo", where: Path | None = None, **params: Any
    ) -> Path:
        """A job file in the (local) inbox, or in ``where``."""
        inputs = [self.settings.CODE_REPOSITORY / "code.py"]  # type: ignore[operator]
        target = where or (self.root / folder if folder else self.root)
        return write_job(target, inputs, analysis=analysis, **params)

    def tick(self, analysis: str = "echo") -> SensorResult:
        sensor = self.sensors[analysis]
        with build_sensor_context(
            instance=self.instance,
            cursor=self.cursors.get(sensor.name),
            definitions=self.defs,
            resources=self.resources,
            sensor_name=sensor.name,
        ) as context:
            result = sensor(context)
        assert isinstance(result, SensorResult)
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        self.cursors[sensor.name] = result.cursor
        self.last_summary = SUMMARIES[-1] if SUMMARIES else ""
        return result

    def run_events(self) -> str:
        """A tick of each run-end sensor (Dagster's run failure, then run cancel sensor): how many jobs
        each marked failed, as ``<n> job(s) marked failed, <m> canceled``; ``runs_handled`` counts the
        runs the sensors handled (each run event is handled once)."""
        counts, self.runs_handled = [], 0
        for sensor in self.run_end_sensors:
            before = self.failed_jobs()
            with build_sensor_context(
                instance=self.instance,
                cursor=self.cursors.get(sensor.name),
                definitions=self.defs,
                resources=self.resources,
                sensor_name=sensor.name,
            ) as context:
                data = sensor.evaluate_tick(context)
            assert data.cursor is not None
            self.cursors[sensor.name] = data.cursor
            self.runs_handled += len(data.dagster_run_reactions or [])
            counts.append(len(self.failed_jobs() - before))
        return f"{counts[0]} job(s) marked failed, {counts[1]} canceled"

    def failed_jobs(self) -> set[tuple[str, int, str | None, str | None]]:
        return {
            (e.partition_key, e.attempts, e.run_id, e.last_error)
            for e in self.store.find_jobs("echo", states=[JobState.FAILED], limit=10_000)
        }

    def execute(self, request: Any, analysis: str = "echo") -> Any:
        """Run a requested run in-process, as the daemon would launch it."""
        job_def = self.defs.resolve_job_def(request.job_name or self.built[analysis].analysis.job_name)
        return job_def.execute_in_process(
            instance=self.instance,
            partition_key=request.partition_key,
            run_config=request.run_config or None,
            tags=request.tags,
            raise_on_error=False,
        )

    def job(self, key: str, analysis: str = "echo") -> JobEntry:
        entry = self.store.get_job(analysis, key)
        assert entry is not None, key
        return entry

    def states(self, analysis: str = "echo") -> dict[str, str]:
        return {e.partition_key: e.state.value for e in self.store.list_jobs(analysis)}
