"""Materialize all from the UI's dialog (issue 20): partitions registered but never run, beside recorded
ones, backfilled from the asset page's Materialize dialog with every partition selected, are each
recorded in fewer runs than partitions (the asset's BackfillPolicy cuts the backfill into ranges of
``BACKFILL_PARTITIONS_PER_RUN``, set small by ``ui_server``).

It runs on the package's shared ``dagster dev`` (posting: ``DRY_RUN=0``), after ``test_ui.py`` (pytest
runs modules in name order): it records new results, which the summary test must not see yet.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from typing import Any

import pytest

from analysis_wrapper.batch import OUTCOME_TAG
from analysis_wrapper_tests.browser.ui_pages import ASSET, Ui, describe_run, job_states, shot
from analysis_wrapper_tests.browser.ui_server import BACKFILL_PARTITIONS_PER_RUN, BIN, REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

N_NEW = 3
SENSOR = "isi_violations_inbox_sensor"


def _stop_inbox_sensor(ui: Ui) -> None:
    """Stop the inbox sensor (it requests runs for pending jobs itself) and wait out a tick in flight,
    so the new partitions stay pending until the backfill runs them."""
    from dagster import DagsterInstance
    from dagster._core.scheduler.instigation import InstigatorStatus, TickStatus

    argv = [str(BIN / "dagster"), "sensor", "stop", SENSOR, "-w", "workspace.yaml"]
    done = subprocess.run(argv, cwd=REPO_ROOT, env=ui.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    deadline = time.monotonic() + 30
    with DagsterInstance.from_config(str(ui.home)) as instance:
        (state,) = [s for s in instance.all_instigator_state() if s.name == SENSOR]
        assert state.status == InstigatorStatus.STOPPED
        while time.monotonic() < deadline:
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
            if not ticks or ticks[0].status != TickStatus.STARTED:
                return
            time.sleep(0.2)
    pytest.fail(f"{SENSOR}'s last tick did not end")


def _register_new_jobs(ui: Ui) -> list[str]:
    """Register ``N_NEW`` more example jobs without running them (``analysis-wrapper submit``): new
    partitions, pending; their keys."""
    from analysis_wrapper_tests.harness import load_examples_module

    root = ui.home.parent
    load_examples_module().write_examples(root / "new", n_jobs=N_NEW, seed=4)
    before = {job["partition_key"] for job in ui.jobs}
    done = subprocess.run(
        [str(BIN / "analysis-wrapper"), "submit", "new/jobs"],
        cwd=root,
        env=ui.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    keys = re.findall(r"^registered isi_violations (\S+) ", done.stdout, re.MULTILINE)
    assert len(keys) == N_NEW and not before & set(keys), done.stdout
    assert set(job_states(ui.env, keys).values()) == {"pending"}
    return keys


def _backfill_runs(ui: Ui, backfill_id: str, keys: list[str], timeout_s: float = 180) -> list[Any]:
    """Once every key is recorded (record and job state ``done``) and the backfill's runs have ended:
    its runs."""
    from dagster import DagsterInstance, RunsFilter

    from analysis_wrapper_tests.browser.ui_pages import records

    deadline = time.monotonic() + timeout_s
    with DagsterInstance.from_config(str(ui.home)) as instance:
        while time.monotonic() < deadline:
            found = instance.get_run_records(RunsFilter(tags={"dagster/backfill": backfill_id}))
            runs = [r.dagster_run for r in found]
            ended = bool(runs) and all(run.is_finished for run in runs)
            recorded = set(keys) <= set(records(ui.env))
            if ended and recorded and set(job_states(ui.env, keys).values()) == {"done"}:
                return runs
            time.sleep(1)
    pytest.fail(f"backfill {backfill_id} did not record {keys} within {timeout_s:.0f} s:\n{ui.server.tail()}")


def test_materialize_all_from_the_dialog_records_every_partition_in_fewer_runs(ui: Ui) -> None:
    """3 recorded and 3 new partitions, all selected in the dialog: every one recorded, in 2 runs (ranges
    of 4), the new ones by the backfill's runs."""
    page = ui.page
    _stop_inbox_sensor(ui)
    new = _register_new_jobs(ui)
    keys = [job["partition_key"] for job in ui.jobs] + new

    ui.goto(f"/assets/{ASSET}")
    page.get_by_role("button", name="Materialize…").first.click()
    dialog = page.locator(".dagster-dialog")
    dialog.get_by_role("button", name="All", exact=True).click()
    dialog.get_by_text(f"{len(keys)} partitions", exact=True).wait_for()
    per_run = (
        f"Backfills in multiple runs, with a maximum of {BACKFILL_PARTITIONS_PER_RUN} partitions per run."
    )
    dialog.get_by_text(per_run).wait_for()
    shot(ui, "backfill-dialog.png")
    dialog.get_by_role("button", name="Launch backfill").click()
    toast = page.get_by_text(re.compile(r"Created backfill \w+")).first
    toast.wait_for()
    found = re.search(r"Created backfill (\w+)", toast.inner_text())
    assert found, toast.inner_text()
    backfill_id = found.group(1)

    runs = _backfill_runs(ui, backfill_id, keys)

    assert [run.status.value for run in runs] == ["SUCCESS"] * len(runs), [describe_run(ui, r) for r in runs]
    assert len(runs) == math.ceil(len(keys) / BACKFILL_PARTITIONS_PER_RUN) < len(keys)
    # Ranges in the order registered: the recorded three and the first new one, then the other two.
    assert sorted(run.tags.get(OUTCOME_TAG) for run in runs) == ["1 recorded, 3 skipped", "2 recorded"]
    # Each new partition was run by the backfill (not by a sensor or another launch).
    from analysis_wrapper.store.sqlite import SqliteStore

    store = SqliteStore(ui.home / "analysis_records.sqlite")
    try:
        ran_by = {key: entry.run_id for key, entry in store.get_jobs("isi_violations", new).items()}
    finally:
        store.close()
    assert set(ran_by.values()) <= {run.run_id for run in runs}, ran_by
    # Its page (not waiting for "completed": the backfill daemon looks at a backfill every 30 s).
    ui.goto(f"/runs/b/{backfill_id}")
    page.get_by_text(f"{len(keys)} partitions", exact=True).first.wait_for()
    page.get_by_role("link", name=ASSET).first.wait_for()
    shot(ui, "backfill.png")
    page.get_by_role("tab", name="Runs").click()  # its runs, each saying what its range came to
    for run in runs:
        page.get_by_text(run.run_id[:8], exact=True).first.wait_for()
        page.get_by_text(f"{OUTCOME_TAG}: {run.tags[OUTCOME_TAG]}", exact=True).first.wait_for()
    shot(ui, "backfill-runs.png")
