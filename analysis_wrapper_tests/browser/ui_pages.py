"""What the browser tests read and do on the Dagster UI's pages, shared by their modules: the :class:`Ui`
the package's ``ui`` fixture gives (``conftest.py``), the record store and the runs behind the pages, and
the pages' own checks (a partition's recorded result, a check's latest execution for a partition).

Every helper waits for concrete text or elements, so a missing one fails the test that uses it.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import ViewportSize

from analysis_wrapper_tests.browser.ui_server import REPO_ROOT, UiServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(os.environ.get("SCREENSHOT_DIR") or REPO_ROOT / "docs" / "screenshots" / "latest")
VIEWPORT: ViewportSize = {"width": 1600, "height": 1000}
LOAD_MS = 30_000
ASSET = "isi_violations_result"


@dataclass
class Ui:
    server: UiServer
    env: dict[str, str]
    home: Path
    jobs: list[dict[str, Any]]
    broken_key: str
    """A partition whose figure was changed after it was recorded: its check fails (folder_complete)."""
    page: Any

    def goto(self, path: str) -> None:
        self.page.goto(self.server.url + path)

    def records(self) -> dict[str, dict[str, Any]]:
        return records(self.env)

    def job_state(self, key: str) -> str:
        return job_states(self.env, [key])[key]


def records(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The record store's isi_violations records, by partition key."""
    from analysis_wrapper.store.sqlite import SqliteStore

    store = SqliteStore(Path(env["DAGSTER_HOME"]) / "analysis_records.sqlite")
    try:
        return {r["analysis_wrapper"]["partition_key"]: r for r in store.find_records("isi_violations")}
    finally:
        store.close()


def job_states(env: dict[str, str], keys: Collection[str]) -> dict[str, str]:
    """The job registry's state of each of ``keys`` (a key it does not hold fails the test)."""
    from analysis_wrapper.store.sqlite import SqliteStore

    store = SqliteStore(Path(env["DAGSTER_HOME"]) / "analysis_records.sqlite")
    try:
        found = store.get_jobs("isi_violations", list(keys))
        assert set(found) == set(keys), f"not registered: {set(keys) - set(found)}"
        return {key: str(entry.state.value) for key, entry in found.items()}
    finally:
        store.close()


def graphql(ui: Ui, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    """An answer of the webserver's GraphQL endpoint (what the UI's pages read), for cross-checks."""
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(
        f"{ui.server.url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        data: dict[str, Any] = json.load(answer)
    assert not data.get("errors"), data
    return data["data"]


PARTITION_STATUSES = """query($key: AssetKeyInput!) { assetNodes(assetKeys: [$key]) {
  assetPartitionStatuses { ... on DefaultPartitionStatuses { materializedPartitions failedPartitions } }
} }"""


def partition_statuses(ui: Ui) -> tuple[set[str], set[str]]:
    """The result asset's materialized and failed partitions, as the Partitions tab colours them."""
    (node,) = graphql(ui, PARTITION_STATUSES, {"key": {"path": [ASSET]}})["assetNodes"]
    statuses = node["assetPartitionStatuses"]
    return set(statuses["materializedPartitions"]), set(statuses["failedPartitions"])


def shot(ui: Ui, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    ui.page.screenshot(path=str(SCREENSHOTS / name))


def open_partition(ui: Ui, key: str) -> Any:
    """The partition's panel on the asset's Partitions tab, once its metadata has loaded."""
    ui.goto(f"/assets/{ASSET}?view=partitions&partition={key}")
    ui.page.get_by_text("Latest materialization").first.wait_for()
    ui.page.get_by_text("fingerprint", exact=True).first.wait_for()
    return ui.page


def assert_result_shown(ui: Ui, key: str, record: dict[str, Any]) -> None:
    """The partition shows the recorded result: fingerprint, a link to its folder (whole on the page),
    the outputs table, the git commit, and the figure one click away, rendered as an image."""
    page = open_partition(ui, key)
    fingerprint = record["_id"]
    assert page.get_by_text(fingerprint, exact=True).first.is_visible()
    link = page.locator(f'a[href="{Path(record["location"]).as_uri()}"]').first
    link.wait_for()
    box = link.bounding_box()
    assert box is not None and box["x"] + box["width"] <= VIEWPORT["width"], f"the link is cut off: {box}"
    outputs = record["processing"]["data_processes"][0]["output_parameters"]
    for name in ("n_units", "n_violating_units", "fraction_violating"):
        cell = page.get_by_role("cell", name=name, exact=True).first
        assert cell.is_visible(), f"outputs table lacks {name}"
    assert page.get_by_role("cell", name=str(outputs["n_units"]), exact=True).count() >= 1
    assert page.get_by_text(record["analysis_wrapper"]["git_commit"], exact=True).first.is_visible()
    page.get_by_text("[Show Markdown]").first.click()
    image = page.locator('img[src^="data:image/png;base64,"]').first
    image.wait_for()
    assert page.evaluate("(img) => img.naturalWidth", image.element_handle()) > 100
    page.keyboard.press("Escape")


def assert_check_shown(ui: Ui, check: str, key: str, run_id: str, status: str) -> Any:
    """The asset's Checks tab, check ``check``, its Partitions view, partition ``key``: the latest
    execution is run ``run_id``'s and shows ``status`` (``Passed`` or ``Failed``), never ``Skipped``;
    the partition's panel."""
    page = ui.page
    ui.goto(f"/assets/{ASSET}?view=checks")
    page.get_by_text(check, exact=True).first.click()
    page.locator("button[role=tab]", has_text="Partitions").click()
    page.get_by_placeholder("Filter by partition").fill(key)
    page.locator(f'[data-tooltip="{key}"]').last.click()  # the list's row (the selector's chip is first)
    # The partition's panel: the innermost element holding its title and its latest execution.
    panel = (
        page.locator("div", has=page.get_by_text("Latest execution", exact=True)).filter(has_text=key).last
    )
    panel.get_by_text(run_id[:8], exact=True).first.wait_for()  # the run's execution, not an older one
    badge = panel.get_by_text(status, exact=True).first
    badge.wait_for()
    assert badge.is_visible(), f"{check} on {key}: no {status!r}"
    assert not panel.get_by_text("Skipped", exact=True).count(), f"{check} on {key}: Skipped"
    return panel


def wait_for_run(ui: Ui, after: float, key: str, timeout_s: float = 120) -> Any:
    """The first run of partition ``key`` created after ``after``, once it has ended (SUCCESS, FAILURE,
    or CANCELED: a run whose config was refused ends canceled)."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    ended = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
    deadline = time.monotonic() + timeout_s
    with DagsterInstance.from_config(str(ui.home)) as instance:
        while time.monotonic() < deadline:
            records = instance.get_run_records(RunsFilter(tags={"dagster/partition": key}), limit=5)
            new = [r for r in records if r.create_timestamp.timestamp() > after]
            if new and new[-1].dagster_run.status in ended:
                return new[-1].dagster_run
            time.sleep(1)
    pytest.fail(f"no finished run of {key} within {timeout_s:.0f} s:\n{ui.server.tail()}")


def describe_run(ui: Ui, run: Any) -> str:
    """A run's status and its failure events' messages, for an assertion's message."""
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(ui.home)) as instance:
        events = instance.all_logs(run.run_id)
    failures = [e.message for e in events if e.dagster_event is not None and e.dagster_event.is_failure]
    return f"run {run.run_id} {run.status.value}, tags {dict(run.tags)}: {failures}"


def pick_partition(page: Any, opener: Any, key: str) -> None:
    opener.click()
    page.keyboard.type(key)
    page.locator(".dagster-popover").get_by_text(key, exact=True).first.click()
    page.keyboard.press("Escape")


def launch_from_dialog(ui: Ui, key: str) -> Any:
    """The asset page's Materialize dialog on partition ``key``: launch its one run; the run, ended."""
    page = ui.page
    ui.goto(f"/assets/{ASSET}")
    page.get_by_role("button", name="Materialize…").first.click()
    dialog = page.locator(".dagster-dialog")
    pick_partition(page, dialog.get_by_text("Select a partition or create one"), key)
    started = time.time()
    dialog.get_by_role("button", name="Launch 1 run").click()
    return wait_for_run(ui, started, key)
