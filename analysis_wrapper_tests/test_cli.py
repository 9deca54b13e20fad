"""The `analysis-wrapper` CLI and the `dagster` CLI on the same registry, stores and instance."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from analysis_wrapper.cli import main
from analysis_wrapper.resources.record_store import close_all_stores

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_repo: Path) -> Path:
    """A working folder with the CLI's defaults: .dagster_home, analysis_results, SQLite store."""
    monkeypatch.chdir(tmp_path)
    for name in ("DAGSTER_HOME", "ANALYSIS_BUCKET", "DOCDB_URI", "RESULTS_ROOT", "ALLOW_DIRTY", "GIT_COMMIT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DRY_RUN", "0")
    monkeypatch.setenv("CODE_REPOSITORY", str(clean_repo))
    yield tmp_path
    close_all_stores()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    close_all_stores()
    return code, capsys.readouterr().out


def bad_files(folder: Path, good: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    job = json.loads(good.read_text())
    broken = {
        "bad_json": folder / "bad_json.json",
        "missing": folder / "missing.json",
        "wrong": folder / "wrong.json",
    }
    broken["bad_json"].write_text('{\n  "s3_location": ["x"],\n  "asset_name": [oops]\n}\n')
    broken["missing"].write_text(json.dumps({k: v for k, v in job.items() if k != "s3_location"}))
    broken["wrong"].write_text(json.dumps({**job, "distributed_parameters": ["not", "a", "dict"]}))
    return broken


def test_run_example_jobs_then_again_all_done(
    workdir: Path, example_jobs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    jobs_dir = example_jobs[0].parent
    code, out = cli(capsys, "run", "--summary", str(jobs_dir))
    assert code == 0, out
    assert out.count("\ndone ") + out.startswith("done ") == 3
    assert "3 job(s): 3 done, 0 already done, 0 dry run, 0 failed; 0 file(s) rejected" in out
    results = sorted(
        p for p in (workdir / "analysis_results").iterdir() if p.name != "isi_violations_summary"
    )
    assert len(results) == 3 and (workdir / "analysis_results" / "isi_violations_summary").is_dir()
    assert all((r / "isi_violations.csv").is_file() and (r / "metadata.nd.json").is_file() for r in results)

    code, out = cli(capsys, "run", str(jobs_dir))
    assert code == 0
    assert sum(line.startswith("already done") for line in out.splitlines()) == 3
    assert "0 done, 3 already done" in out

    code, out = cli(capsys, "status", "--json")
    status = json.loads(out)
    assert code == 0 and len(status) == 3 and {s["state"] for s in status} == {"done"}
    assert all(s["attempts"] == 1 and s["run_id"] for s in status)

    code, out = cli(capsys, "results", "--json")
    records = json.loads(out)
    assert code == 0 and len(records) == 3
    assert {r["location"] for r in records} == {str(r) for r in results}
    code, out = cli(capsys, "results")
    assert code == 0 and "isi_violations  1.0.0" in out
    # Long outputs are cut with an ellipsis in the table; --full shows them whole, --json as data.
    whole = [json.dumps(r["processing"]["data_processes"][0]["output_parameters"]) for r in records]
    assert all(len(w) > 70 for w in whole)
    rows = out.splitlines()[1:]
    assert len(rows) == 3 and all(row.rstrip().endswith("…") for row in rows), out
    assert not any(w in out for w in whole)
    code, out = cli(capsys, "results", "--full")
    assert code == 0 and all(w in out for w in whole) and "…" not in out


def test_cut_keeps_what_fits_and_marks_what_it_cuts() -> None:
    from analysis_wrapper.cli.tables import cut

    assert cut("abc", 3) == "abc" and cut("abc", None) == "abc"
    assert cut("abcdef", 4) == "abc…" and len(cut("x" * 100, 70)) == 70


def test_bad_files_are_rejected_with_file_and_field_and_good_ones_still_run(
    workdir: Path, example_jobs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = workdir / "inbox"
    shutil.copytree(example_jobs[0].parent, inbox)
    broken = bad_files(inbox, example_jobs[0])
    code, out = cli(capsys, "run", str(inbox))
    assert code == 1
    assert f"REJECTED {broken['bad_json']}, line 3:" in out and "invalid JSON" in out
    assert f"REJECTED {broken['missing']}: field 's3_location': Field required" in out
    assert f"REJECTED {broken['wrong']}: field 'distributed_parameters':" in out
    assert "3 done" in out and "3 file(s) rejected" in out
    assert all(p.exists() for p in broken.values())  # nothing is lost


def test_submit_then_run_pending_and_dry_run(
    workdir: Path, example_jobs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = cli(capsys, "submit", str(example_jobs[0]))
    assert code == 0 and "1 job(s) registered" in out
    code, out = cli(capsys, "status", "--json")
    assert [s["state"] for s in json.loads(out)] == ["pending"]
    code, out = cli(capsys, "run", "--dry-run")
    assert code == 0 and "1 dry run" in out
    assert not (workdir / "analysis_results").exists()
    code, out = cli(capsys, "run")
    assert code == 0 and "1 done" in out


def test_failed_job_gives_nonzero_exit_after_the_others(
    workdir: Path, example_jobs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = workdir / "inbox"
    shutil.copytree(example_jobs[0].parent, inbox)
    first = sorted(inbox.glob("*.json"))[0]
    job = json.loads(first.read_text())
    missing_nwb = workdir / "gone.nwb"
    job["s3_location"] = job["file_location"] = [str(missing_nwb)]
    first.write_text(json.dumps(job))
    code, out = cli(capsys, "run", str(inbox))
    assert code == 1
    assert "2 done" in out and "1 failed" in out
    assert f"input [0] {missing_nwb} does not exist" in out


def test_analysis_override_must_exist(workdir: Path, example_jobs: list[Path], capsys: Any) -> None:
    with pytest.raises(SystemExit, match="not served here"):
        main(["submit", "--analysis", "nope", str(example_jobs[0])])


def _dagster(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "dagster"
    return subprocess.run(
        [str(exe), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
def test_dagster_asset_materialize_of_a_registered_partition(
    workdir: Path, example_jobs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = cli(capsys, "submit", str(example_jobs[0]))
    assert code == 0
    code, out = cli(capsys, "status", "--json")
    key = json.loads(out)[0]["partition_key"]
    run_yaml = workdir / "run.yaml"
    run_yaml.write_text("ops:\n  isi_violations_result:\n    config:\n      isi_violations_cutoff: 0.25\n")
    env = {**os.environ, "DAGSTER_HOME": str(workdir / ".dagster_home")}
    done = _dagster(
        [
            "asset",
            "materialize",
            "-m",
            "analysis_wrapper.definitions",
            "--select",
            "isi_violations_result",
            "--partition",
            key,
            "-c",
            str(run_yaml),
        ],
        env,
        workdir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    code, out = cli(capsys, "results", "--json")
    (record,) = json.loads(out)
    assert record["processing"]["data_processes"][0]["code"]["parameters"]["isi_violations_cutoff"] == 0.25
    assert record["analysis_wrapper"]["partition_key"] == key

    bad_yaml = workdir / "bad.yaml"
    bad_yaml.write_text("ops:\n  isi_violations_result:\n    config:\n      isi_violations_cutoff: -1\n")
    failed = _dagster(
        [
            "asset",
            "materialize",
            "-m",
            "analysis_wrapper.definitions",
            "--select",
            "isi_violations_result",
            "--partition",
            key,
            "-c",
            str(bad_yaml),
        ],
        env,
        workdir,
    )
    assert failed.returncode != 0
    assert "parameters.isi_violations_cutoff" in failed.stdout + failed.stderr


@pytest.mark.slow
def test_dagster_definitions_validate(workdir: Path) -> None:
    done = _dagster(
        ["definitions", "validate", "-w", str(REPO_ROOT / "workspace.yaml")], dict(os.environ), REPO_ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_results_queries_filter_by_parameter_version_latest_and_list_files(
    workdir: Path, example_jobs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    jobs_dir = workdir / "jobs"
    shutil.copytree(example_jobs[0].parent, jobs_dir)
    variant = json.loads(example_jobs[0].read_text())
    variant["analysis_code"]["parameters"]["isi_violations_cutoff"] = 0.3
    (jobs_dir / "variant.json").write_text(json.dumps(variant))
    code, out = cli(capsys, "run", str(jobs_dir))
    assert code == 0 and "4 done" in out

    def query(*args: str) -> list[dict[str, Any]]:
        code, out = cli(capsys, "results", "--json", *args)
        assert code == 0
        return list(json.loads(out))

    params = "processing", "data_processes"
    assert len(query()) == 4
    (only,) = query("--param", "isi_violations_cutoff=0.3")
    assert only[params[0]][params[1]][0]["code"]["parameters"]["isi_violations_cutoff"] == 0.3
    assert len(query("--param", "isi_violations_cutoff=0.5", "--param", "analysis_tag=example")) == 3
    assert query("--param", "analysis_tag=other") == []
    assert len(query("--code-version", "1.0.0")) == 4 and query("--code-version", "0.9") == []
    latest = query("--latest")
    assert len(latest) == 3 and only["_id"] in {r["_id"] for r in latest}
    with_files = query("--files", "--latest")
    for record in with_files:
        names = sorted(f["name"] for f in record["files"])
        assert names == ["isi_violations.csv", "isi_violations.png", "metadata.nd.json", "outputs.json"]
        assert all(f["size"] > 0 for f in record["files"])
    code, out = cli(capsys, "results", "--files", "--param", "isi_violations_cutoff=0.3")
    assert code == 0 and "isi_violations.csv" in out and only["location"] in out


def test_posting_from_a_dirty_tree_is_refused_before_any_job(
    workdir: Path,
    example_jobs: list[Path],
    dirty_repo: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CODE_REPOSITORY", str(dirty_repo))
    code = main(["run", str(example_jobs[0])])
    close_all_stores()
    captured = capsys.readouterr()
    assert code == 2
    assert "uncommitted changes" in captured.err and "ALLOW_DIRTY=1" in captured.err
    assert not (workdir / "analysis_results").exists()
    code, out = cli(capsys, "run", "--dry-run", str(example_jobs[0]))
    assert code == 0 and "1 dry run" in out
    monkeypatch.setenv("ALLOW_DIRTY", "1")
    code, out = cli(capsys, "run", str(example_jobs[0]))
    assert code == 0 and "1 done" in out


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise() -> None:
    import io

    from analysis_wrapper.cli.jobs import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    bar = Progress(2, screen)
    bar.step("done a")
    bar.step("done b")
    text = screen.getvalue()
    assert "\r[###############...............] 1/2 done a" in text
    assert "\r[##############################] 2/2 done b" in text and text.endswith("\n")

    pipe = io.StringIO()
    lines = Progress(2, pipe)
    lines.step("done a")
    lines.step("done b")
    assert pipe.getvalue() == "done a\ndone b\n"


# ---- one line per failure, no Dagster stack traces (issue 11 item 11, issue 12 item 6) -------------


def _with_missing_input(workdir: Path, example_jobs: list[Path]) -> tuple[Path, Path]:
    inbox = workdir / "inbox"
    shutil.copytree(example_jobs[0].parent, inbox)
    first = sorted(inbox.glob("*.json"))[0]
    job = json.loads(first.read_text())
    missing = workdir / "gone.nwb"
    job["s3_location"] = job["file_location"] = [str(missing)]
    first.write_text(json.dumps(job))
    return inbox, missing


@pytest.mark.parametrize("batch_size", ["1", "20"], ids=["one-run-per-job", "batch"])
def test_a_failed_job_is_one_line_with_its_reason_and_its_log_and_no_stack_trace(
    workdir: Path, example_jobs: list[Path], capfd: pytest.CaptureFixture[str], batch_size: str
) -> None:
    from dagster import DagsterEventType, DagsterInstance

    inbox, missing = _with_missing_input(workdir, example_jobs)
    code = main(["run", "--batch-size", batch_size, str(inbox)])
    close_all_stores()
    out, err = capfd.readouterr()
    assert code == 1
    assert "2 done" in out and "1 failed" in out
    (line,) = [line for line in out.splitlines() if line.startswith("failed")]
    assert "InputNotFoundError: " in line, line
    assert f"input [0] {missing} does not exist" in line
    run_id = line.split("full log: Dagster run ", 1)[1].split(",", 1)[0]
    assert f"UI /runs/{run_id}" in line
    for noise in ("Traceback", "Stack Trace", "STEP_FAILURE", "dagster - ERROR", "BetaWarning"):
        assert noise not in out + err, (noise, err[-2000:])
    assert err.strip() == "", err
    # The full story is in the run's event log in the instance (the Dagster UI shows it there).
    instance = DagsterInstance.from_config(str(workdir / ".dagster_home"))
    try:
        failures = [
            e
            for e in instance.all_logs(run_id)
            if e.dagster_event is not None and e.dagster_event.event_type == DagsterEventType.STEP_FAILURE
        ]
        assert failures and failures[0].dagster_event is not None
        error = failures[0].dagster_event.step_failure_data.error
        assert error is not None and error.stack
    finally:
        instance.dispose()


def test_verbose_shows_dagster_log_and_the_full_trace(
    workdir: Path, example_jobs: list[Path], capfd: pytest.CaptureFixture[str]
) -> None:
    inbox, _missing = _with_missing_input(workdir, example_jobs)
    code = main(["--verbose", "run", "--batch-size", "1", str(inbox)])
    close_all_stores()
    _out, err = capfd.readouterr()
    assert code == 1
    assert "STEP_FAILURE" in err and "Stack Trace" in err


def test_a_bad_setting_is_one_line_naming_the_variable_and_the_allowed_values(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DRY_RUN", "maybe")
    assert main(["status"]) == 2
    out, err = capfd.readouterr()
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith("error: setting DRY_RUN='maybe' is invalid: ")
    assert "allowed: 1, 0, true, false, yes, no, on, off" in line
    monkeypatch.setenv("DRY_RUN", "0")
    monkeypatch.setenv("SENSOR_BATCH_SIZE", "0")
    monkeypatch.setenv("DOCDB_URI", "not a uri")
    monkeypatch.setenv("STORE_BUSY_TIMEOUT_S", "-1")
    assert main(["status"]) == 2
    (line,) = capfd.readouterr().err.splitlines()
    assert "setting SENSOR_BATCH_SIZE='0' is invalid: Input should be greater than or equal to 1" in line
    assert "setting STORE_BUSY_TIMEOUT_S='-1' is invalid" in line
    assert not (workdir / ".dagster_home").exists()  # nothing was created


LOCKER = """
import os, sqlite3, sys, time
path, key, hold_s, ready = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
deadline = time.monotonic() + 120
open(ready + ".polling", "w").close()
while True:  # until the CLI's run has started the job (state running), then lock the store
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        row = conn.execute("SELECT state FROM jobs WHERE partition_key = ?", (key,)).fetchone()
    except sqlite3.OperationalError:
        row = None
    if row and row[0] == "running":
        break
    conn.close()
    assert time.monotonic() < deadline, "the job never started"
    time.sleep(0.02)
conn.execute("BEGIN EXCLUSIVE")
open(ready, "w").close()
if hold_s >= 0:
    time.sleep(hold_s)
else:  # until told
    while not os.path.exists(ready + ".release") and time.monotonic() < deadline:
        time.sleep(0.05)
conn.execute("ROLLBACK")
"""


def start_locker(store_path: Path, key: str, hold_s: float, ready: Path) -> subprocess.Popen[bytes]:
    """The process that locks the store as soon as the job is running (polling before this returns)."""
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(store_path), key, str(hold_s), str(ready)])
    polling = Path(f"{ready}.polling")
    deadline = time.monotonic() + 60
    while not polling.exists():
        assert locker.poll() is None and time.monotonic() < deadline, "the locker did not start"
        time.sleep(0.02)
    return locker


@pytest.mark.parametrize("batch_size", ["1", "20"], ids=["one-run-per-job", "batch"])
def test_store_locked_mid_run_shows_the_cause_and_the_job_ends_failed(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], batch_size: str
) -> None:
    """Another process holds the SQLite store locked (BEGIN EXCLUSIVE) beyond the busy timeout while the
    job runs: the job's line says "database is locked", and the job ends ``failed`` (not ``running``)."""
    from analysis_wrapper.store.base import JobState
    from analysis_wrapper.store.sqlite import SqliteStore
    from analysis_wrapper_tests.harness import write_job

    monkeypatch.setenv("ANALYSIS_MODULES", "analysis_wrapper_tests.counting_analysis")
    monkeypatch.setenv("STORE_BUSY_TIMEOUT_S", "1")
    source = workdir / "input.txt"
    source.write_text("x\n")
    job_file = write_job(workdir / "jobs", [source], analysis="counting", sleep_s=2.5)
    assert main(["submit", str(job_file)]) == 0
    close_all_stores()
    capfd.readouterr()
    store_path = workdir / ".dagster_home" / "analysis_records.sqlite"
    store = SqliteStore(store_path)
    (entry,) = store.list_jobs("counting")
    ready = workdir / "locked"
    # Locked from the job's start until after the analysis (2.5 s) and the writes after it (1 s each).
    locker = start_locker(store_path, entry.partition_key, 5.0, ready)
    try:
        code = main(["run", "--batch-size", batch_size])
        close_all_stores()
    finally:
        assert locker.wait(timeout=60) == 0
    out, err = capfd.readouterr()
    assert ready.exists(), "the store was never locked"
    assert code == 1, out
    (line,) = [line for line in out.splitlines() if line.startswith("failed")]
    assert "database is locked" in line, out
    assert "full log: Dagster run" in line
    assert "Traceback" not in err and "Stack Trace" not in err and "HandleOutputError" not in out, err
    (after,) = store.list_jobs("counting")
    assert after.state == JobState.FAILED, after
    assert "database is locked" in (after.last_error or "")
    store.close()


def test_store_locked_past_the_run_leaves_no_job_running_for_ever(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The store stays locked until the CLI has ended: the CLI cannot write the failure, says so in the
    job's line (with the cause) and exits; once the store answers, the inbox sensor's next tick finds the
    job's run ended and fails the job (through the lifecycle: RUN_LOST)."""
    from dagster import DagsterInstance, build_sensor_context

    from analysis_wrapper.code_location import build_definitions
    from analysis_wrapper.settings import load_settings
    from analysis_wrapper.store.base import JobState
    from analysis_wrapper.store.sqlite import SqliteStore
    from analysis_wrapper_tests.harness import write_job

    monkeypatch.setenv("ANALYSIS_MODULES", "analysis_wrapper_tests.counting_analysis")
    monkeypatch.setenv("STORE_BUSY_TIMEOUT_S", "1")
    monkeypatch.setenv("SENSOR_AUDIT_AFTER_S", "0")
    monkeypatch.setenv("DISPATCH_INBOX", str(workdir / "inbox"))
    source = workdir / "input.txt"
    source.write_text("x\n")
    job_file = write_job(workdir / "jobs", [source], analysis="counting", sleep_s=2.0)
    assert main(["submit", str(job_file)]) == 0
    close_all_stores()
    capfd.readouterr()
    home = workdir / ".dagster_home"
    store = SqliteStore(home / "analysis_records.sqlite")
    (entry,) = store.list_jobs("counting")
    ready = workdir / "locked"
    locker = start_locker(home / "analysis_records.sqlite", entry.partition_key, -1, ready)
    try:
        code = main(["run", "--batch-size", "1"])
        close_all_stores()
    finally:
        (workdir / "locked.release").touch()
        assert locker.wait(timeout=90) == 0
    out, err = capfd.readouterr()
    assert code == 1, out + err
    (line,) = [line for line in out.splitlines() if line.startswith("failed")]
    assert "database is locked" in line and "could not be marked failed" in line, line
    assert "Traceback" not in err, err
    (stuck,) = store.list_jobs("counting")
    assert stuck.state == JobState.RUNNING  # nobody could write meanwhile

    defs = build_definitions(settings=load_settings())
    instance = DagsterInstance.from_config(str(home))
    try:
        sensor = defs.resolve_sensor_def("counting_inbox_sensor")
        with build_sensor_context(
            instance=instance, definitions=defs, resources=defs.resources, sensor_name=sensor.name
        ) as context:
            sensor(context)
    finally:
        instance.dispose()
        close_all_stores()
    (after,) = store.list_jobs("counting")
    assert after.state == JobState.FAILED, after
    assert after.run_id == stuck.run_id and after.last_error, after
    store.close()


def test_an_unexpected_error_is_one_line_and_verbose_shows_its_trace(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import analysis_wrapper.cli.tables as cli_module

    def broken(_args: Any) -> int:
        try:
            raise OSError("disk quota exceeded")
        except OSError as exc:
            raise RuntimeError("cannot write the report") from exc

    monkeypatch.setattr(cli_module, "cmd_status", broken)
    assert main(["status"]) == 2
    out, err = capfd.readouterr()
    (line,) = err.splitlines()
    assert line.startswith("error: RuntimeError: cannot write the report (OSError: disk quota exceeded)"), (
        line
    )
    assert "--verbose" in line and out == ""
    with pytest.raises(RuntimeError, match="cannot write the report"):
        main(["--verbose", "status"])


# ---- messages that say what is true (issue 20 item 4) -----------------------------------------------


def test_run_with_nothing_found_names_the_jobs_that_wait_and_run_runs_them(
    workdir: Path, example_jobs: list[Path], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from analysis_wrapper_tests.harness import write_job

    monkeypatch.setenv("ANALYSIS_MODULES", "analysis_wrapper_tests.counting_analysis")
    source = workdir / "input.txt"
    source.write_text("x\n")
    code, out = cli(capsys, "submit", str(write_job(workdir / "jobs", [source], analysis="counting")))
    assert code == 0 and out.startswith("registered counting "), out
    monkeypatch.delenv("ANALYSIS_MODULES")
    code, out = cli(capsys, "run")
    assert code == 0 and "0 job(s)" in out
    assert "nothing to run: 1 registered job(s) are of analyses not served here (counting)" in out, out
    code, out = cli(capsys, "submit", str(example_jobs[0]))
    assert code == 0 and out.startswith("registered isi_violations ")
    (workdir / "empty").mkdir()
    code, out = cli(capsys, "run", "empty")
    assert code == 0 and "no registered job is pending" not in out
    assert "nothing to run: no job file found in empty; 1 registered job(s) wait to run" in out, out
    code, out = cli(capsys, "run")  # no files: the pending job runs
    assert code == 0 and "1 done" in out and "nothing to run" not in out, out


def test_submit_says_which_jobs_are_new_known_or_already_recorded(
    workdir: Path, example_jobs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    first, *others = example_jobs
    code, out = cli(capsys, "run", str(first))
    assert code == 0 and "1 done" in out
    code, out = cli(capsys, "submit", str(others[0]))
    assert code == 0 and "1 job(s) registered, 0 file(s) rejected: 1 registered" in out
    code, out = cli(capsys, "submit", str(first.parent))
    assert code == 0, out
    lines = out.splitlines()
    recorded = [line for line in lines if line.startswith("already recorded isi_violations ")]
    assert len(recorded) == 1 and " fingerprint " in recorded[0] and first.name in recorded[0], out
    assert sum(line.startswith("already registered isi_violations ") for line in lines) == 1, out
    assert sum(line.startswith("registered isi_violations ") for line in lines) == 1, out
    assert "3 job(s) registered, 0 file(s) rejected: " in out and "1 already recorded" in out
    assert "`analysis-wrapper run --force FILE` runs them anyway" in out


INPUT_ERROR = (
    "Unable to synchronously open file (file read failed: time = Sun Dec  6 02:58:09 2026\n"
    ", filename = 'session.nwb', errno = 21, error message = 'Is a directory')"
)


def test_an_input_read_error_with_a_line_break_is_shown_whole(
    workdir: Path, example_jobs: list[Path], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """HDF5 breaks the line of its own messages in mid-sentence: the job's line, ``status`` and
    ``retry`` show the message whole, on one line."""
    import analysis_wrapper.analyses.isi_violations as isi

    def unreadable(path: Path, *args: Any) -> Any:
        raise IsADirectoryError(21, INPUT_ERROR)

    monkeypatch.setattr(isi, "compute_file_isi_violations", unreadable)
    code, out = cli(capsys, "run", str(example_jobs[0]))
    assert code == 1, out
    whole = " ".join(INPUT_ERROR.split())
    (line,) = [line for line in out.splitlines() if line.startswith("failed")]
    assert whole in line and "error message = 'Is a directory')" in line, line
    code, out = cli(capsys, "status")
    assert code == 0 and "error message = 'Is a directory')" in out, out
    code, out = cli(capsys, "retry")
    assert code == 0 and f"last error: IsADirectoryError: [Errno 21] {whole}" in out, out


def test_one_line_keeps_a_whole_first_sentence_or_the_whole_message() -> None:
    from analysis_wrapper.errors import one_line

    assert one_line("a\n  b (c\n, d)") == "a b (c , d)"
    long = "The input cannot be read: " + "x" * 40 + ". " + "More detail follows here. " * 20
    assert one_line(long) == "The input cannot be read: " + "x" * 40 + ". …"
    assert one_line(long, None) == " ".join(long.split())
    no_sentence = "y" * 500
    assert one_line(no_sentence, 100) == no_sentence


def test_a_failed_line_stays_whole_above_a_terminals_progress_bar() -> None:
    import io

    from analysis_wrapper.cli.jobs import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    bar = Progress(2, screen)
    path = "/data/" * 20 + "x.nwb"
    reason = f"failed        echo k1 InputNotFoundError: job.json: input [0] {path} does not exist"
    bar.step(reason, keep=True)
    bar.step("done k2")
    assert f"\r{reason}" in screen.getvalue() and f"{reason}\n" in screen.getvalue()
    assert "\r[##############################] 2/2 done k2" in screen.getvalue()
