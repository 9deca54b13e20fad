"""The Dagster UI in a real browser (Debian's Chromium, driven by Playwright) against ``dagster dev`` on
a temporary DAGSTER_HOME holding three recorded example jobs: what a scientist opening the UI sees.

Each test asserts concrete text and elements (the fingerprint, the results link, the outputs table,
the figure as an image, the checks and their reasons, the summary's table and figure), so it fails
when any of them is missing; the re-materialization test fails if a skip or a dry run hides the
recorded result. Screenshots go to ``docs/screenshots/latest/`` (git-ignored, so a test run leaves the
work tree clean for posting; the README's walkthrough shows copies in ``docs/screenshots/``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from analysis_wrapper.checks import CHECK_NAMES
from analysis_wrapper_tests.browser.ui_server import REPO_ROOT, UiServer, prepare_instance

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

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
VIEWPORT = {"width": 1600, "height": 1000}
LOAD_MS = 30_000


@dataclass
class Ui:
    server: UiServer
    env: dict[str, str]
    home: Path
    jobs: list[dict[str, Any]]
    broken_key: str
    """A partition whose figure was changed after it was recorded: its folder_complete check fails."""
    page: Any

    def goto(self, path: str) -> None:
        self.page.goto(self.server.url + path)

    def records(self) -> dict[str, dict[str, Any]]:
        return _records(self.env)

    def job_state(self, key: str) -> str:
        from analysis_wrapper.store.sqlite import SqliteStore

        store = SqliteStore(self.home / "analysis_records.sqlite")
        try:
            entry = store.get_job("isi_violations", key)
            assert entry is not None
            return str(entry.state.value)
        finally:
            store.close()


def _check_only(env: dict[str, str], key: str) -> None:
    """Run the result asset's checks alone on ``key`` (what the UI's Execute on a check does), then
    build the summary (its automation waits for a new result), in-process on the UI's instance."""
    script = (
        "from dagster import AssetKey, DagsterInstance\n"
        "from analysis_wrapper.definitions import defs\n"
        "job = defs.resolve_job_def('isi_violations_job')\n"
        "asset = defs.resolve_assets_def('isi_violations_result')\n"
        "sub = job.get_subset(asset_selection=set(), asset_check_selection=set(asset.check_keys))\n"
        "summary = defs.resolve_implicit_global_asset_job_def().get_subset(\n"
        "    asset_selection={AssetKey('isi_violations_summary')})\n"
        "with DagsterInstance.get() as instance:\n"
        f"    assert sub.execute_in_process(instance=instance, partition_key={key!r}).success\n"
        "    assert summary.execute_in_process(instance=instance).success\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory, clean_repo: Path) -> Iterator[Ui]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("ui")
    env = prepare_instance(root, clean_repo)
    status = json.loads(
        subprocess.run(
            [str(Path(sys.executable).parent / "analysis-wrapper"), "status", "--json"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    jobs = sorted(status, key=lambda j: j["partition_key"])
    assert len(jobs) == 3 and all(j["state"] == "done" for j in jobs), jobs
    # One partition's figure changes after it was recorded: its check must go red, with the reason.
    broken = jobs[2]
    record = _records(env)[broken["partition_key"]]
    figure = Path(record["location"]) / "isi_violations.png"
    figure.write_bytes(figure.read_bytes() + b"tampered")
    server = UiServer(env, root / "dagster_dev.log")
    server.launch()  # it starts while the checks run
    try:
        _check_only(env, broken["partition_key"])
        server.wait()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(LOAD_MS)
            yield Ui(server, env, Path(env["DAGSTER_HOME"]), jobs, broken["partition_key"], page)
            browser.close()
    finally:
        server.stop()


def _records(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    from analysis_wrapper.store.sqlite import SqliteStore

    store = SqliteStore(Path(env["DAGSTER_HOME"]) / "analysis_records.sqlite")
    try:
        return {r["analysis_wrapper"]["partition_key"]: r for r in store.find_records("isi_violations")}
    finally:
        store.close()


def shot(ui: Ui, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    ui.page.screenshot(path=str(SCREENSHOTS / name))


def open_partition(ui: Ui, key: str) -> Any:
    """The partition's panel on the asset's Partitions tab, once its metadata has loaded."""
    ui.goto(f"/assets/isi_violations_result?view=partitions&partition={key}")
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


def test_a_partition_shows_its_result(ui: Ui) -> None:
    key = ui.jobs[0]["partition_key"]
    record = ui.records()[key]
    assert_result_shown(ui, key, record)
    open_partition(ui, key)
    shot(ui, "partition.png")
    ui.page.get_by_text("[Show Markdown]").first.click()
    ui.page.locator('img[src^="data:image/png;base64,"]').first.wait_for()
    shot(ui, "partition-figure.png")
    ui.page.keyboard.press("Escape")


def test_checks_show_per_partition_with_the_reason_of_a_failure(ui: Ui) -> None:
    page = ui.page
    ui.goto("/assets/isi_violations_result?view=checks")
    for name in CHECK_NAMES:
        page.get_by_text(name, exact=True).first.wait_for()
    page.get_by_text("folder_complete", exact=True).first.click()
    # The latest execution of folder_complete is the broken partition's: red, with what is wrong.
    page.get_by_text(ui.broken_key, exact=True).first.wait_for()
    assert page.get_by_text("Failed", exact=True).first.is_visible()
    reason = page.get_by_text(re.compile(r"isi_violations\.png has \d+ bytes, the record says \d+")).first
    reason.wait_for()
    shot(ui, "checks.png")
    page.get_by_text("outputs_valid", exact=True).first.click()
    page.get_by_text(re.compile(r"outputs\.json is a valid IsiViolationsOutputs")).first.wait_for()


def test_the_summary_asset_shows_every_job_and_a_figure(ui: Ui) -> None:
    page = ui.page
    assert (Path(ui.env["RESULTS_ROOT"]) / "isi_violations_summary" / "summary.parquet").is_file()
    ui.goto("/assets/isi_violations_summary")
    page.get_by_text("summary_link", exact=True).first.wait_for()
    for job in ui.jobs:
        page.get_by_role("cell", name=job["partition_key"], exact=True).first.wait_for()
    assert page.get_by_text("out.fraction_violating", exact=True).first.is_visible()
    page.get_by_text("a result was recorded").first.wait_for()  # its automation condition
    shot(ui, "summary.png")
    page.get_by_text("[Show Markdown]").first.click()
    image = page.locator('img[src^="data:image/png;base64,"]').first
    image.wait_for()
    assert page.evaluate("(img) => img.naturalWidth", image.element_handle()) > 300
    page.keyboard.press("Escape")


def wait_for_run(ui: Ui, after: float, key: str, timeout_s: float = 120) -> Any:
    """The first run of partition ``key`` created after ``after``, once it has finished."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    deadline = time.monotonic() + timeout_s
    with DagsterInstance.from_config(str(ui.home)) as instance:
        while time.monotonic() < deadline:
            records = instance.get_run_records(RunsFilter(tags={"dagster/partition": key}), limit=5)
            new = [r for r in records if r.create_timestamp.timestamp() > after]
            if new and new[-1].dagster_run.status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE):
                return new[-1].dagster_run
            time.sleep(1)
    pytest.fail(f"no finished run of {key} within {timeout_s:.0f} s:\n{ui.server.tail()}")


def pick_partition(page: Any, opener: Any, key: str) -> None:
    opener.click()
    page.keyboard.type(key)
    page.locator(".dagster-popover").get_by_text(key, exact=True).first.click()
    page.keyboard.press("Escape")


def test_materializing_a_recorded_partition_keeps_its_result(ui: Ui) -> None:
    """The Materialize dialog on a recorded partition: the run succeeds (a dry run: DRY_RUN's default),
    the job stays done, and the partition still shows the recorded outputs and figure."""
    page = ui.page
    key = ui.jobs[1]["partition_key"]
    record = ui.records()[key]
    ui.goto("/assets/isi_violations_result")
    page.get_by_role("button", name="Materialize…").first.click()
    dialog = page.locator(".dagster-dialog")
    pick_partition(page, dialog.get_by_text("Select a partition or create one"), key)
    started = time.time()
    dialog.get_by_role("button", name="Launch 1 run").click()
    run = wait_for_run(ui, started, key)
    assert run.status.value == "SUCCESS", ui.server.tail()
    assert ui.job_state(key) == "done"
    assert ui.records()[key] == record  # nothing posted, nothing replaced
    assert_result_shown(ui, key, record)


def test_a_run_from_the_launchpad(ui: Ui) -> None:
    page = ui.page
    key = ui.jobs[0]["partition_key"]
    ui.goto("/locations/analysis_wrapper.definitions/jobs/isi_violations_job/playground")
    page.get_by_text("isi_violations_result:").first.wait_for()
    page.get_by_text("No errors").first.wait_for()
    pick_partition(page, page.get_by_placeholder("Partition"), key)
    shot(ui, "launchpad.png")
    started = time.time()
    page.get_by_role("button", name="Launch Run").click()
    run = wait_for_run(ui, started, key)
    assert run.status.value == "SUCCESS", ui.server.tail()
    assert run.tags.get("dagster/partition") == key
    assert ui.job_state(key) == "done"  # a dry run of a recorded job changes nothing


def test_the_inbox_sensor_says_what_its_last_tick_did(ui: Ui) -> None:
    """Without hovering: the tick's summary is the start of the cursor the sensor's page shows."""
    page = ui.page
    ui.goto("/locations/analysis_wrapper.definitions/sensors/isi_violations_inbox_sensor")
    summary = re.compile(
        r"isi_violations: \d+ new file\(s\), \d+ rejected, \d+ already done, \d+ registered, \d+ requested"
    )
    page.get_by_text(summary).first.wait_for()
    shot(ui, "sensor.png")
