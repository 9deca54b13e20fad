"""The one ``dagster dev`` and browser the browser tests share (package scope: starting them takes
most of a minute): three example jobs recorded the demo's way, one of them damaged afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from analysis_wrapper_tests.browser.ui_pages import CHROMIUM, CHROMIUM_ARGS, LOAD_MS, VIEWPORT, Ui, records
from analysis_wrapper_tests.browser.ui_server import REPO_ROOT, UiServer, prepare_instance


def _check_only(env: dict[str, str], key: str) -> None:
    """Run the result asset's checks alone on ``key`` (what the UI's Execute on a check does),
    in-process on the UI's instance."""
    script = (
        "from dagster import DagsterInstance\n"
        "from analysis_wrapper.definitions import defs\n"
        "job = defs.resolve_job_def('isi_violations_job')\n"
        "asset = defs.resolve_assets_def('isi_violations_result')\n"
        "sub = job.get_subset(asset_selection=set(), asset_check_selection=set(asset.check_keys))\n"
        "with DagsterInstance.get() as instance:\n"
        f"    assert sub.execute_in_process(instance=instance, partition_key={key!r}).success\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="package")
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
    record = records(env)[broken["partition_key"]]
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
