"""What every ``analysis-wrapper`` command opens first: settings, analyses, definitions, the store and
the Dagster instance (created once, under a lock, when several commands start together). Its own
module so that commands living elsewhere (``dispatching/cli.py``) open the same way without importing
the CLI that imports them."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis_wrapper.settings import Settings, load_settings


@dataclass
class Context:
    """What every command needs, built once: settings, analyses, definitions, store, instance."""

    settings: Settings
    analyses: dict[str, Any]
    built: dict[str, Any]
    defs: Any
    store: Any
    instance: Any


def open_context(args: argparse.Namespace) -> Context:
    """Settings, analyses, definitions, store and the Dagster instance of ``DAGSTER_HOME`` (default
    ``./.dagster_home``), for one command."""
    # The CLI keeps its Dagster instance in ./.dagster_home unless DAGSTER_HOME says otherwise.
    home = Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").absolute()
    settings = load_settings()  # first: importing the definitions reads the settings too
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)

    from analysis_wrapper.definitions import build_analysis_set, build_definitions

    built = build_analysis_set(settings=settings)
    defs = build_definitions(settings, built=built)
    assert defs.resources is not None
    return Context(
        settings=settings,
        analyses={name: d.analysis for name, d in built.items()},
        built=built,
        defs=defs,
        store=defs.resources["store"].get_store(),
        instance=open_instance(home),
    )


def open_instance(home: Path) -> Any:
    """The Dagster instance in ``home``, created once even when several commands start at once.

    A first start writes the shipped instance config (queued runs, concurrency limits, telemetry off,
    so that `dagster dev` on the same DAGSTER_HOME behaves as the README says) and creates Dagster's
    SQLite schemas; two processes doing that together break the folder for good (two alembic heads),
    so the first start holds a lock file and the others wait for it.
    """
    import fcntl

    from dagster import DagsterInstance, RunsFilter

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
