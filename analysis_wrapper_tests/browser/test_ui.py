"""The Dagster UI in a real browser (Debian's Chromium, driven by Playwright) against ``dagster dev`` on
a temporary DAGSTER_HOME holding three recorded example jobs: what a scientist opening the UI sees.

Each test asserts concrete text and elements (the fingerprint, the results link, the outputs table,
the figure as an image, the checks and their reasons, the summary's table and figure), so it fails
when any of them is missing; the re-materialization tests fail if a skip hides the recorded result or
shows its checks "Skipped", the refused-config test if a run config the analysis refuses fails the
partition or hides its result. The shared ``ui`` fixture is in ``conftest.py``, the page helpers in
``ui_pages.py``. Screenshots go to ``docs/screenshots/latest/`` (git-ignored, so a test run leaves the
work tree clean for posting; the README's walkthrough shows copies in ``docs/screenshots/``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from analysis_wrapper.batch import OUTCOME_TAG
from analysis_wrapper.checks import CHECK_NAMES, MATCHES_RECORD
from analysis_wrapper_tests.browser.ui_pages import (
    Ui,
    assert_check_shown,
    assert_result_shown,
    describe_run,
    launch_from_dialog,
    open_partition,
    partition_statuses,
    pick_partition,
    shot,
    wait_for_run,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


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
    page.get_by_text(MATCHES_RECORD, exact=True).first.click()
    # Its latest execution is the broken partition's: red, with what is wrong (its folder_complete part).
    page.get_by_text(ui.broken_key, exact=True).first.wait_for()
    assert page.get_by_text("Failed", exact=True).first.is_visible()
    reason = page.get_by_text(re.compile(r"isi_violations\.png has \d+ bytes, the record says \d+")).first
    reason.wait_for()
    shot(ui, "checks.png")
    # Its parts that passed say so in its metadata.
    page.get_by_text(re.compile(r"^passed: outputs\.json is a valid IsiViolationsOutputs")).first.wait_for()


def test_the_summary_asset_shows_every_job_and_a_figure(ui: Ui) -> None:
    """Right after the demo's way of recording the jobs (``run --summary``, no result recorded since):
    the summary exists, with every recorded job in its table."""
    page = ui.page
    assert set(ui.records()) == {job["partition_key"] for job in ui.jobs}  # nothing recorded since
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


def test_materializing_a_recorded_partition_keeps_its_result(ui: Ui) -> None:
    """The Materialize dialog on a recorded partition: the run skips it (already recorded), says so in
    its outcome tag, the job stays done, the partition still shows the recorded outputs and figure, and
    its checks show the recorded result's real state (Passed, from this run), never "Skipped"."""
    key = ui.jobs[1]["partition_key"]
    record = ui.records()[key]
    run = launch_from_dialog(ui, key)
    assert run.status.value == "SUCCESS", describe_run(ui, run)
    assert run.tags.get(OUTCOME_TAG) == "skipped: already recorded"
    assert ui.job_state(key) == "done"
    assert ui.records()[key] == record  # nothing posted, nothing replaced
    assert_result_shown(ui, key, record)
    for name in CHECK_NAMES:
        assert_check_shown(ui, name, key, run.run_id, "Passed")


def test_a_run_from_the_launchpad(ui: Ui) -> None:
    """The Launchpad on the partition whose figure changed after it was recorded: the run skips it, and
    its check shows the damage (Failed from this run, not "Skipped": its folder_complete part, with the
    reason), its other two parts passed."""
    page = ui.page
    key = ui.broken_key
    ui.goto("/locations/analysis_wrapper.definitions/jobs/isi_violations_job/playground")
    page.get_by_text("isi_violations_result:").first.wait_for()
    page.get_by_text("No errors").first.wait_for()
    pick_partition(page, page.get_by_placeholder("Partition"), key)
    shot(ui, "launchpad.png")
    started = time.time()
    page.get_by_role("button", name="Launch Run").click()
    run = wait_for_run(ui, started, key)
    assert run.status.value == "SUCCESS", describe_run(ui, run)
    assert run.tags.get("dagster/partition") == key
    assert run.tags.get(OUTCOME_TAG) == "skipped: already recorded"
    assert ui.job_state(key) == "done"  # a skip of a recorded job changes nothing
    panel = assert_check_shown(ui, MATCHES_RECORD, key, run.run_id, "Failed")
    damage = re.compile(r"folder_complete: .*isi_violations\.png has \d+ bytes, the record says \d+")
    panel.get_by_text(damage).first.wait_for()  # the description: the part that failed, and why
    panel.get_by_text(re.compile(r"^passed: outputs\.json is a valid IsiViolationsOutputs")).first.wait_for()
    panel.get_by_text(re.compile(r"^passed: recorded under [0-9a-f]{64}")).first.wait_for()
    shot(ui, "check-after-skip.png")


def test_a_refused_config_leaves_the_recorded_result_shown(ui: Ui) -> None:
    """The Launchpad on a recorded partition with a cutoff the analysis's Params refuse (it must be
    >= 0): the run ends CANCELED, tagged ``refused: ...``, records nothing, and the partition still
    shows its recorded result, materialized and not failed (on the Partitions tab and in the
    statuses the tab reads)."""
    page = ui.page
    key = ui.jobs[0]["partition_key"]
    record = ui.records()[key]
    ui.goto("/locations/analysis_wrapper.definitions/jobs/isi_violations_job/playground")
    page.evaluate("() => window.localStorage.clear()")  # a new Launchpad session: the scaffold, no partition
    page.reload()
    page.get_by_text("isi_violations_result:").first.wait_for()
    page.get_by_text("No errors").first.wait_for()
    pick_partition(page, page.get_by_placeholder("Partition"), key)
    line = page.locator(".CodeMirror-line", has_text="force: false")  # under the asset's op config
    line.click()
    page.keyboard.press("End")
    page.keyboard.press("Enter")
    page.keyboard.type("isi_violations_cutoff: -1")
    page.keyboard.press("Escape")
    page.get_by_text("No errors").first.wait_for()  # Dagster's config check knows only the type
    shot(ui, "launchpad-refused.png")
    started = time.time()
    page.get_by_role("button", name="Launch Run").click()
    run = wait_for_run(ui, started, key)
    assert run.run_config["ops"]["isi_violations_result"]["config"]["isi_violations_cutoff"] == -1
    assert run.status.value == "CANCELED", describe_run(ui, run)
    outcome = run.tags.get(OUTCOME_TAG, "")
    assert outcome.startswith("refused: Run config refused") and "isi_violations_cutoff" in outcome, outcome
    assert ui.records()[key] == record and ui.job_state(key) == "done"
    assert_result_shown(ui, key, record)
    panel = page.locator("div", has=page.get_by_text("Latest materialization")).filter(has_text=key).last
    assert panel.get_by_text("Materialized", exact=True).first.is_visible()
    assert not panel.get_by_text("Failed", exact=True).count()
    page.get_by_text("Failed (0)", exact=True).first.wait_for()  # the tab's filter: no failed partition
    materialized, failed = partition_statuses(ui)
    assert key in materialized and key not in failed, (materialized, failed)


def test_the_inbox_sensor_says_what_its_last_tick_did(ui: Ui) -> None:
    """Without hovering: the tick's summary is the start of the cursor the sensor's page shows."""
    page = ui.page
    ui.goto("/locations/analysis_wrapper.definitions/sensors/isi_violations_inbox_sensor")
    summary = re.compile(
        r"isi_violations: \d+ new file\(s\), \d+ rejected, \d+ already done, \d+ registered, \d+ requested"
    )
    page.get_by_text(summary).first.wait_for()
    shot(ui, "sensor.png")
