"""The `analysis-wrapper` CLI and the `dagster` CLI on the same registry, stores and instance."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from analysis_wrapper.cli import main
from analysis_wrapper.resources.store import close_all_stores

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
    code, out = cli(capsys, "run", str(jobs_dir))
    assert code == 0, out
    assert out.count("\ndone ") + out.startswith("done ") == 3
    assert "3 job(s): 3 done, 0 already done, 0 dry run, 0 failed; 0 file(s) rejected" in out
    results = sorted((workdir / "analysis_results").iterdir())
    assert len(results) == 3
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
    job["file_location"] = [str(missing_nwb)]
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

    from analysis_wrapper.cli import Progress

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
