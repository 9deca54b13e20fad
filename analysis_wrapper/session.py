"""A session outside the code server: settings, analyses, definitions, the record store and the Dagster
instance of ``DAGSTER_HOME``, opened once for a CLI command, a notebook or a test, on the same parts the
code location uses. The instance folder is created once, under a lock, when several sessions start together.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, Definitions, RunsFilter

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.code_location import build_analysis_set, build_definitions
from analysis_wrapper.factory import AnalysisDefinitions
from analysis_wrapper.settings import Settings, load_settings
from analysis_wrapper.store.base import Store


@dataclass
class Session:
    """What every command needs, built once: settings, analyses, definitions (and their resources:
    ``store``, ``s3``, ``runtime``), the store, the instance."""

    settings: Settings
    analyses: dict[str, Analysis[Any, Any]]
    built: dict[str, AnalysisDefinitions]
    defs: Definitions
    resources: Mapping[str, Any]
    store: Store
    instance: DagsterInstance

    @classmethod
    def of(
        cls,
        settings: Settings,
        instance: DagsterInstance,
        analyses: list[Analysis[Any, Any]] | None = None,
    ) -> Session:
        """A session on ``settings`` and ``instance``, serving ``analyses`` (default: every analysis
        served, as the code location finds them)."""
        built = build_analysis_set(analyses, settings)
        defs = build_definitions(settings=settings, built=built)
        assert defs.resources is not None
        return cls(
            settings=settings,
            analyses={name: d.analysis for name, d in built.items()},
            built=built,
            defs=defs,
            resources=defs.resources,
            store=defs.resources["store"].get_store(),
            instance=instance,
        )


def open_session() -> Session:
    """Settings, analyses, definitions, store and the Dagster instance of ``DAGSTER_HOME`` (default
    ``./.dagster_home``); a bad setting is a :class:`SettingsError` naming it."""
    home = Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").absolute()
    settings = load_settings()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    return Session.of(settings, open_instance(home))


def open_instance(home: Path) -> DagsterInstance:
    """The Dagster instance in ``home``, created once even when several sessions start at once.

    A first start writes the shipped instance config (queued runs, concurrency limits, telemetry off,
    so that `dagster dev` on the same DAGSTER_HOME behaves as the README says) and creates Dagster's
    SQLite schemas; two processes doing that together break the folder for good (two alembic heads),
    so the first start holds a lock file and the others wait for it.
    """
    home.mkdir(parents=True, exist_ok=True)  # the first of several starting together makes it
    with open(home / ".analysis_wrapper.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            instance_yaml = home / "dagster.yaml"
            if not instance_yaml.exists():
                shipped = Path(__file__).resolve().parent.parent / "dagster_home" / "dagster.yaml"
                text = shipped.read_text() if shipped.is_file() else "telemetry:\n  enabled: false\n"
                partial = instance_yaml.with_name(f".dagster.yaml.{os.getpid()}")
                partial.write_text(text)
                partial.replace(instance_yaml)
            instance = DagsterInstance.get()
            instance.get_runs_count(RunsFilter(run_ids=["-"]))  # creates the storage schemas, under the lock
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return instance
