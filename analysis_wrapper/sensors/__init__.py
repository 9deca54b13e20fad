"""Sensor-driven automatic runs: one inbox sensor per analysis, and Dagster's run status sensors.

* :mod:`~analysis_wrapper.sensors.inbox_sensor` — the inbox sensor's tick, step by step;
* :mod:`~analysis_wrapper.sensors.intake` — new inbox files into registered jobs;
* :mod:`~analysis_wrapper.sensors.recovery` — lost runs and jobs that lost their run;
* :mod:`~analysis_wrapper.sensors.run_events` — run failures and cancels into job failures;
* :mod:`~analysis_wrapper.sensors.runs` — what a Dagster run of an analysis holds, and run keys.

Their settings are :class:`~analysis_wrapper.settings.SensorSettings` (``Settings.sensor``).
"""

from __future__ import annotations

from collections.abc import Mapping

from dagster import SensorDefinition

from analysis_wrapper.factory import AnalysisDefinitions
from analysis_wrapper.sensors.inbox_sensor import InboxCursor, Tick, build_inbox_sensor
from analysis_wrapper.sensors.run_events import (
    RUN_CANCELS_SENSOR_NAME,
    RUN_FAILURES_SENSOR_NAME,
    build_run_end_sensors,
)
from analysis_wrapper.sensors.runs import UNFINISHED_RUN, run_partition_keys
from analysis_wrapper.settings import SensorSettings

__all__ = [
    "RUN_CANCELS_SENSOR_NAME",
    "RUN_FAILURES_SENSOR_NAME",
    "UNFINISHED_RUN",
    "InboxCursor",
    "SensorSettings",
    "Tick",
    "build_inbox_sensor",
    "build_run_end_sensors",
    "build_sensors",
    "run_partition_keys",
]


def build_sensors(built: Mapping[str, AnalysisDefinitions], config: SensorSettings) -> list[SensorDefinition]:
    """One inbox sensor per analysis, and the run-end sensors."""
    served = {name: d.analysis for name, d in built.items()}
    sensors = [build_inbox_sensor(d, served, config) for d in built.values()]
    return sensors + (build_run_end_sensors(built, config) if built else [])
